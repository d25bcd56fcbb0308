"""The TSO-like burst of Subflow.push (Subflow._burst) sends exactly what the per-segment
path sends: same packets, bytes and times, for MPTCP (DSS, checksums, loss and SACK
recovery, reordering, several subflows) and plain TCP."""

from __future__ import annotations

import random

import pytest

from mptcp_bpf.tcp.plain import PlainHost
from mptcp_bpf.tcp.subflow import Subflow, SubflowConfig
from mptcp_bpf.tcp.netsim import Net

from test_mptcp_netsim import Pair, ip


def _record(net: Net) -> list[tuple[float, bytes]]:
    out: list[tuple[float, bytes]] = []
    net.taps.append(lambda pkt, now: out.append((now, bytes(pkt))))
    return out


def _mptcp_run(version: int, csum: bool, loss: float, reorder: float) -> tuple[list, bytes]:
    p = Pair(version=version, csum=(csum, False), loss=loss, reorder=reorder, seed=7)
    rec = _record(p.net)
    p.connect()
    data = random.Random(3).randbytes(600_000)
    got, _ = p.transfer(data)
    assert got == data
    return rec, got


@pytest.mark.parametrize("version,csum,loss,reorder", [
    (1, False, 0.0, 0.0), (1, True, 0.02, 0.0), (0, True, 0.01, 0.02), (1, False, 0.03, 0.03)])
def test_mptcp_burst_sends_the_same_packets(monkeypatch, version, csum, loss, reorder):
    on, got_on = _mptcp_run(version, csum, loss, reorder)
    n_burst = []
    real = Subflow._burst

    def counting(self, *a):
        n_burst.append(1)
        return real(self, *a)

    monkeypatch.setattr(Subflow, "_burst", counting)
    _mptcp_run(version, csum, loss, reorder)
    assert n_burst, "the burst path was never taken"
    monkeypatch.setattr(Subflow, "_burst_header", lambda self, now: False)
    off, got_off = _mptcp_run(version, csum, loss, reorder)
    assert got_on == got_off
    assert len(on) == len(off)
    for i, (a, b) in enumerate(zip(on, off)):
        assert a == b, f"packet {i} differs"


def _tcp_run(loss: float) -> list:
    net = Net(seed=5)
    A, B = ip("10.0.1.1"), ip("10.0.1.2")
    net.link(A, B, delay=0.002, rate=200e6, loss=loss)
    rec = _record(net)
    cfg = SubflowConfig(rcv_buf=1 << 20, time_wait=0.2)
    ha = PlainHost([A], net.timers, net.send, cfg, random.Random(1))
    hb = PlainHost([B], net.timers, net.send, cfg, random.Random(2))
    net.attach(A, lambda pkt, now: ha.input(pkt, now))
    net.attach(B, lambda pkt, now: hb.input(pkt, now))
    acc: list = []
    hb.listen(80, acc.append)
    c = ha.connect(A, (B, 80), 0.0)
    assert net.run_until(lambda: c.established and bool(acc), 5)
    data = random.Random(4).randbytes(400_000)
    got = bytearray()
    sent = [0]

    def pump() -> bool:
        while sent[0] < len(data) and c.writable():
            c.send(data[sent[0]:sent[0] + 50_000], net.now)
            sent[0] += 50_000
        while True:
            b = acc[0].recv(1 << 20, net.now)
            if not b:
                break
            got.extend(b)
        return len(got) >= len(data)

    assert net.run_until(pump, 60)
    assert bytes(got) == data
    return rec


@pytest.mark.parametrize("loss", [0.0, 0.02])
def test_plain_tcp_burst_sends_the_same_packets(monkeypatch, loss):
    on = _tcp_run(loss)
    monkeypatch.setattr(Subflow, "_burst_header", lambda self, now: False)
    off = _tcp_run(loss)
    assert on == off
