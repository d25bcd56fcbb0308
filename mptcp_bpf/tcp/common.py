"""Constants and small types shared by the subflow modules: flags, state names, on_closed
reasons, the configuration, a retransmit-queue entry and what on_segment receives."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from mptcp_bpf.wire.tcp import TcpOptions, parse_tcp_options


FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

# State names (Linux's, without the TCP_ prefix) and their tcp_info numbers.
CLOSED = "CLOSED"
SYN_SENT = "SYN_SENT"
SYN_RECV = "SYN_RECV"
ESTABLISHED = "ESTABLISHED"
FIN_WAIT1 = "FIN_WAIT1"
FIN_WAIT2 = "FIN_WAIT2"
CLOSING = "CLOSING"
TIME_WAIT = "TIME_WAIT"
CLOSE_WAIT = "CLOSE_WAIT"
LAST_ACK = "LAST_ACK"
STATE_NUMBERS = {ESTABLISHED: 1, SYN_SENT: 2, SYN_RECV: 3, FIN_WAIT1: 4, FIN_WAIT2: 5,
                 TIME_WAIT: 6, CLOSED: 7, CLOSE_WAIT: 8, LAST_ACK: 9, CLOSING: 11}
_SYNCHRONIZED = frozenset((ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSING, TIME_WAIT,
                           CLOSE_WAIT, LAST_ACK))
_CAN_SEND = frozenset((ESTABLISHED, CLOSE_WAIT))
_CAN_RECV = frozenset((ESTABLISHED, FIN_WAIT1, FIN_WAIT2))

# on_closed reasons
R_CLOSED = "closed"      # orderly: both FINs exchanged and acked
R_RESET = "reset"        # the peer sent an acceptable RST
R_REFUSED = "refused"    # RST in answer to our SYN
R_TIMEOUT = "timeout"    # SYN retries or data retries exhausted
R_ABORTED = "aborted"    # we sent RST (abort())

_M32 = 0xFFFFFFFF
_TS_FAST = b"\x01\x01\x08\x0a"
_unpack_II = struct.Struct("!II").unpack_from
_pack_ts = struct.Struct("!4sII").pack
_pack_II = struct.Struct("!II").pack


@dataclass
class SubflowConfig:
    """Per-subflow knobs; defaults follow Linux except the short TIME-WAIT."""

    mss: int = 1460              # MSS we advertise (MTU 1500 - 40; use 1440 for IPv6)
    send_mss: int | None = None  # largest segment the MTU allows us to send; None: mss
    rcv_buf: int = 4 << 20       # receive buffer: bounds the window we advertise
    wscale: int | None = None    # our window scale; None: smallest that covers rcv_buf
    sack: bool = True
    timestamps: bool = True
    window_scaling: bool = True
    opt_reserve: int = 0         # MSS bytes kept for the owner's ack_options (MPTCP DSS: 28)
    min_rto: float = 0.2         # Linux TCP_RTO_MIN
    max_rto: float = 120.0       # Linux TCP_RTO_MAX
    initial_rto: float = 1.0     # RFC 6298 §2.1
    syn_retries: int = 6         # SYN retransmissions before giving up (Linux tcp_syn_retries)
    synack_retries: int = 5
    max_retries: int = 15        # data retransmissions of one segment (Linux tcp_retries2)
    delack_time: float = 0.04    # delayed ACK timer
    time_wait: float = 1.0       # TIME-WAIT length (short on purpose; Linux: 60 s)
    fin_wait2_timeout: float | None = None  # give up on the peer's FIN (Linux orphans: 60 s)
    dupthresh: int = 3
    tos: int = 0
    ttl: int = 64
    isn: int | None = None       # None: random


class Seg:
    """One transmitted segment in the retransmit queue (boundaries fixed for life)."""

    __slots__ = ("seq", "end", "data", "meta", "off", "chunk_seq", "chunk", "fin", "sacked",
                 "lost", "retrans", "rexmit", "tx_time")

    def __init__(self, seq: int, end: int, data: Any, meta: Any, off: int, chunk_seq: int,
                 chunk: Any, fin: bool = False, tx_time: float = 0.0) -> None:
        self.seq = seq
        self.chunk = chunk          # the whole chunk (memoryview) this segment was cut from
        self.end = end
        self.data = data
        self.meta = meta
        self.off = off              # offset of this segment inside its chunk
        self.chunk_seq = chunk_seq  # relative seq of the chunk's first byte
        self.fin = fin
        self.sacked = False
        self.lost = False
        self.retrans = 0            # currently counted in retrans_out when > 0 and lost
        self.rexmit = False         # ever retransmitted (Karn: no RTT sample from it)
        self.tx_time = tx_time


class Segment:
    """What `hooks.on_segment` sees: the packet, its parsed options and its ssn."""

    __slots__ = ("pkt", "opts", "ssn", "payload", "flags", "now")

    def __init__(self, pkt: Any, opts: TcpOptions, ssn: int, flags: int, now: float) -> None:
        self.pkt = pkt
        self.opts = opts
        self.ssn = ssn
        self.payload = pkt.payload
        self.flags = flags
        self.now = now


class _NoHooks:
    """Hooks of an owner that adds nothing (plain TCP)."""

    def syn_options(self, sf: "Subflow") -> bytes:
        return b""

    def on_syn_options(self, sf: "Subflow", opts: TcpOptions) -> None:
        pass

    def ack_options(self, sf: "Subflow", meta: Any, length: int, flags: int) -> bytes:
        return b""

    def data_options(self, sf: "Subflow") -> bytes:
        return b""  # what ack_options gives every data segment (Subflow._burst_header)

    def on_segment(self, sf: "Subflow", seg: Segment) -> None:
        pass

    def on_data(self, sf: "Subflow", ssn: int, data: Any) -> None:
        pass

    def on_established(self, sf: "Subflow") -> None:
        pass

    def on_fin(self, sf: "Subflow") -> None:
        pass

    def on_closed(self, sf: "Subflow", reason: str) -> None:
        pass


_EMPTY_OPTS = TcpOptions()


def _fast_opts(raw: Any) -> TcpOptions:
    """Parse options; the common layouts (NOP NOP TS, optionally followed by one MPTCP
    option and NOP padding, as Linux and we send them) without the generic loop."""
    n = len(raw)
    if 12 <= n <= 40 and raw[:4] == _TS_FAST:
        o = TcpOptions()
        o.ts = _unpack_II(raw, 4)
        if n == 12:
            return o
        if raw[12] == 30 and n > 13:
            end = 12 + raw[13]
            if 14 <= end <= n and not raw[end:].strip(b"\x01"):
                o.mptcp = [bytes(raw[12:end])]
                return o
        return parse_tcp_options(raw)
    if not raw:
        return _EMPTY_OPTS
    return parse_tcp_options(raw)


def _default_wscale(buf: int) -> int:
    ws = 0
    while (0xFFFF << ws) < buf and ws < 14:
        ws += 1
    return ws


def _seg_seq(s: Seg) -> int:
    return s.seq


def _first(x: list[Any]) -> int:
    return x[0]
