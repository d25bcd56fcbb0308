"""Byte counting in Reno's slow start and congestion avoidance (RFC 3465, as Linux), and
HyStart++ sample counting, so that fewer, larger ACKs (stretch ACKs, ACK thinning in the
receive batch) grow cwnd as the ACKs they replace do."""

from __future__ import annotations

import pytest

from cc_fake import MSS
from cc_fake import Sf as _Sf

from mptcp_bpf.tcp.congestion import CongestionControl, HyStart


def Sf(**kw) -> _Sf:
    """A subflow with 100 segments sent (HyStart++ rounds end at snd_nxt)."""
    kw.setdefault("snd_nxt", 100 * MSS)
    return _Sf(**kw)


def grow(acks: list[int], hystart: bool = False, **kw) -> _Sf:
    sf = Sf(**kw)
    cc = CongestionControl({"hystart": hystart})
    for a in acks:
        sf.snd_una += a
        cc.on_ack(sf, a, 0.01, 0.0)
    return sf


def test_slow_start_counts_bytes_of_stretch_acks():
    # 32 ACKs of 2 MSS vs 4 ACKs of 16 MSS vs one of 64 MSS: the same cwnd
    a = grow([2 * MSS] * 32).cwnd
    assert a == 74 * MSS
    assert grow([16 * MSS] * 4).cwnd == a
    assert grow([64 * MSS]).cwnd == a


def test_slow_start_stops_at_ssthresh_and_leftover_goes_to_ca():
    sf = grow([20 * MSS], ssthresh=15 * MSS)
    # 5 MSS to reach ssthresh, 15 MSS left: CA adds mss * 15000 // 15000 = 1 MSS
    assert sf.cwnd == 16 * MSS


def test_congestion_avoidance_per_byte():
    # one RTT's worth of ACKs adds one MSS, however they are cut
    w = 20 * MSS
    a = grow([2 * MSS] * 10, ssthresh=w, cwnd=w).cwnd
    b = grow([20 * MSS], ssthresh=w, cwnd=w).cwnd
    assert b == w + MSS
    assert abs(a - b) <= MSS // 10


def test_slow_start_after_rto_is_limited_to_one_smss_per_ack():
    sf = grow([30 * MSS], cwnd=MSS, ssthresh=40 * MSS, in_loss=True)
    assert sf.cwnd == 2 * MSS  # RFC 3465 §2.3: L = 1 SMSS after an RTO


def test_hystart_counts_samples_per_two_mss():
    hs = HyStart()
    sf = Sf()
    hs.slow_start(sf, 16 * MSS, 0.01, 16 * MSS)   # one ACK for 16 MSS: 8 samples
    assert hs.samples == 8
    hs.slow_start(sf, 100, 0.01, 100)             # a tiny ACK still counts once
    assert hs.samples == 9


def test_hystart_detects_delay_rise_with_thinned_acks():
    """Rounds of 2 ACKs for 32 MSS each (thinned) find the RTT rise as 32 ACKs do."""
    for per_round in (32, 2):
        sf = Sf(cwnd=64 * MSS, snd_nxt=64 * MSS)
        cc = CongestionControl()
        rtts = [0.010] * 2 + [0.030] * 2
        for rnd, rtt in enumerate(rtts):
            sf.snd_nxt = sf.snd_una + 64 * MSS
            step = 64 * MSS // per_round
            for _ in range(per_round):
                sf.snd_una += step
                cc.on_ack(sf, step, rtt, rnd)
        assert cc.hystart is not None and cc.hystart.css_base is not None, per_round


@pytest.mark.parametrize("name", ["lia", "olia", "balia", "cubic"])
def test_other_controllers_count_bytes_in_slow_start(name):
    from mptcp_bpf import plugins
    sfs = []
    for acks in ([2 * MSS] * 16, [32 * MSS]):
        sf = Sf()
        ctl = plugins.get("cc", name).factory(params={})
        ctl.init(sf)
        for a in acks:
            sf.snd_una += a
            ctl.on_ack(sf, a, 0.01, 0.0)
        sfs.append(sf.cwnd)
    assert sfs[0] == sfs[1] == 42 * MSS


def test_after_rto_the_leftover_is_limited_too():
    sf = grow([30 * MSS], cwnd=MSS, ssthresh=MSS + MSS // 2, in_loss=True)
    # 1 SMSS counts: 500 bytes reach ssthresh, 500 go on in CA (+333), not 29.5 MSS
    assert sf.cwnd == MSS + MSS // 2 + MSS * 500 // (MSS + MSS // 2)
