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

    def init(self, sf: CcSubflow) -> None:
        sf.cwnd = INITIAL_WINDOW_SEGMENTS * sf.mss
        sf.ssthresh = INFINITE_SSTHRESH
        if self.group is not None and sf not in self.group.members:
            self.group.members.append(sf)

    def release(self, sf: CcSubflow) -> None:
        if self.group is not None and sf in self.group.members:
            self.group.members.remove(sf)

    def on_ack(self, sf: CcSubflow, acked: int, rtt: float | None, now: float) -> None:
        """New data acknowledged outside loss recovery (RFC 5681 §3.1)."""
        if not sf.cwnd_limited:
            return  # RFC 7661: do not grow a window the sender is not using
        if sf.cwnd < sf.ssthresh:
            # RFC 3465 (L = 2): stretch ACKs (batched or GRO receivers) do not stall slow start
            sf.cwnd += min(acked, 2 * sf.mss)
        else:
            sf.cwnd += max(1, sf.mss * acked // sf.cwnd)  # per byte acked (RFC 3465), as Linux

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
