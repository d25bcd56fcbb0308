"""Fast build/scan of the MPTCP options a connection puts on (almost) every segment.

The generic codec is mptcp_bpf.wire.mptcp; DSS is built here with one struct call
because it rides on every data segment and every ACK.
"""

from __future__ import annotations

import struct
from typing import Iterator

from mptcp_bpf.wire.mptcp import (DSS_FLAG_A, DSS_FLAG_F, DSS_FLAG_M, DSS_FLAG_a, DSS_FLAG_m,
                                  OPT_MPTCP)

_ACK_ONLY = struct.Struct("!BBBBQ").pack             # 12 bytes
_MAP = struct.Struct("!BBBBQQIH").pack               # 26 bytes (+2 checksum)
_MAP_NOACK = struct.Struct("!BBBBQIH").pack          # 18 bytes (+2 checksum)
_DSS = 0x20
NOP2 = b"\x01\x01"


def dss_bytes(data_ack: int | None, dsn: int | None = None, ssn: int = 0, length: int = 0,
              csum: int | None = None, fin: bool = False) -> bytes:
    """A DSS option with a 64-bit data ACK (if given) and a 64-bit mapping (if dsn given).

    The result is padded with NOPs to a multiple of 4 bytes, as the subflow appends it
    after its own (4-byte aligned) options.
    """
    flags = DSS_FLAG_F if fin else 0
    if dsn is None:
        if data_ack is None:
            return b""
        return _ACK_ONLY(OPT_MPTCP, 12, _DSS, flags | DSS_FLAG_A | DSS_FLAG_a, data_ack)
    flags |= DSS_FLAG_M | DSS_FLAG_m
    if data_ack is not None:
        if csum is None:
            return _MAP(OPT_MPTCP, 26, _DSS, flags | DSS_FLAG_A | DSS_FLAG_a, data_ack, dsn, ssn,
                        length) + NOP2
        return _MAP(OPT_MPTCP, 28, _DSS, flags | DSS_FLAG_A | DSS_FLAG_a, data_ack, dsn, ssn,
                    length) + csum.to_bytes(2, "big")
    if csum is None:
        return _MAP_NOACK(OPT_MPTCP, 18, _DSS, flags, dsn, ssn, length) + NOP2
    return _MAP_NOACK(OPT_MPTCP, 20, _DSS, flags, dsn, ssn, length) + csum.to_bytes(2, "big")


def pad4(opt: bytes) -> bytes:
    """Pad an option with leading NOPs to a multiple of 4 bytes."""
    r = len(opt) & 3
    return (b"\x01" * (4 - r) + opt) if r else opt


def mptcp_options(raw: bytes) -> Iterator[bytes]:
    """The MPTCP options (whole, kind 30) inside raw TCP option bytes; stops on garbage."""
    i = 0
    n = len(raw)
    while i < n:
        kind = raw[i]
        if kind == 0:
            return
        if kind == 1:
            i += 1
            continue
        if i + 1 >= n:
            return
        ln = raw[i + 1]
        if ln < 2 or i + ln > n:
            return
        if kind == OPT_MPTCP:
            yield raw[i:i + ln]
        i += ln
