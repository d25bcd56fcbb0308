"""IPv4 (RFC 791, with options and header checksum) and IPv6 (RFC 8200, with the extension
header walk: hop-by-hop, routing, fragment, destination options, AH)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .checksum import csum_partial
from .errors import WireError

__all__ = [
    "Ipv4Header", "Ipv6Header", "Ipv6Walk", "walk_ipv6_ext", "ipv4_checksum",
    "IP_DF", "IP_MF", "PROTO_TCP", "PROTO_UDP", "PROTO_ICMPV6",
    "EXT_HOPOPTS", "EXT_ROUTING", "EXT_FRAGMENT", "EXT_DSTOPTS", "EXT_AH", "EXT_NONE",
]

IP_DF = 0x2
IP_MF = 0x1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58
EXT_HOPOPTS = 0
EXT_ROUTING = 43
EXT_FRAGMENT = 44
EXT_AH = 51
EXT_NONE = 59
EXT_DSTOPTS = 60
_MAX_EXT = 16

_V4 = struct.Struct("!BBHHHBBH4s4s")
_V6 = struct.Struct("!IHBB16s16s")


def ipv4_checksum(header: bytes | bytearray | memoryview) -> int:
    """Header checksum field value for an IPv4 header whose checksum field is zero."""
    return ~csum_partial(header) & 0xFFFF


@dataclass(slots=True)
class Ipv4Header:
    """IPv4 header; `flags` is the 3-bit field (DF=2, MF=1), `frag_offset` in 8-byte units."""

    src: bytes
    dst: bytes
    proto: int = PROTO_TCP
    ttl: int = 64
    tos: int = 0
    ident: int = 0
    flags: int = IP_DF
    frag_offset: int = 0
    total_length: int = 0
    checksum: int = 0
    options: bytes = field(default=b"")

    @property
    def header_len(self) -> int:
        return 20 + len(self.options)

    @classmethod
    def parse(cls, buf: bytes | bytearray | memoryview) -> "Ipv4Header":
        """Parse the header at the start of `buf` (checks version, IHL, total length)."""
        if len(buf) < 20:
            raise WireError("IPv4 header truncated")
        vihl, tos, tot, ident, frag, ttl, proto, cs, src, dst = _V4.unpack_from(buf, 0)
        if vihl >> 4 != 4:
            raise WireError(f"IP version {vihl >> 4}, want 4")
        hl = (vihl & 0x0F) * 4
        if hl < 20 or hl > len(buf) or tot < hl:
            raise WireError(f"IPv4 IHL {hl} / total length {tot} invalid for {len(buf)} bytes")
        return cls(src, dst, proto, ttl, tos, ident, frag >> 13, frag & 0x1FFF, tot, cs,
                   bytes(buf[20:hl]))

    def checksum_ok(self) -> bool:
        """True when the header checksum verifies."""
        return csum_partial(self._pack(self.total_length, self.checksum)) == 0xFFFF

    def _pack(self, total: int, cs: int) -> bytearray:
        if len(self.options) & 3 or len(self.options) > 40:
            raise WireError("IPv4 options must be a multiple of 4 bytes, at most 40")
        if len(self.src) != 4 or len(self.dst) != 4:
            raise WireError("IPv4 addresses must be 4 bytes")
        try:
            h = bytearray(_V4.pack(0x40 | (20 + len(self.options)) >> 2, self.tos, total,
                                   self.ident, self.flags << 13 | self.frag_offset, self.ttl,
                                   self.proto, cs, bytes(self.src), bytes(self.dst)))
        except struct.error as e:
            raise WireError(f"IPv4 field out of range: {e}") from e
        return h + self.options

    def emit(self, payload: bytes = b"", fill: bool = True) -> bytes:
        """Header + payload; `fill` sets total length and header checksum."""
        if fill:
            total = 20 + len(self.options) + len(payload)
            h = self._pack(total, 0)
            c = ipv4_checksum(h)
            h[10] = c >> 8
            h[11] = c & 0xFF
        else:
            h = self._pack(self.total_length, self.checksum)
        return bytes(h) + bytes(payload)


@dataclass(slots=True)
class Ipv6Header:
    """IPv6 fixed header (40 bytes)."""

    src: bytes
    dst: bytes
    next_header: int = PROTO_TCP
    hop_limit: int = 64
    tclass: int = 0
    flow: int = 0
    payload_length: int = 0

    header_len = 40

    @classmethod
    def parse(cls, buf: bytes | bytearray | memoryview) -> "Ipv6Header":
        if len(buf) < 40:
            raise WireError("IPv6 header truncated")
        vtf, plen, nh, hl, src, dst = _V6.unpack_from(buf, 0)
        if vtf >> 28 != 6:
            raise WireError(f"IP version {vtf >> 28}, want 6")
        return cls(src, dst, nh, hl, vtf >> 20 & 0xFF, vtf & 0xFFFFF, plen)

    def emit(self, payload: bytes = b"", fill: bool = True) -> bytes:
        if len(self.src) != 16 or len(self.dst) != 16:
            raise WireError("IPv6 addresses must be 16 bytes")
        plen = len(payload) if fill else self.payload_length
        try:
            h = _V6.pack(6 << 28 | self.tclass << 20 | self.flow, plen, self.next_header,
                         self.hop_limit, bytes(self.src), bytes(self.dst))
        except struct.error as e:
            raise WireError(f"IPv6 field out of range: {e}") from e
        return h + bytes(payload)


@dataclass(slots=True)
class Ipv6Walk:
    """Result of walking the extension headers: the upper-layer protocol and where it
    starts; `frag` is (offset in 8-byte units, more-fragments, identification) or None."""

    proto: int
    offset: int
    frag: tuple[int, bool, int] | None = None


def walk_ipv6_ext(buf: bytes | bytearray | memoryview, next_header: int, offset: int = 40,
                  end: int | None = None) -> Ipv6Walk:
    """Skip extension headers from `offset` (RFC 8200 §4) up to `end` (default len(buf))."""
    if end is None:
        end = len(buf)
    frag = None
    nh = next_header
    for _ in range(_MAX_EXT):
        if nh == EXT_HOPOPTS or nh == EXT_ROUTING or nh == EXT_DSTOPTS:
            if offset + 8 > end:
                raise WireError("IPv6 extension header truncated")
            ln = (buf[offset + 1] + 1) * 8
        elif nh == EXT_FRAGMENT:
            if offset + 8 > end:
                raise WireError("IPv6 fragment header truncated")
            fo = buf[offset + 2] << 8 | buf[offset + 3]
            frag = (fo >> 3, bool(fo & 1), int.from_bytes(buf[offset + 4:offset + 8], "big"))
            ln = 8
        elif nh == EXT_AH:
            if offset + 8 > end:
                raise WireError("IPv6 AH truncated")
            ln = (buf[offset + 1] + 2) * 4
        else:
            return Ipv6Walk(nh, offset, frag)
        nh = buf[offset]
        offset += ln
        if offset > end:
            raise WireError("IPv6 extension header runs past the packet")
    raise WireError(f"more than {_MAX_EXT} IPv6 extension headers")
