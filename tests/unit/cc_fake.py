"""The subflow a congestion control sees (CcSubflow), as a plain record for unit tests."""

from __future__ import annotations

from dataclasses import dataclass

from mptcp_bpf.tcp.congestion import INFINITE_SSTHRESH

MSS = 1000


@dataclass(eq=False)
class Sf:
    cwnd: int = 10 * MSS
    ssthresh: int = INFINITE_SSTHRESH
    mss: int = MSS
    srtt: float | None = 0.01
    min_rtt: float | None = 0.01
    in_flight: int = 0
    cwnd_limited: bool = True
    in_loss: bool = False
    snd_una: int = 0
    snd_nxt: int = 0
