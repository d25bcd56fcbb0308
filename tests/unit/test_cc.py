"""Coupled congestion control against the formulas of REFERENCE.md §5, on synthetic subflows."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import pytest

from mptcp_bpf import plugins
from mptcp_bpf.cc.balia import balia_decrease, balia_increase
from mptcp_bpf.cc.cubic import cubic_k, cubic_window
from mptcp_bpf.cc.lia import lia_alpha, lia_increase
from mptcp_bpf.cc.olia import olia_epsilons, olia_increase
from mptcp_bpf.cc.wvegas import wvegas_alpha, wvegas_diff, wvegas_increase, wvegas_update
from mptcp_bpf.tcp.congestion import CcGroup

MSS = 1000


@dataclass(eq=False)
class Sf:
    cwnd: int = 10 * MSS
    ssthresh: int = 1 << 30
    mss: int = MSS
    srtt: float | None = 0.1
    min_rtt: float | None = 0.1
    in_flight: int = 0
    cwnd_limited: bool = True
    established: bool = True


def make(name, specs, **params):
    group = CcGroup()
    sfs, ctls = [], []
    for cwnd_pk, rtt in specs:
        sf = Sf(srtt=rtt, min_rtt=rtt)
        ctl = plugins.get("cc", name).factory(params=params, group=group)
        ctl.init(sf)
        sf.cwnd = int(cwnd_pk * MSS)
        sf.ssthresh = 2 * MSS  # congestion avoidance
        sfs.append(sf)
        ctls.append(ctl)
    return group, sfs, ctls


def test_registry_lists_every_controller():
    assert {"reno", "lia", "olia", "balia", "wvegas", "cubic"} <= set(plugins.names("cc"))


# ---------------------------------------------------------------- LIA (RFC 6356)

def test_lia_alpha_formula():
    w, r = [10.0, 20.0], [0.1, 0.2]
    expect = 30 * max(10 / 0.01, 20 / 0.04) / (10 / 0.1 + 20 / 0.2) ** 2
    assert lia_alpha(w, r) == pytest.approx(expect)
    assert lia_alpha([10.0], [0.05]) == pytest.approx(1.0)  # one path: alpha = 1 (Reno)
    # equal paths: alpha = 1/n
    assert lia_alpha([10.0, 10.0], [0.1, 0.1]) == pytest.approx(0.5)


def test_lia_increase_is_min_of_coupled_and_uncoupled():
    w, r = [10.0, 40.0], [0.1, 0.1]
    a = lia_alpha(w, r)
    assert lia_increase(0, w, r) == pytest.approx(min(a / 50, 1 / 10))
    assert lia_increase(1, w, r) == pytest.approx(min(a / 50, 1 / 40))
    assert lia_increase(0, w, r) <= 1 / 10


def test_lia_controller_grows_by_formula_over_a_window():
    group, sfs, ctls = make("lia", [(10, 0.1), (10, 0.1)])
    before = sfs[0].cwnd
    for _ in range(10):
        ctls[0].on_ack(sfs[0], MSS, 0.1, 0.0)
    # each ACK adds min(alpha/w_total, 1/w_i) packets; alpha=0.5, w_total=20 -> 0.025
    assert sfs[0].cwnd - before == pytest.approx(10 * 0.025 * MSS, abs=2)


def test_lia_single_subflow_is_reno():
    group, sfs, ctls = make("lia", [(10, 0.1)])
    for _ in range(10):
        ctls[0].on_ack(sfs[0], MSS, 0.1, 0.0)
    # one window acked: about one MSS more, as Reno
    assert sfs[0].cwnd == pytest.approx(11 * MSS, rel=0.01)


def test_coupled_increase_is_applied_in_batches_of_an_eighth_window():
    group, sfs, ctls = make("lia", [(80, 0.1), (80, 0.1)])
    before = sfs[0].cwnd
    for _ in range(9):
        ctls[0].on_ack(sfs[0], MSS, 0.1, 0.0)
    assert sfs[0].cwnd == before                 # 9 kB < 80 kB / 8: nothing applied yet
    ctls[0].on_ack(sfs[0], MSS, 0.1, 0.0)
    inc = lia_increase(0, [80.0, 80.0], [0.1, 0.1])
    assert sfs[0].cwnd - before == pytest.approx(inc * 10 * MSS, abs=1)
    sfs[0].in_flight = sfs[0].cwnd
    ctls[0].on_ack(sfs[0], MSS, 0.1, 0.0)
    ctls[0].on_enter_recovery(sfs[0], 0.0)       # a loss forgets what was pending
    assert ctls[0]._acked == 0


def test_slow_start_and_loss_are_reno():
    group, sfs, ctls = make("lia", [(10, 0.1), (10, 0.1)])
    sf = sfs[0]
    sf.ssthresh = 1 << 30
    ctls[0].on_ack(sf, 1500, 0.1, 0.0)
    assert sf.cwnd == 10 * MSS + 1500   # slow start counts the bytes acked (RFC 3465)
    sf.in_flight = 11 * MSS
    ctls[0].on_enter_recovery(sf, 0.0)
    assert sf.cwnd == sf.ssthresh == 5500
    ctls[0].release(sf)
    assert sf not in group.members


def test_no_growth_when_not_cwnd_limited():
    group, sfs, ctls = make("olia", [(10, 0.1), (10, 0.1)])
    sfs[0].cwnd_limited = False
    ctls[0].on_ack(sfs[0], MSS, 0.1, 0.0)
    assert sfs[0].cwnd == 10 * MSS


# ---------------------------------------------------------------- OLIA

def test_olia_epsilon_sets():
    # path 0 has the best l/rtt^2 but the smaller window: B\M = {0}, M = {1}
    eps = olia_epsilons([10.0, 20.0], [0.1, 0.1], [5000.0, 1000.0])
    assert eps == pytest.approx([1 / (2 * 1), -1 / (2 * 1)])
    # the best path is also the largest window: B\M empty -> all zero
    assert olia_epsilons([30.0, 20.0], [0.1, 0.1], [5000.0, 1000.0]) == [0.0, 0.0]
    # three paths, two largest windows, one best small one
    eps = olia_epsilons([5.0, 20.0, 20.0], [0.1, 0.1, 0.1], [9000.0, 100.0, 100.0])
    assert eps == pytest.approx([1 / 3, -1 / 6, -1 / 6])
    # two best not in M share the bonus
    eps = olia_epsilons([5.0, 5.0, 20.0], [0.1, 0.1, 0.1], [9000.0, 9000.0, 100.0])
    assert eps == pytest.approx([1 / 6, 1 / 6, -1 / 3])
    assert sum(eps) == pytest.approx(0.0)


def test_olia_increase_formula():
    w, r, l = [10.0, 20.0], [0.1, 0.2], [5000.0, 1000.0]
    denom = 10 / 0.1 + 20 / 0.2
    eps = olia_epsilons(w, r, l)
    assert olia_increase(0, w, r, l) == pytest.approx((10 / 0.01) / denom ** 2 + eps[0] / 10)
    assert olia_increase(1, w, r, l) == pytest.approx((20 / 0.04) / denom ** 2 + eps[1] / 20)


def test_olia_controller_tracks_loss_distances_and_moves_window():
    group, sfs, ctls = make("olia", [(10, 0.1), (30, 0.1)])
    # subflow 1 lost recently (short distance), subflow 0 has gone long without loss
    for _ in range(50):
        ctls[0].on_ack(sfs[0], MSS, 0.1, 0.0)
    sfs[1].in_flight = sfs[1].cwnd
    ctls[1].on_enter_recovery(sfs[1], 0.0)
    assert ctls[1].since_loss == 0
    assert ctls[0].loss_distance() == 50 * MSS
    sfs[1].cwnd = 30 * MSS
    r, l = [0.1, 0.1], [50.0 * MSS, 0.0]
    w = [s.cwnd / MSS for s in sfs]
    assert olia_epsilons(w, r, l) == pytest.approx([0.5, -0.5])
    # the best path gets the epsilon bonus, the largest window gives some up
    before = sfs[0].cwnd
    acked0 = sfs[0].cwnd // 4         # more than the 1/8-window batch: applied at once
    ctls[0].on_ack(sfs[0], acked0, 0.1, 1.0)
    assert sfs[0].cwnd - before == pytest.approx(olia_increase(0, w, r, l) * acked0, abs=1)
    w = [s.cwnd / MSS for s in sfs]
    before = sfs[1].cwnd
    acked = sfs[1].cwnd // 4
    ctls[1].on_ack(sfs[1], acked, 0.1, 1.0)
    l = [50.0 * MSS + acked0, float(acked)]   # the distances as they are at that ACK
    assert sfs[1].cwnd - before == pytest.approx(olia_increase(1, w, r, l) * acked, abs=1)
    assert olia_increase(1, w, r, l) < (w[1] / 0.01) / (w[0] / 0.1 + w[1] / 0.1) ** 2


# ---------------------------------------------------------------- BALIA

def test_balia_increase_and_decrease_formulas():
    w, r = [10.0, 20.0], [0.1, 0.1]
    x = [100.0, 200.0]
    a0 = 200.0 / 100.0
    expect0 = (x[0] / 0.1) / (300.0 ** 2) * (1 + a0) / 2 * (4 + a0) / 5
    assert balia_increase(0, w, r) == pytest.approx(expect0)
    expect1 = (x[1] / 0.1) / (300.0 ** 2) * 1.0 * 1.0
    assert balia_increase(1, w, r) == pytest.approx(expect1)
    assert balia_decrease(0, w, r) == pytest.approx(10 / 2 * 1.5)   # min(2, 1.5)
    assert balia_decrease(1, w, r) == pytest.approx(20 / 2 * 1.0)
    assert balia_decrease(0, [10.0, 12.0], r) == pytest.approx(5 * 1.2)


def test_balia_controller_loss_response():
    group, sfs, ctls = make("balia", [(10, 0.1), (20, 0.1)])
    ctls[0].on_enter_recovery(sfs[0], 0.0)
    assert sfs[0].cwnd == int((10 - 7.5) * MSS)
    ctls[1].on_enter_recovery(sfs[1], 0.0)
    assert sfs[1].cwnd == pytest.approx(10 * MSS, abs=1)


# ---------------------------------------------------------------- wVegas

def test_wvegas_diff_and_alpha():
    assert wvegas_diff(20, 0.12, 0.1) == pytest.approx(20 * 0.02 / 0.12)
    assert wvegas_alpha(0, [10, 30], [0.1, 0.1]) == pytest.approx(max(2, 10 * 0.25))
    assert wvegas_alpha(1, [10, 30], [0.1, 0.1]) == pytest.approx(7.5)
    assert wvegas_alpha(0, [1, 99], [0.1, 0.1]) == 2.0


def test_wvegas_per_rtt_update():
    # diff = 20*(0.11-0.1)/0.11 = 1.8 < alpha 5 -> w + 1; below the target the queueing
    # delay is not a reference for the drain
    s = wvegas_update(20, 0.11, 0.1, 5, False, None)
    assert s.cwnd == pytest.approx(21) and s.min_queue_delay is None and not s.drained
    # diff = 20*0.05/0.15 = 6.7 > alpha 5 -> w - 1 (queue delay seen first time: no drain)
    s = wvegas_update(20, 0.15, 0.1, 5, False, None)
    assert s.cwnd == pytest.approx(19) and s.min_queue_delay == pytest.approx(0.05)
    # diff == alpha exactly -> unchanged
    s = wvegas_update(20, 0.2, 0.1, 10, False, None)
    assert s.cwnd == pytest.approx(20)
    # queueing delay 0.05 > 2 * smallest seen (0.01): drain to w * base / (2 rtt)
    s = wvegas_update(20, 0.15, 0.1, 5, False, 0.01)
    assert s.cwnd == pytest.approx(19 * 0.1 / (2 * 0.15)) and s.min_queue_delay is None
    assert s.drained
    # a smaller queue at the target lowers the reference; twice it is not yet a drain
    s = wvegas_update(40, 0.115, 0.1, 5, False, 0.02)    # diff 5.2 >= 5, q 0.015
    assert s.min_queue_delay == pytest.approx(0.015) and not s.drained
    assert s.cwnd == pytest.approx(39)


def test_wvegas_slow_start_exit():
    s = wvegas_update(20, 0.15, 0.1, 2, True, None, gamma=1)   # diff 6.7 > gamma
    assert s.leave_slow_start and s.cwnd == pytest.approx(min(20, 20 * 0.1 / 0.15 + 1))
    s = wvegas_update(20, 0.104, 0.1, 2, True, None, gamma=1)  # diff 0.77 < gamma
    assert not s.leave_slow_start and s.cwnd == 20


def test_wvegas_controller_runs_per_rtt():
    group, sfs, ctls = make("wvegas", [(20, 0.1), (20, 0.1)])
    sf, ctl = sfs[0], ctls[0]
    now = 0.0
    for _ in range(5):            # first round: base rtt 0.1
        ctl.on_ack(sf, MSS, 0.1, now)
        now += 0.02
    w0 = sf.cwnd
    for _ in range(6):            # a round with rtt 0.1: no queueing -> w++
        ctl.on_ack(sf, MSS, 0.1, now)
        now += 0.02
    assert sf.cwnd >= w0
    assert ctl.alpha == pytest.approx(max(2, 10 * 0.5), rel=0.1)


def _wvegas_round(ctl, sf, samples, now, step=0.01):
    """ACKs with these RTT samples, together acknowledging about one window (one round)."""
    acked = max(1, sf.cwnd // len(samples))
    for r in samples:
        ctl.on_ack(sf, acked, r, now)
        now += step
    return now


def test_wvegas_round_rtt_is_the_smallest_sample():
    """Delayed ACKs and stalls only add to a sample: the round's minimum is the estimate
    (tcp_vegas). Rounds of samples 0.1 with spikes to 0.3 still see no queue: w grows."""
    group, sfs, ctls = make("wvegas", [(20, 0.1)])
    sf, ctl = sfs[0], ctls[0]
    now = _wvegas_round(ctl, sf, [0.1] * 12, 0.0)
    w0 = sf.cwnd
    for _ in range(5):
        now = _wvegas_round(ctl, sf, [0.3, 0.1, 0.25, 0.1, 0.3, 0.1, 0.2, 0.1, 0.3, 0.1, 0.1], now)
    assert sf.cwnd >= w0 + 3 * MSS
    assert ctl.drains == 0


def test_wvegas_noise_below_target_does_not_drain():
    """Queueing 'delays' of a fraction of a ms below the target (our stack's own latency)
    are no reference: the window climbs to its alpha target without a drain."""
    group, sfs, ctls = make("wvegas", [(10, 0.02)])
    sf, ctl = sfs[0], ctls[0]
    base, bdp = 0.020, 17.0
    now = 0.0
    for i in range(60):
        w = sf.cwnd / MSS
        queue = max(0.0, w - bdp) * base / bdp           # seconds of queue at the bottleneck
        noise = 0.0008 if i % 3 else 0.0003
        now = _wvegas_round(ctl, sf, [base + queue + noise] * 6, now, step=(base + queue) / 6)
        sf.srtt = base + queue
    assert ctl.rounds >= 40 and ctl.drains == 0
    w = sf.cwnd / MSS
    assert bdp + 7 <= w <= bdp + 14     # about alpha (10) packets queued


def test_wvegas_increase_below_target_is_lia():
    """Below the target the step is LIA's per-packet increase times the round's packets
    acknowledged (RFC 6356 §3), at most 1: one subflow alone grows like Reno (acked / w),
    two equal subflows grow by 1/2 per RTT together (LIA's alpha = 1/2), not 2."""
    assert wvegas_increase(0, [20.0], [0.1], 20) == pytest.approx(1.0)
    assert wvegas_increase(0, [20.0], [0.1], 10) == pytest.approx(0.5)
    assert wvegas_increase(0, [20.0], [0.1], 30) == pytest.approx(1.0)     # capped at +1
    both = [wvegas_increase(i, [10.0, 10.0], [0.1, 0.1], 10) for i in (0, 1)]
    assert both == pytest.approx([0.25, 0.25])
    w, r = [10.0, 30.0], [0.02, 0.1]
    for i in (0, 1):
        assert wvegas_increase(i, w, r, w[i]) == pytest.approx(min(1.0, lia_increase(i, w, r) * w[i]))
    # the update applies it below the target only; above it Vegas's w - 1 stays
    assert wvegas_update(20, 0.11, 0.1, 5, False, None, increase=0.25).cwnd == pytest.approx(20.25)
    assert wvegas_update(20, 0.15, 0.1, 5, False, None, increase=0.25).cwnd == pytest.approx(19)
    s = wvegas_update(20, 0.15, 0.1, 5, False, 0.01, increase=0.25)        # the drain stays
    assert s.drained and s.cwnd == pytest.approx(19 * 0.1 / (2 * 0.15))


def test_wvegas_connection_grows_like_one_flow_below_target():
    """Two subflows without queueing delay (below their target) add about 1/2 packet per
    RTT together, where mptcp_wvegas's rule added 1 each; one alone still adds 1."""
    group, sfs, ctls = make("wvegas", [(20, 0.1), (20, 0.1)])
    now = [0.0, 0.0]
    for _ in range(3):                                    # base RTT, first rounds
        for k in (0, 1):
            now[k] = _wvegas_round(ctls[k], sfs[k], [0.1] * 10, now[k])
    w0 = sum(sf.cwnd for sf in sfs)
    for _ in range(20):
        for k in (0, 1):
            now[k] = _wvegas_round(ctls[k], sfs[k], [0.1] * 10, now[k])
    grown = (sum(sf.cwnd for sf in sfs) - w0) / MSS
    assert 5 <= grown <= 14                              # ~0.5 per round, never 2 per round
    assert ctls[0].drains == ctls[1].drains == 0
    group, (sf,), (ctl,) = make("wvegas", [(20, 0.1)])
    now1 = _wvegas_round(ctl, sf, [0.1] * 10, 0.0)
    w0 = sf.cwnd
    for _ in range(20):
        now1 = _wvegas_round(ctl, sf, [0.1] * 10, now1)
    assert 14 <= (sf.cwnd - w0) / MSS <= 21


def _random_loss_windows(name, subflows, p, rounds=1500, seed=3):
    """Mean total window (packets) of one connection of `subflows` subflows at a bottleneck
    that drops each packet with probability p and holds no queue (rtt = base): losses come
    before any delay target. A lossy round ends in one halving (recovery)."""
    rnd = random.Random(seed)
    group, sfs, ctls = make(name, [(10, 0.1)] * subflows)
    now, total = 0.0, 0.0
    for n in range(rounds):
        for sf, ctl in zip(sfs, ctls):
            w = max(1, sf.cwnd // MSS)
            lost = False
            for k in range(w):
                if rnd.random() < p:
                    lost = True
                else:
                    ctl.on_ack(sf, MSS, 0.1, now + 0.1 * k / w)
            if lost:
                sf.in_flight = sf.cwnd
                ctl.on_enter_recovery(sf, now)
                ctl.on_exit_recovery(sf, now)
        now += 0.1
        if n >= rounds // 5:
            total += sum(sf.cwnd for sf in sfs) / MSS
    return total / (rounds - rounds // 5)


def test_wvegas_takes_one_share_when_losses_come_first():
    """RFC 6356's first goal where drops come before the queue target: two wvegas subflows
    hold about one Reno flow's window under the same loss rate (the +1-per-subflow rule of
    mptcp_wvegas held about two)."""
    reno = _random_loss_windows("reno", 1, 0.003)
    wv = _random_loss_windows("wvegas", 2, 0.003)
    lia = _random_loss_windows("lia", 2, 0.003)
    assert 0.7 <= wv / reno <= 1.3, (wv, reno, lia)
    assert abs(wv - lia) <= 0.25 * lia


# ---------------------------------------------------------------- CUBIC

def test_cubic_window_and_k():
    k = cubic_k(100, 70, 0.4)
    assert k == pytest.approx(math.pow(30 / 0.4, 1 / 3))
    assert cubic_window(k, 100, k, 0.4) == pytest.approx(100)
    group, sfs, ctls = make("cubic", [(100, 0.1)])
    sf = sfs[0]
    sf.ssthresh = ctls[0].ssthresh_on_loss(sf)
    assert sf.ssthresh == 70 * MSS
    sf.cwnd = sf.ssthresh
    for i in range(200):
        ctls[0].on_ack(sf, MSS, 0.1, i * 0.01)
    assert 70 * MSS < sf.cwnd < 101 * MSS


@pytest.mark.parametrize("name", ["lia", "olia", "balia", "wvegas", "cubic", "reno"])
def test_long_random_run_keeps_windows_sane(name):
    import random
    rnd = random.Random(1)
    group, sfs, ctls = make(name, [(10, 0.02), (10, 0.2), (5, 0.05)])
    now = 0.0
    for _ in range(5000):
        i = rnd.randrange(3)
        sf, ctl = sfs[i], ctls[i]
        now += 0.001
        if rnd.random() < 0.01:
            sf.in_flight = sf.cwnd
            ctl.on_enter_recovery(sf, now)
            ctl.on_exit_recovery(sf, now)
        elif rnd.random() < 0.001:
            ctl.on_rto(sf, now)
        else:
            ctl.on_ack(sf, MSS, sf.srtt * (1 + rnd.random() * 0.2), now)
    for sf in sfs:
        assert MSS <= sf.cwnd < 10_000 * MSS
