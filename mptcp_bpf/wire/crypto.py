"""MPTCP keys, tokens, IDSNs and HMACs (8684 §3.1, §3.2, §3.4.1; 6824 §3.1, §3.2).

Version 0 (RFC 6824) uses SHA-1, version 1 (RFC 8684) SHA-256. Keys and nonces are ints,
serialised big-endian (keys 64 bits, nonces 32 bits), as the kernel does.
"""

from __future__ import annotations

import hashlib
import hmac as _hmac
import ipaddress

from .errors import WireError

__all__ = ["key_token", "key_idsn", "key_token_idsn", "join_hmac", "add_addr_hmac"]


def _digest(key: int, version: int) -> bytes:
    try:
        kb = key.to_bytes(8, "big")
    except (OverflowError, AttributeError) as e:
        raise WireError(f"MPTCP key must be a 64-bit unsigned int, got {key!r}") from e
    if version == 0:
        return hashlib.sha1(kb).digest()
    return hashlib.sha256(kb).digest()


def key_token(key: int, version: int) -> int:
    """Token: the most significant 32 bits of the key's hash (8684 §3.1)."""
    return int.from_bytes(_digest(key, version)[:4], "big")


def key_idsn(key: int, version: int) -> int:
    """Initial data sequence number: the least significant 64 bits of the hash (8684 §3.1)."""
    return int.from_bytes(_digest(key, version)[-8:], "big")


def key_token_idsn(key: int, version: int) -> tuple[int, int]:
    """Both token and IDSN with one hash."""
    d = _digest(key, version)
    return int.from_bytes(d[:4], "big"), int.from_bytes(d[-8:], "big")


def _hmac_key(key_a: int, key_b: int) -> bytes:
    try:
        return key_a.to_bytes(8, "big") + key_b.to_bytes(8, "big")
    except (OverflowError, AttributeError) as e:
        raise WireError("MPTCP keys must be 64-bit unsigned ints") from e


def join_hmac(key_a: int, key_b: int, nonce_a: int, nonce_b: int, version: int) -> bytes:
    """HMAC(Key-A||Key-B, R-A||R-B), full digest (8684 §3.2).

    The SYN/ACK carries the leftmost 64 bits of join_hmac(key_B, key_A, R_B, R_A),
    the third ACK the leftmost 160 bits of join_hmac(key_A, key_B, R_A, R_B).
    """
    try:
        msg = nonce_a.to_bytes(4, "big") + nonce_b.to_bytes(4, "big")
    except (OverflowError, AttributeError) as e:
        raise WireError("MP_JOIN nonces must be 32-bit unsigned ints") from e
    return _hmac.digest(_hmac_key(key_a, key_b), msg, "sha1" if version == 0 else "sha256")


def add_addr_hmac(key_sender: int, key_receiver: int, addr_id: int,
                  address: ipaddress.IPv4Address | ipaddress.IPv6Address,
                  port: int | None) -> int:
    """Truncated ADD_ADDR HMAC: rightmost 64 bits of HMAC-SHA256 (8684 §3.4.1).

    Message = address id || address || port; an absent port counts as two zero octets.
    """
    try:
        msg = bytes((addr_id,)) + ipaddress.ip_address(address).packed + (port or 0).to_bytes(2, "big")
    except (ValueError, OverflowError, TypeError) as e:
        raise WireError(f"ADD_ADDR HMAC: bad id/address/port {addr_id!r} {address!r} {port!r}") from e
    d = _hmac.digest(_hmac_key(key_sender, key_receiver), msg, "sha256")
    return int.from_bytes(d[-8:], "big")
