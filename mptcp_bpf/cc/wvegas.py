"""wVegas, weighted Vegas (Cao, Xu, Fu, 2012): delay-based coupled congestion control.

Once per RTT each subflow compares its expected and actual rate: diff = w (rtt - base) / rtt
is the number of its packets queued in the network. It keeps diff near alpha_i, where the
connection's total_alpha is shared out by each subflow's share of the rate, so the
connection as a whole keeps about total_alpha packets queued, and traffic moves to the
paths with less queueing delay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from mptcp_bpf.cc.base import CoupledCC

INITIAL_ALPHA = 2
TOTAL_ALPHA = 10
GAMMA = 1


def wvegas_diff(w: float, rtt: float, base_rtt: float) -> float:
    """Packets this subflow keeps in queues: w * (rtt - base_rtt) / rtt."""
    return w * (rtt - base_rtt) / rtt


def wvegas_alpha(i: int, cwnds: Sequence[float], rtts: Sequence[float],
                 total_alpha: float = TOTAL_ALPHA) -> float:
    """alpha_i = max(2, total_alpha * weight_i), weight_i = (w_i/rtt_i) / sum_j (w_j/rtt_j)."""
    rates = [w / r for w, r in zip(cwnds, rtts)]
    return max(2.0, total_alpha * rates[i] / sum(rates))


@dataclass
class WvegasStep:
    cwnd: float                 # packets
    leave_slow_start: bool
    min_queue_delay: float | None


def wvegas_update(w: float, rtt: float, base_rtt: float, alpha: float, slow_start: bool,
                  min_queue_delay: float | None, gamma: float = GAMMA) -> WvegasStep:
    """One per-RTT update (w in packets, rtt = the RTT averaged over the last round).

    Slow start: leave it when diff > gamma, with w cut to the expected window + 1.
    Otherwise w-- when diff > alpha, w++ when diff < alpha. Then, when the queueing delay
    exceeds twice the smallest seen, drain: w = w * base_rtt / (2 * rtt).
    """
    diff = wvegas_diff(w, rtt, base_rtt)
    if slow_start:
        if diff > gamma:
            return WvegasStep(max(2.0, min(w, w * base_rtt / rtt + 1)), True, min_queue_delay)
        return WvegasStep(w, False, min_queue_delay)
    if diff > alpha:
        w -= 1
    elif diff < alpha:
        w += 1
    qdelay = rtt - base_rtt
    if qdelay > 0 and (min_queue_delay is None or qdelay < min_queue_delay):
        min_queue_delay = qdelay
    if min_queue_delay is not None and qdelay > 2 * min_queue_delay:
        w = w * base_rtt / (2 * rtt)
        min_queue_delay = None
    return WvegasStep(max(2.0, w), False, min_queue_delay)


class Wvegas(CoupledCC):
    """Delay-based: per RTT, keep about alpha_i of this subflow's packets queued."""

    name = "wvegas"

    def __init__(self, params: dict[str, Any] | None = None, group: Any = None) -> None:
        super().__init__(params, group)
        self.alpha = float(self.params.get("initial_alpha", INITIAL_ALPHA))
        self.base_rtt: float | None = None
        self.min_queue_delay: float | None = None
        self._epoch_end: float | None = None
        self._rtt_sum = 0.0
        self._rtt_cnt = 0

    def on_ack(self, sf: Any, acked: int, rtt: float | None, now: float) -> None:
        if rtt is not None and rtt > 0:
            if self.base_rtt is None or rtt < self.base_rtt:
                self.base_rtt = rtt
            self._rtt_sum += rtt
            self._rtt_cnt += 1
        if self._epoch_end is None:
            self._epoch_end = now + (sf.srtt or rtt or 0.0)
        slow_start = sf.cwnd < sf.ssthresh
        if now < self._epoch_end:
            if slow_start and sf.cwnd_limited:
                sf.cwnd += min(acked, sf.mss)
            return
        self._epoch_end = now + (sf.srtt or rtt or 0.0)
        cnt, total = self._rtt_cnt, self._rtt_sum
        self._rtt_cnt, self._rtt_sum = 0, 0.0
        if cnt <= 2 or self.base_rtt is None:
            # too few samples for a delay estimate: behave like Reno this round
            CoupledCC.on_ack(self, sf, acked, rtt, now)
            return
        avg = total / cnt
        peers = self.peers()
        if any(p is sf for p in peers):
            i = next(k for k, p in enumerate(peers) if p is sf)
            self.alpha = wvegas_alpha(i, [p.cwnd / p.mss for p in peers],
                                      [p.srtt for p in peers],
                                      float(self.params.get("total_alpha", TOTAL_ALPHA)))
        step = wvegas_update(sf.cwnd / sf.mss, avg, self.base_rtt, self.alpha, slow_start,
                             self.min_queue_delay, float(self.params.get("gamma", GAMMA)))
        self.min_queue_delay = step.min_queue_delay
        if slow_start and not step.leave_slow_start:
            if sf.cwnd_limited:
                sf.cwnd += min(acked, sf.mss)
            return
        sf.cwnd = max(2 * sf.mss, int(step.cwnd * sf.mss))
        if step.leave_slow_start or sf.cwnd < sf.ssthresh:
            sf.ssthresh = max(2 * sf.mss, sf.cwnd - sf.mss)
