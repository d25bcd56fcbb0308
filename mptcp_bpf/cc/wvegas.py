"""wVegas, weighted Vegas (Cao, Xu, Fu, 2012): delay-based coupled congestion control.

Once per RTT each subflow compares its expected and actual rate: diff = w (rtt - base) / rtt
is the number of its packets queued in the network. It keeps diff near alpha_i, where the
connection's total_alpha is shared out by each subflow's share of the rate, so the
connection as a whole keeps about total_alpha packets queued, and traffic moves to the
paths with less queueing delay.

Three departures from the reference kernel's mptcp_wvegas, all measured (docs/notes/plugins.md):
- The round's RTT is the *smallest* sample of the round, as the kernel's tcp_vegas takes it
  (mptcp_wvegas averages): delayed ACKs, and our own stack's scheduling stalls, only ever
  add to a sample, so the minimum is the estimate of path + queue.
- The drain's reference, "the smallest queueing delay seen", is taken only from rounds at
  or above the subflow's target (diff >= alpha_i), i.e. at its equilibrium queue. Below the
  target the bottleneck holds no queue of ours and rtt - base is measurement noise (0.5-1 ms
  of our stack's latency): with it as the reference the drain fired at 2 ms of queue, before
  the subflow reached its alpha_i packets (~10 ms at 10 Mbit/s), halving the window every
  ~10 rounds and leaving a free path 20-40% idle.
- Below its target a subflow grows by LIA's coupled increase (RFC 6356 §3, from the
  connection's subflows, summed over the round's acknowledged packets, at most +1 per
  RTT), not by +1 per RTT as mptcp_wvegas does. wVegas couples only through alpha_i,
  which matters only once the queue reaches the target; where losses come first (an
  early-drop or short queue, a loss-based competitor) each subflow added 1 per RTT and
  halved on loss, an uncoupled Reno per subflow: two subflows took 1.65 shares of one
  kernel Reno flow, against RFC 6356's first goal (no more than one TCP flow at a shared
  bottleneck). With the coupled increase the connection grows like one
  flow below the target (measured 1.13-1.43, as LIA there); at the target nothing changes
  (w-1 above it, the drain, slow-start exit, the loss response), and alone on a path
  LIA's increase is Reno's, i.e. Vegas's +1 per RTT. mptcp_wvegas did not need this
  because its drain, firing at zero queueing delay, kept it far below a loss-based flow.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

from mptcp_bpf.cc.base import CoupledCC
from mptcp_bpf.cc.lia import lia_increase
from mptcp_bpf.tcp.congestion import slow_start as grow

INITIAL_ALPHA = 2
TOTAL_ALPHA = 10
GAMMA = 1
log = logging.getLogger(__name__)


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
    drained: bool = False


def wvegas_increase(i: int, cwnds: Sequence[float], rtts: Sequence[float],
                    acked: float) -> float:
    """Growth below the target over one round: LIA's (RFC 6356 §3) per-packet increase
    times the round's acknowledged packets, at most 1 (Vegas's step). Alone on a path this
    is acked / w, Reno's; n equal subflows grow by about 1 per RTT together, not n."""
    return min(1.0, lia_increase(i, cwnds, rtts) * acked)


