"""The per-packet hot path: parse a received IP packet (or Ethernet frame) carrying TCP into
one flat object, and build an outgoing IPv4/IPv6 TCP packet with its checksums.

Parsing is a couple of struct.unpack_from calls and slices; options stay raw bytes (parse
them with wire.tcp.parse_tcp_options when needed) and the payload is a memoryview of the
input (no copy). Fragments, non-TCP packets and anything truncated raise WireError.
"""

from __future__ import annotations

import struct

from .errors import WireError
from .ip import walk_ipv6_ext

__all__ = ["InPacket", "parse_ip_packet", "parse_frame", "build_tcp_packet", "build_frame",
           "tcp_checksum_ok", "segment_sum", "TcpBuilder", "TX_CSUM_PARTIAL"]

_from = int.from_bytes
_V4 = struct.Struct("!BBHHHBB").unpack_from          # up to the header checksum
_V6 = struct.Struct("!IHBB").unpack_from
_TCP = struct.Struct("!HHIIBBH").unpack_from
_IP4_HDR = struct.Struct("!BBHHHBBH4s4s").pack
_IP6_HDR = struct.Struct("!IHBB16s16s").pack
_TCP_HDR = struct.Struct("!HHIIHHHxx").pack          # urgent pointer 0
# IPv4 (no options) + fixed TCP header in one call, parse and build
_V4TCP = struct.Struct("!BBHHHBB2x4s4sHHIIBBH").unpack_from
_B4 = struct.Struct("!BBHHHBBH4s4sHHIIHHHxx").pack
_B6 = struct.Struct("!IHBB16s16sHHIIHHHxx").pack
# csum=TX_CSUM_PARTIAL: the TCP checksum field holds the folded pseudo-header sum (not
# complemented), as CHECKSUM_PARTIAL / AF_XDP TX checksum offload want; the kernel or NIC
# sums from the TCP header (IP header length in) to the end, at offset 16, and finishes it.
TX_CSUM_PARTIAL = 2
_ETH_P_IP = 0x0800
_ETH_P_IPV6 = 0x86DD
_PROTO_TCP = 6


class InPacket:
    """A received TCP segment. `src`/`dst` are address bytes (4 or 16); `flags` the 8 TCP
    flag bits (+ AE as 0x100); `payload` a memoryview; `segment` the whole TCP segment
    (header to end of data) as a memoryview, for checksum checks."""

    __slots__ = ("family", "src", "dst", "sport", "dport", "seq", "ack", "flags", "window",
                 "options", "payload", "tos", "ttl", "segment")

    def __init__(self, family: int, src: bytes, dst: bytes, sport: int, dport: int, seq: int,
                 ack: int, flags: int, window: int, options: bytes, payload: memoryview,
                 tos: int, ttl: int, segment: memoryview) -> None:
        self.family = family
        self.src = src
        self.dst = dst
        self.sport = sport
        self.dport = dport
        self.seq = seq
        self.ack = ack
        self.flags = flags
        self.window = window
        self.options = options
        self.payload = payload
        self.tos = tos
        self.ttl = ttl
        self.segment = segment

    def __repr__(self) -> str:
        return (f"InPacket(v{self.family} {self.src.hex()}:{self.sport} > {self.dst.hex()}:"
                f"{self.dport} seq={self.seq} ack={self.ack} flags={self.flags:#x} "
                f"win={self.window} opts={self.options.hex()} len={len(self.payload)})")


