"""Ethernet II header with up to two VLAN tags (802.1Q 0x8100, 802.1ad 0x88a8)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .errors import WireError

__all__ = ["EtherHeader", "ETH_P_IP", "ETH_P_IPV6", "ETH_P_8021Q", "ETH_P_8021AD", "ETH_P_ARP",
           "mac_str", "mac_bytes"]

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
_MAX_TAGS = 2


def mac_str(mac: bytes) -> str:
    """aa:bb:cc:dd:ee:ff"""
    return ":".join(f"{b:02x}" for b in mac)


def mac_bytes(mac: str) -> bytes:
    """Bytes of a MAC address written aa:bb:cc:dd:ee:ff."""
    try:
        b = bytes(int(x, 16) for x in mac.split(":"))
    except ValueError as e:
        raise WireError(f"bad MAC address {mac!r}") from e
    if len(b) != 6:
        raise WireError(f"bad MAC address {mac!r}")
    return b


@dataclass(slots=True)
class EtherHeader:
    """dst, src (6 bytes each), the inner ethertype, and VLAN tags outermost first as
    (TPID, TCI) pairs."""

    dst: bytes
    src: bytes
    ethertype: int = ETH_P_IP
    vlans: tuple[tuple[int, int], ...] = field(default=())

    @property
    def header_len(self) -> int:
        return 14 + 4 * len(self.vlans)

    @property
    def vlan(self) -> int | None:
        """VLAN id of the outermost tag, or None."""
        return self.vlans[0][1] & 0x0FFF if self.vlans else None

    @classmethod
    def parse(cls, buf: bytes | bytearray | memoryview) -> "EtherHeader":
        if len(buf) < 14:
            raise WireError("Ethernet header truncated")
        et = buf[12] << 8 | buf[13]
        off = 14
        tags = []
        while et == ETH_P_8021Q or et == ETH_P_8021AD:
            if len(tags) == _MAX_TAGS:
                raise WireError("more than two VLAN tags")
            if off + 4 > len(buf):
                raise WireError("VLAN tag truncated")
            tags.append((et, buf[off] << 8 | buf[off + 1]))
            et = buf[off + 2] << 8 | buf[off + 3]
            off += 4
        return cls(bytes(buf[0:6]), bytes(buf[6:12]), et, tuple(tags))

    def emit(self, payload: bytes = b"") -> bytes:
        if len(self.dst) != 6 or len(self.src) != 6:
            raise WireError("MAC addresses must be 6 bytes")
        try:
            tags = b"".join(struct.pack("!HH", tpid, tci) for tpid, tci in self.vlans)
            return bytes(self.dst) + bytes(self.src) + tags + struct.pack("!H", self.ethertype) + bytes(payload)
        except (struct.error, TypeError, ValueError) as e:
            raise WireError(f"Ethernet field out of range: {e}") from e
