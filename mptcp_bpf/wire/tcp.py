"""TCP header (RFC 9293 §3.1) and options: MSS, window scale, SACK-permitted, SACK
(RFC 2018), timestamps (RFC 7323) and MPTCP (kind 30, kept raw: parse with wire.mptcp).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .checksum import csum_partial, pseudo_header_sum
from .errors import WireError

__all__ = [
    "FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "AE", "flags_str",
    "OPT_EOL", "OPT_NOP", "OPT_MSS", "OPT_WSCALE", "OPT_SACK_PERM", "OPT_SACK", "OPT_TS",
    "OPT_MPTCP", "MAX_OPTIONS", "TcpOptions", "parse_tcp_options", "emit_tcp_options",
    "TcpHeader", "TCP_HEADER_LEN", "PROTO_TCP",
]

FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40
CWR = 0x80
AE = 0x100  # former NS bit (RFC 3540), now AccECN

_FLAG_NAMES = ((FIN, "F"), (SYN, "S"), (RST, "R"), (PSH, "P"), (ACK, "."), (URG, "U"),
               (ECE, "E"), (CWR, "W"), (AE, "A"))

OPT_EOL = 0
OPT_NOP = 1
OPT_MSS = 2
OPT_WSCALE = 3
OPT_SACK_PERM = 4
OPT_SACK = 5
OPT_TS = 8
OPT_MPTCP = 30

MAX_OPTIONS = 40
TCP_HEADER_LEN = 20
PROTO_TCP = 6

_HDR = struct.Struct("!HHIIBBHHH")
_unpack_II = struct.Struct("!II").unpack_from
_from = int.from_bytes


def flags_str(flags: int) -> str:
    """tcpdump-like flag letters, e.g. 'S.' for SYN/ACK."""
    return "".join(c for bit, c in _FLAG_NAMES if flags & bit) or "none"


class TcpOptions:
    """Parsed TCP options; absent ones are None / False / empty."""

    __slots__ = ("mss", "wscale", "sack_perm", "sack", "ts", "mptcp")

    def __init__(self) -> None:
        self.mss: int | None = None
        self.wscale: int | None = None
        self.sack_perm: bool = False
        self.sack: list[tuple[int, int]] = []
        self.ts: tuple[int, int] | None = None
        self.mptcp: list[bytes] = []

    def __repr__(self) -> str:
        return (f"TcpOptions(mss={self.mss}, wscale={self.wscale}, sack_perm={self.sack_perm}, "
                f"sack={self.sack}, ts={self.ts}, mptcp={[m.hex() for m in self.mptcp]})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TcpOptions):
            return NotImplemented
        return all(getattr(self, a) == getattr(other, a) for a in self.__slots__)


def parse_tcp_options(buf: bytes | bytearray | memoryview) -> TcpOptions:
    """Parse the option bytes of a TCP header (between the fixed header and the data).

    Unknown kinds are skipped by their length. A length below 2, an option running past
    the end, or a known option with the wrong length raises WireError.
    """
    o = TcpOptions()
    n = len(buf)
    if n > MAX_OPTIONS:
        raise WireError(f"TCP options longer than {MAX_OPTIONS} bytes")
    i = 0
    while i < n:
        kind = buf[i]
        if kind == OPT_NOP:
            i += 1
            continue
        if kind == OPT_EOL:
            break
        if i + 1 >= n:
            raise WireError(f"TCP option {kind} truncated")
        ln = buf[i + 1]
        if ln < 2 or i + ln > n:
            raise WireError(f"TCP option {kind}: bad length {ln}")
        if kind == OPT_MPTCP:
            o.mptcp.append(bytes(buf[i:i + ln]))
        elif kind == OPT_TS:
            if ln != 10:
                raise WireError(f"timestamp option length {ln}")
            o.ts = _unpack_II(buf, i + 2)
        elif kind == OPT_SACK:
            if (ln - 2) % 8 or ln == 2:
                raise WireError(f"SACK option length {ln}")
            o.sack = [_unpack_II(buf, j) for j in range(i + 2, i + ln, 8)]
        elif kind == OPT_MSS:
            if ln != 4:
                raise WireError(f"MSS option length {ln}")
            o.mss = buf[i + 2] << 8 | buf[i + 3]
        elif kind == OPT_WSCALE:
            if ln != 3:
                raise WireError(f"window scale option length {ln}")
            o.wscale = buf[i + 2]
        elif kind == OPT_SACK_PERM:
            if ln != 2:
                raise WireError(f"SACK-permitted option length {ln}")
            o.sack_perm = True
        i += ln
    return o


def emit_tcp_options(mss: int | None = None, wscale: int | None = None, sack_perm: bool = False,
                     sack: tuple | list = (), ts: tuple[int, int] | None = None,
                     extra: bytes = b"") -> bytes:
    """TCP option bytes laid out as Linux does, `extra` (e.g. MPTCP options) last,
    NOP-padded to a multiple of 4. Longer than 40 bytes raises WireError."""
    out = bytearray()
    try:
        if mss is not None:
            out += struct.pack("!BBH", OPT_MSS, 4, mss)
        if ts is not None:
            if sack_perm:
                out += struct.pack("!BBBBII", OPT_SACK_PERM, 2, OPT_TS, 10, ts[0], ts[1])
            else:
                out += struct.pack("!BBBBII", OPT_NOP, OPT_NOP, OPT_TS, 10, ts[0], ts[1])
        elif sack_perm:
            out += bytes((OPT_NOP, OPT_NOP, OPT_SACK_PERM, 2))
        if wscale is not None:
            out += struct.pack("!BBBB", OPT_NOP, OPT_WSCALE, 3, wscale)
        if sack:
            out += bytes((OPT_NOP, OPT_NOP, OPT_SACK, 2 + 8 * len(sack)))
            for left, right in sack:
                out += struct.pack("!II", left, right)
    except (struct.error, TypeError, ValueError) as e:
        raise WireError(f"TCP option field out of range: {e}") from e
    out += extra
    pad = -len(out) & 3
    if pad:
        out += b"\x01" * pad
    if len(out) > MAX_OPTIONS:
        raise WireError(f"TCP options need {len(out)} bytes, at most {MAX_OPTIONS} fit")
    return bytes(out)


@dataclass(slots=True)
class TcpHeader:
    """A TCP header; `flags` holds the 12 bits after the data offset (reserved bits kept)."""

    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    checksum: int = 0
    urgent: int = 0
    options: bytes = field(default=b"")

    @property
    def header_len(self) -> int:
        return TCP_HEADER_LEN + len(self.options)

    @classmethod
    def parse(cls, buf: bytes | bytearray | memoryview) -> "TcpHeader":
        """Parse the header at the start of `buf`; the payload starts at `header_len`."""
        if len(buf) < TCP_HEADER_LEN:
            raise WireError("TCP header truncated")
        sp, dp, seq, ack, off, fl, win, cs, urg = _HDR.unpack_from(buf, 0)
        hl = (off >> 4) * 4
        if hl < TCP_HEADER_LEN or hl > len(buf):
            raise WireError(f"TCP data offset {hl} invalid for {len(buf)} bytes")
        return cls(sp, dp, seq, ack, (off & 0x0F) << 8 | fl, win, cs, urg, bytes(buf[TCP_HEADER_LEN:hl]))

    def emit(self, payload: bytes = b"", src: bytes | None = None, dst: bytes | None = None) -> bytes:
        """Header + payload; with src/dst (IP addresses as bytes) the checksum is computed."""
        if len(self.options) & 3 or len(self.options) > MAX_OPTIONS:
            raise WireError("TCP options must be a multiple of 4 bytes, at most 40")
        hl = TCP_HEADER_LEN + len(self.options)
        try:
            hdr = bytearray(_HDR.pack(self.sport, self.dport, self.seq, self.ack,
                                      (hl >> 2) << 4 | (self.flags >> 8 & 0x0F), self.flags & 0xFF,
                                      self.window, 0 if src is not None else self.checksum,
                                      self.urgent))
        except struct.error as e:
            raise WireError(f"TCP header field out of range: {e}") from e
        hdr += self.options
        if src is not None and dst is not None:
            s = pseudo_header_sum(src, dst, PROTO_TCP, hl + len(payload))
            s = csum_partial(hdr, s)
            s = csum_partial(payload, s)
            c = ~s & 0xFFFF
            hdr[16] = c >> 8
            hdr[17] = c & 0xFF
        return bytes(hdr) + bytes(payload)