def parse_ip_packet(buf: bytes | bytearray | memoryview) -> InPacket:
    """Parse an IPv4 or IPv6 packet carrying TCP (bytes after the IP length are ignored)."""
    mv = buf if type(buf) is memoryview else memoryview(buf)
    n = len(mv)
    if n < 20:
        raise WireError("IP packet truncated")
    if mv[0] == 0x45 and n >= 40:
        # fast path: IPv4 without options, one unpack for both fixed headers
        (_vihl, tos, end, _id, frag, ttl, proto, src, dst,
         sport, dport, seq, ack, doff, fl, win) = _V4TCP(mv, 0)
        if proto == _PROTO_TCP and not frag & 0x3FFF and 40 <= end <= n:
            hl = (doff >> 4) << 2
            if hl < 20 or 20 + hl > end:
                raise WireError(f"TCP data offset {hl} invalid")
            return InPacket(4, src, dst, sport, dport, seq, ack, (doff & 1) << 8 | fl, win,
                            bytes(mv[40:20 + hl]) if hl > 20 else b"", mv[20 + hl:end],
                            tos, ttl, mv[20:end])
    v = mv[0] >> 4
    if v == 4:
        vihl, tos, end, _id, frag, ttl, proto = _V4(mv, 0)
        off = (vihl & 0x0F) << 2
        if off < 20 or end < off or end > n:
            raise WireError(f"IPv4 IHL {off} / total length {end} invalid for {n} bytes")
        if proto != _PROTO_TCP:
            raise WireError(f"IPv4 protocol {proto} is not TCP")
        if frag & 0x3FFF:
            raise WireError("IPv4 fragment")
        src = bytes(mv[12:16])
        dst = bytes(mv[16:20])
    elif v == 6:
        if n < 40:
            raise WireError("IPv6 header truncated")
        vtf, plen, proto, ttl = _V6(mv, 0)
        tos = vtf >> 20 & 0xFF
        end = 40 + plen
        if end > n:
            raise WireError(f"IPv6 payload length {plen} exceeds {n - 40} bytes")
        off = 40
        if proto != _PROTO_TCP:
            w = walk_ipv6_ext(mv, proto, 40, end)
            if w.frag is not None and (w.frag[0] or w.frag[1]):
                raise WireError("IPv6 fragment")
            if w.proto != _PROTO_TCP:
                raise WireError(f"IPv6 next header {w.proto} is not TCP")
            off = w.offset
        src = bytes(mv[8:24])
        dst = bytes(mv[24:40])
    else:
        raise WireError(f"IP version {v}")
    if end - off < 20:
        raise WireError("TCP header truncated")
    sport, dport, seq, ack, doff, fl, win = _TCP(mv, off)
    hl = (doff >> 4) << 2
    if hl < 20 or off + hl > end:
        raise WireError(f"TCP data offset {hl} invalid")
    return InPacket(v, src, dst, sport, dport, seq, ack, (doff & 1) << 8 | fl, win,
                    bytes(mv[off + 20:off + hl]), mv[off + hl:end], tos, ttl, mv[off:end])


def parse_frame(buf: bytes | bytearray | memoryview) -> InPacket:
    """Parse an Ethernet frame (up to two VLAN tags) carrying IPv4/IPv6 and TCP."""
    mv = buf if type(buf) is memoryview else memoryview(buf)
    if len(mv) < 14:
        raise WireError("Ethernet frame truncated")
    et = mv[12] << 8 | mv[13]
    off = 14
    while et == 0x8100 or et == 0x88A8:
        if off + 4 > len(mv) or off > 18:
            raise WireError("VLAN tags truncated or too many")
        et = mv[off + 2] << 8 | mv[off + 3]
        off += 4
    if et != _ETH_P_IP and et != _ETH_P_IPV6:
        raise WireError(f"ethertype {et:#06x} is not IP")
    p = parse_ip_packet(mv[off:])
    if (p.family == 4) != (et == _ETH_P_IP):
        raise WireError("ethertype does not match the IP version")
    return p


def _fold(x: int, nbytes: int) -> int:
    """x congruent mod 0xffff, about half as wide: CPython's `%` by a small int divides
    digit by digit (slow), while shift, mask and add are memcpy-speed, so one fold before
    the modulo saves ~1/6 of a 1400-byte checksum (measured in docs/notes/perf.md)."""
    if nbytes > 256:
        h = (nbytes << 2) + 16 & ~15     # about half the bits, a multiple of 16
        return (x >> h) + (x & ((1 << h) - 1))
    return x


