"""The in-memory network: delay, rate, queue, loss, reordering, routing, clock."""

from __future__ import annotations

import pytest

from mptcp_bpf.tcp.netsim import Net, ip_addrs
from mptcp_bpf.wire.packet import build_tcp_packet

A = bytes([10, 0, 0, 1])
B = bytes([10, 0, 0, 2])
C = bytes([10, 0, 0, 3])
A6 = bytes.fromhex("fd000000000000000000000000000001")
B6 = bytes.fromhex("fd000000000000000000000000000002")


def pkt(src: bytes, dst: bytes, n: int = 0, seq: int = 0) -> bytes:
    return build_tcp_packet(src, dst, 1, 2, seq, 0, 0x10, 100, b"", b"x" * n)


def collect(net: Net, addr: bytes) -> list[tuple[float, bytes]]:
    got: list[tuple[float, bytes]] = []
    net.attach(addr, lambda p, t: got.append((t, p)))
    return got


def test_delay_and_fifo():
    net = Net()
    net.link(A, B, delay=0.01)
    got = collect(net, B)
    for i in range(5):
        net.send(pkt(A, B, seq=i))
    net.run(1.0)
    assert [t for t, _ in got] == [pytest.approx(0.01)] * 5
    assert [int.from_bytes(p[24:28], "big") for _, p in got] == list(range(5))
    assert net.now == 1.0


def test_rate_serialises_and_queue_drops():
    net = Net()
    link = net.link(A, B, delay=0.0, rate=8e6, queue=3000)   # 1 byte per microsecond
    got = collect(net, B)
    p = pkt(A, B, n=960)                                     # 1000 bytes on the wire
    for _ in range(5):
        net.send(p)
    net.run(1.0)
    assert [round(t, 6) for t, _ in got] == [0.001, 0.002, 0.003]
    assert link.ab.queue_drops == 2


def test_loss_is_seeded_and_roughly_right():
    def run(seed):
        net = Net(seed=seed)
        net.link(A, B, delay=0.001, loss=0.2)
        got = collect(net, B)
        for i in range(2000):
            net.send(pkt(A, B, seq=i))
        net.run(1)
        return [int.from_bytes(p[24:28], "big") for _, p in got]
    a, b = run(5), run(5)
    assert a == b
    assert 1400 < len(a) < 1800


def test_reordering_happens_only_when_asked():
    net = Net(seed=3)
    net.link(A, B, delay=0.01, reorder=0.3)
    got = collect(net, B)
    for i in range(200):
        net.send(pkt(A, B, seq=i))
    net.run(1)
    seqs = [int.from_bytes(p[24:28], "big") for _, p in got]
    assert sorted(seqs) == list(range(200)) and seqs != list(range(200))


def test_routing_by_pair_down_links_and_taps():
    net = Net()
    l1 = net.link(A, B, delay=0.001)
    net.link(C, B, delay=0.002)
    got = collect(net, B)
    collect(net, A)
    tapped = []
    net.taps.append(lambda p, t: tapped.append(ip_addrs(p)))
    net.send(pkt(A, B))
    net.send(pkt(C, B))
    net.send(pkt(A, C))          # no link between A and C
    l1.down = True
    net.send(pkt(A, B))
    net.run(1)
    assert [ip_addrs(p)[0] for _, p in got] == [A, C]
    assert net.unroutable == 1 and l1.ab.lost == 1 and len(tapped) == 4
    l1.down = False
    l1.set(drop=lambda p: True)
    net.send(pkt(B, A))
    net.run(2)
    assert l1.ba.lost == 1


def test_ipv6_and_run_until():
    net = Net()
    net.link(A6, B6, delay=0.5)
    got = collect(net, B6)
    net.send(pkt(A6, B6))
    assert not net.run_until(lambda: bool(got), timeout=0.2)
    assert net.run_until(lambda: bool(got), timeout=1.0)
    assert net.now == pytest.approx(0.5)
    assert ip_addrs(got[0][1]) == (A6, B6)
