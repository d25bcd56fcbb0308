"""The congestion-control interface of a subflow, and uncoupled Reno (RFC 5681).

A controller reads and writes the subflow's `cwnd` and `ssthresh` (bytes) and may read
`mss`, `srtt` (seconds, None before the first sample), `min_rtt`, `in_flight` (bytes) and
`cwnd_limited`. Coupled controllers (mptcp_bpf.cc) share one `CcGroup` per connection,
whose `members` are the connection's subflows.
"""

from __future__ import annotations

from typing import Any, Protocol

INITIAL_WINDOW_SEGMENTS = 10  # RFC 6928
INFINITE_SSTHRESH = 1 << 30
_INF = float("inf")


class CcSubflow(Protocol):
    cwnd: int
    ssthresh: int
    mss: int
    srtt: float | None
    min_rtt: float | None
    in_flight: int
    cwnd_limited: bool


class CcGroup:
    """The subflows of one connection that a coupled controller reasons about."""

    def __init__(self) -> None:
        self.members: list[Any] = []


class CongestionControl:
    """Reno-style loss response; `on_ack` is what coupled controllers override."""

    name = "reno"

    def __init__(self, params: dict[str, Any] | None = None, group: CcGroup | None = None) -> None:
        self.params = dict(params or {})
        self.group = group
        self.hystart = HyStart() if self.params.get("hystart", True) else None

    def init(self, sf: CcSubflow) -> None:
        sf.cwnd = INITIAL_WINDOW_SEGMENTS * sf.mss
        sf.ssthresh = INFINITE_SSTHRESH
        if self.group is not None and sf not in self.group.members:
            self.group.members.append(sf)

    def release(self, sf: CcSubflow) -> None:
        if self.group is not None and sf in self.group.members:
            self.group.members.remove(sf)

    def on_ack(self, sf: CcSubflow, acked: int, rtt: float | None, now: float) -> None:
        """New data acknowledged outside loss recovery (RFC 5681 §3.1), counted in bytes
        (RFC 3465): one ACK that stands for several (stretch ACKs of a GRO receiver, ACKs
        thinned in our receive batch) grows cwnd as much as the ACKs it replaces."""
        if not sf.cwnd_limited:
            return  # RFC 7661: do not grow a window the sender is not using
        if sf.cwnd < sf.ssthresh:
            acked = self.slow_start(sf, acked, rtt)
            if not acked:
                return
        sf.cwnd += max(1, sf.mss * acked // sf.cwnd)  # per byte acked (RFC 3465), as Linux

    def slow_start(self, sf: CcSubflow, acked: int, rtt: float | None) -> int:
        """Byte-counting slow start with HyStart++ (when on): see `slow_start` below."""
        hs = self.hystart
        if hs is not None and sf.ssthresh >= INFINITE_SSTHRESH:
            return slow_start(sf, acked, hs, rtt)
        return slow_start(sf, acked)

    def ssthresh_on_loss(self, sf: CcSubflow) -> int:
        """RFC 5681 §3.1: half the data outstanding (SACKed bytes included)."""
        return max(getattr(sf, "flight_size", sf.in_flight) // 2, 2 * sf.mss)

    def on_enter_recovery(self, sf: CcSubflow, now: float) -> None:
        sf.ssthresh = self.ssthresh_on_loss(sf)
        sf.cwnd = sf.ssthresh

    def on_exit_recovery(self, sf: CcSubflow, now: float) -> None:
        sf.cwnd = sf.ssthresh

    def on_rto(self, sf: CcSubflow, now: float, first: bool = True) -> None:
        """Retransmission timeout; RFC 5681 §3.1: ssthresh is set only on the first RTO."""
        if first:
            sf.ssthresh = self.ssthresh_on_loss(sf)
        sf.cwnd = sf.mss


Reno = CongestionControl


def slow_start(sf: CcSubflow, acked: int, hystart: "HyStart | None" = None,
               rtt: float | None = None) -> int:
    """Grow cwnd by the bytes acked up to ssthresh (Linux tcp_slow_start); return the
    bytes left over for congestion avoidance. Controllers with their own congestion
    avoidance (mptcp_bpf.cc) call it for their slow start.

    L limit (RFC 3465 §2.3): none in the initial slow start, as Linux: a stretch ACK
    reports data that really left the network, and the burst it releases is the one its
    unthinned ACKs (same RX batch, wire.gro.thin_acks) would have released. In the slow
    start after an RTO (`in_loss`) L = 1 SMSS as RFC 3465 §2.3 asks: there one cumulative
    ACK can jump over data the receiver held out of order, which says nothing of the path.
    """
    inc = acked
    if inc > sf.mss and getattr(sf, "in_loss", False):
        inc = sf.mss
    if hystart is not None:
        inc = hystart.slow_start(sf, inc, rtt, acked)
    room = sf.ssthresh - sf.cwnd
    if inc >= room:
        sf.cwnd = sf.ssthresh
        return max(0, inc - room)   # what L and HyStart let count goes on in CA
    sf.cwnd += inc
    return 0


class HyStart:
    """HyStart++ (RFC 9406) for the initial slow start: leave it when the round's minimum
    RTT has grown, i.e. when a queue starts to build, instead of at the first loss.

    Why: on a rate-limited path with a deep drop-tail queue (a TBF of 100 ms), slow start
    doubles until the queue overflows and loses half a window at once; recovering from
    that (lost retransmissions, an RTO) cost a shaped 10 Mbit/s path about 0.5 s.
    Leaving when the delay rises keeps the link full (the queue already holds data) and
    the first loss comes later, from congestion avoidance, a segment or two at a time.
    """

    __slots__ = ("window_end", "last_min", "cur_min", "samples", "css_base", "css_rounds")
    MIN_RTT_THRESH = 0.004
    MAX_RTT_THRESH = 0.016
    MIN_RTT_DIVISOR = 8
    N_RTT_SAMPLE = 8
    CSS_GROWTH_DIVISOR = 4
    CSS_ROUNDS = 5

    def __init__(self) -> None:
        self.window_end: int | None = None  # a round ends when snd_una reaches it
        self.last_min = _INF
        self.cur_min = _INF
        self.samples = 0
        self.css_base: float | None = None   # set while in conservative slow start (CSS)
        self.css_rounds = 0

    def slow_start(self, sf: Any, inc: int, rtt: float | None, acked: int = 0) -> int:
        """The slow-start increase for this ACK (RFC 9406 §4.2); may end slow start by
        setting ssthresh (after CSS_ROUNDS rounds of CSS).

        An ACK counts as one RTT sample per 2 MSS it acks (at least one): what a receiver
        ACKing every second segment gives, so stretch or thinned ACKs do not leave a round
        short of N_RTT_SAMPLE samples (all of them carry the same, newest, RTT)."""
        una = getattr(sf, "snd_una", None)
        if una is None:
            return inc  # a synthetic subflow without sequence numbers: plain slow start
        if self.window_end is None or una >= self.window_end:
            self.window_end = sf.snd_nxt
            self.last_min, self.cur_min, self.samples = self.cur_min, _INF, 0
            if self.css_base is not None:
                self.css_rounds += 1
                if self.css_rounds >= self.CSS_ROUNDS:
                    sf.ssthresh = max(sf.cwnd, 2 * sf.mss)  # §4.2: into congestion avoidance
                    return 0
        if rtt is not None and rtt > 0:
            if rtt < self.cur_min:
                self.cur_min = rtt
            self.samples += max(1, acked // (2 * sf.mss))
        enough = self.samples >= self.N_RTT_SAMPLE and self.cur_min < _INF
        if self.css_base is None:
            if enough and self.last_min < _INF:
                thresh = min(max(self.last_min / self.MIN_RTT_DIVISOR, self.MIN_RTT_THRESH),
                             self.MAX_RTT_THRESH)
                if self.cur_min >= self.last_min + thresh:
                    self.css_base = self.cur_min
                    self.css_rounds = 0
        elif enough and self.cur_min < self.css_base:
            self.css_base = None  # the delay rise was spurious: back to slow start
        if self.css_base is not None:
            return inc // self.CSS_GROWTH_DIVISOR
        return inc