def segment_sum(src: bytes, dst: bytes, segment: bytes | memoryview) -> int:
    """Folded sum of pseudo-header + TCP segment (0xffff when the checksum is right)."""
    x = _from(segment, "big")
    ln = len(segment)
    if ln & 1:
        x <<= 8
    x = _fold(x, ln)
    # pseudo-header (v4 or v6): its words sum to src + dst + proto + length (mod 0xffff)
    x += _from(src, "big") + _from(dst, "big") + _PROTO_TCP + ln
    if x:
        x %= 0xFFFF
        if x == 0:
            x = 0xFFFF
    return x


def tcp_checksum_ok(p: InPacket) -> bool:
    """True when the TCP checksum of a parsed packet verifies."""
    return segment_sum(p.src, p.dst, p.segment) == 0xFFFF


def build_tcp_packet(src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int,
                     flags: int, window: int, options: bytes, payload: bytes,
                     tos: int = 0, ttl: int = 64, csum: bool = True) -> bytes:
    """An IPv4 (4-byte addresses) or IPv6 (16-byte) packet with one TCP segment.

    The IPv4 header checksum is always filled; the TCP checksum when `csum` (else 0, for a
    later fill-in; TX_CSUM_PARTIAL: the pseudo-header sum for checksum offload).
    `options` must be a multiple of 4 bytes, at most 40.

    Checksums are summed from the field values and one int.from_bytes per buffer (all
    congruent mod 0xffff to their 16-bit word sums), so the payload is read once for the
    sum and copied once into the result.
    """
    olen = len(options)
    if olen & 3 or olen > 40:
        raise WireError(f"TCP options of {olen} bytes: need a multiple of 4, at most 40")
    thl = 20 + olen
    plen = len(payload)
    seglen = thl + plen
    hl_fl = (thl << 10) | (flags & 0x1FF)  # data offset, AE bit, 8 flag bits
    try:
        if csum == TX_CSUM_PARTIAL:
            x = (_from(src, "big") + _from(dst, "big") + _PROTO_TCP + seglen) % 0xFFFF
            c = x or 0xFFFF
        elif csum:
            x = (_from(src, "big") + _from(dst, "big") + _PROTO_TCP + seglen + sport + dport
                 + seq + ack + hl_fl + window)
            if olen:
                x += _from(options, "big")
            if plen:
                x += _fold(_from(payload, "big") << 8 if plen & 1 else _from(payload, "big"),
                           plen)
            x %= 0xFFFF
            c = ~x & 0xFFFF if x else 0
        else:
            c = 0
        tcp = _TCP_HDR(sport, dport, seq, ack, hl_fl, window, c)
        if len(src) == 4 and len(dst) == 4:
            total = 20 + seglen
            if total > 0xFFFF:
                raise WireError("IPv4 packet longer than 65535 bytes")
            # header checksum from the field values: version/IHL/TOS, length, DF, TTL/proto, addresses
            h = (0x4500 | tos) + total + 0x4000 + (ttl << 8 | _PROTO_TCP) + _from(src, "big") + _from(dst, "big")
            h %= 0xFFFF
            ip = _IP4_HDR(0x45, tos, total, 0, 0x4000, ttl, _PROTO_TCP, ~h & 0xFFFF if h else 0, src, dst)
        elif len(src) == 16 and len(dst) == 16:
            if seglen > 0xFFFF:
                raise WireError("IPv6 payload longer than 65535 bytes")
            ip = _IP6_HDR(0x60000000 | tos << 20, seglen, _PROTO_TCP, ttl, src, dst)
        else:
            raise WireError(f"addresses of {len(src)}/{len(dst)} bytes: need 4 or 16 each")
    except (struct.error, TypeError) as e:
        raise WireError(f"field out of range: {e}") from e
    return b"".join((ip, tcp, options, payload))