def wvegas_update(w: float, rtt: float, base_rtt: float, alpha: float, slow_start: bool,
                  min_queue_delay: float | None, gamma: float = GAMMA,
                  increase: float = 1.0) -> WvegasStep:
    """One per-RTT update (w in packets, rtt = the smallest RTT of the last round).

    Slow start: leave it when diff > gamma, with w cut to the expected window + 1.
    Otherwise w-- when diff > alpha, w += increase (the coupled one, wvegas_increase) when
    diff < alpha. Then, when the queueing delay
    exceeds twice the smallest seen at the target (diff >= alpha), drain:
    w = w * base_rtt / (2 * rtt), and the smallest is measured afresh.
    """
    diff = wvegas_diff(w, rtt, base_rtt)
    if slow_start:
        if diff > gamma:
            return WvegasStep(max(2.0, min(w, w * base_rtt / rtt + 1)), True, min_queue_delay)
        return WvegasStep(w, False, min_queue_delay)
    if diff > alpha:
        w -= 1
    elif diff < alpha:
        w += increase
    qdelay = rtt - base_rtt
    if diff >= alpha and qdelay > 0 and (min_queue_delay is None or qdelay < min_queue_delay):
        min_queue_delay = qdelay
    if min_queue_delay is not None and qdelay > 2 * min_queue_delay:
        w = w * base_rtt / (2 * rtt)
        return WvegasStep(max(2.0, w), False, None, True)
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
        self._rtt_min = 0.0
        self._rtt_cnt = 0
        self._round_acked = 0   # bytes acknowledged in the current round
        self.rounds = 0   # per-RTT updates done (counters for inspection and tests)
        self.drains = 0   # of which drained the queue

    def on_ack(self, sf: Any, acked: int, rtt: float | None, now: float) -> None:
        if rtt is not None and rtt > 0:
            if self.base_rtt is None or rtt < self.base_rtt:
                self.base_rtt = rtt
            if self._rtt_cnt == 0 or rtt < self._rtt_min:
                self._rtt_min = rtt
            # one sample per 2 MSS acked, as HyStart++ counts them: a stretch or thinned
            # ACK (wire.gro.thin_acks) stands for the ACKs it replaced
            self._rtt_cnt += max(1, acked // (2 * sf.mss))
        self._round_acked += acked
        if self._epoch_end is None:
            self._epoch_end = now + (sf.srtt or rtt or 0.0)
        slow_start = sf.cwnd < sf.ssthresh
        if now < self._epoch_end:
            if slow_start and sf.cwnd_limited:
                grow(sf, acked)   # bytes acked, as tcp_slow_start
            return
        self._epoch_end = now + (sf.srtt or rtt or 0.0)
        cnt, rtt_round, round_acked = self._rtt_cnt, self._rtt_min, self._round_acked
        self._rtt_cnt = self._round_acked = 0
        if cnt <= 2 or self.base_rtt is None:
            # too few samples for a delay estimate (tcp_vegas: likely all delayed ACKs):
            # behave like Reno this round
            CoupledCC.on_ack(self, sf, acked, rtt, now)
            return
        peers = self.peers()
        inc = min(1.0, round_acked / sf.cwnd)   # not coupled (yet): Reno's, acked / w
        if any(p is sf for p in peers):
            i = next(k for k, p in enumerate(peers) if p is sf)
            cwnds, rtts = [p.cwnd / p.mss for p in peers], [p.srtt for p in peers]
            self.alpha = wvegas_alpha(i, cwnds, rtts,
                                      float(self.params.get("total_alpha", TOTAL_ALPHA)))
            inc = wvegas_increase(i, cwnds, rtts, round_acked / sf.mss)
        step = wvegas_update(sf.cwnd / sf.mss, rtt_round, self.base_rtt, self.alpha, slow_start,
                             self.min_queue_delay, float(self.params.get("gamma", GAMMA)), inc)
        self.rounds += 1
        self.drains += step.drained
        if log.isEnabledFor(logging.DEBUG):
            log.debug("wvegas round: w %.1f rtt %.2f ms base %.2f ms samples %d alpha %.1f "
                      "inc %.2f diff %.1f qmin %s -> w %.1f%s", sf.cwnd / sf.mss,
                      rtt_round * 1e3, self.base_rtt * 1e3, cnt, self.alpha, inc,
                      wvegas_diff(sf.cwnd / sf.mss, rtt_round, self.base_rtt),
                      self.min_queue_delay, step.cwnd, " drain" if step.drained else "")
        self.min_queue_delay = step.min_queue_delay
        if slow_start and not step.leave_slow_start:
            if sf.cwnd_limited:
                grow(sf, acked)   # bytes acked, as tcp_slow_start
            return
        sf.cwnd = max(2 * sf.mss, int(step.cwnd * sf.mss))
        if step.leave_slow_start or sf.cwnd < sf.ssthresh:
            sf.ssthresh = max(2 * sf.mss, sf.cwnd - sf.mss)

    def increase(self, sf: Any, peers: list[Any]) -> float:
        """LIA's, for the Reno step of a round with too few RTT samples (CoupledCC.on_ack)."""
        i = next(k for k, p in enumerate(peers) if p is sf)
        return lia_increase(i, [p.cwnd / p.mss for p in peers], [p.srtt for p in peers])