class TcpBuilder:
    """Builds the packets of one 4-tuple (what `build_tcp_packet` makes, byte for byte).

    The constant fields (addresses, ports, TOS, TTL) and their share of both checksums
    are computed once; a packet then costs one struct.pack for IP + TCP header, one
    int.from_bytes per options/payload buffer and one join."""

    __slots__ = ("src", "dst", "sport", "dport", "tos", "ttl", "v4", "_psum", "_tsum", "_isum")

    def __init__(self, src: bytes, dst: bytes, sport: int, dport: int, tos: int = 0,
                 ttl: int = 64) -> None:
        src, dst = bytes(src), bytes(dst)
        if not (len(src) == len(dst) and len(src) in (4, 16)):
            raise WireError(f"addresses of {len(src)}/{len(dst)} bytes: need 4 or 16 each")
        if not (0 <= sport <= 0xFFFF and 0 <= dport <= 0xFFFF and 0 <= tos <= 0xFF
                and 0 <= ttl <= 0xFF):
            raise WireError("TcpBuilder: port, TOS or TTL out of range")
        self.src, self.dst, self.sport, self.dport = src, dst, sport, dport
        self.tos, self.ttl = tos, ttl
        self.v4 = len(src) == 4
        a = _from(src, "big") + _from(dst, "big")
        self._psum = a + _PROTO_TCP
        self._tsum = a + _PROTO_TCP + sport + dport
        self._isum = (0x4500 | tos) + 0x4000 + (ttl << 8 | _PROTO_TCP) + a

    def build(self, seq: int, ack: int, flags: int, window: int, options: bytes,
              payload: bytes | memoryview, csum: bool = True) -> bytes:
        """One packet; `csum=False` leaves the TCP checksum 0 (filled later),
        TX_CSUM_PARTIAL puts the pseudo-header sum there (checksum offload)."""
        olen = len(options)
        if olen & 3 or olen > 40:
            raise WireError(f"TCP options of {olen} bytes: need a multiple of 4, at most 40")
        plen = len(payload)
        seglen = 20 + olen + plen
        hl_fl = ((20 + olen) << 10) | (flags & 0x1FF)
        if csum == TX_CSUM_PARTIAL:
            c = (self._psum + seglen) % 0xFFFF or 0xFFFF
        elif csum:
            x = self._tsum + seglen + seq + ack + hl_fl + window
            if olen:
                x += _from(options, "big")
            if plen:
                if plen > 256:
                    p = _from(payload, "big")
                    if plen & 1:
                        p <<= 8
                    h = (plen << 2) + 16 & ~15
                    x += (p >> h) + (p & ((1 << h) - 1))
                else:
                    x += _from(payload, "big") << 8 if plen & 1 else _from(payload, "big")
            x %= 0xFFFF
            c = ~x & 0xFFFF if x else 0
        else:
            c = 0
        try:
            if self.v4:
                total = 20 + seglen
                if total > 0xFFFF:
                    raise WireError("IPv4 packet longer than 65535 bytes")
                h = (self._isum + total) % 0xFFFF
                hdr = _B4(0x45, self.tos, total, 0, 0x4000, self.ttl, _PROTO_TCP,
                          ~h & 0xFFFF if h else 0, self.src, self.dst, self.sport, self.dport,
                          seq, ack, hl_fl, window, c)
            else:
                if seglen > 0xFFFF:
                    raise WireError("IPv6 payload longer than 65535 bytes")
                hdr = _B6(0x60000000 | self.tos << 20, seglen, _PROTO_TCP, self.ttl, self.src,
                          self.dst, self.sport, self.dport, seq, ack, hl_fl, window, c)
        except (struct.error, TypeError) as e:
            raise WireError(f"field out of range: {e}") from e
        if plen:
            return b"".join((hdr, options, payload))
        return hdr + options if olen else hdr


def build_frame(dst_mac: bytes, src_mac: bytes, packet: bytes) -> bytes:
    """Prefix an IP packet with an Ethernet header (ethertype from the IP version)."""
    if not packet:
        raise WireError("empty packet")
    v = packet[0] >> 4
    et = b"\x08\x00" if v == 4 else b"\x86\xdd" if v == 6 else None
    if et is None or len(dst_mac) != 6 or len(src_mac) != 6:
        raise WireError("build_frame: need 6-byte MACs and an IPv4/IPv6 packet")
    return bytes(dst_mac) + bytes(src_mac) + et + packet
