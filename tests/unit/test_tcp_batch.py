"""Receive batching: PlainHost.input_batch ACKs in-order data once per batch
(Subflow.defer_ack / flush_ack), and the transfer stays intact, with loss too."""

from __future__ import annotations

import hashlib
import random

import pytest

from mptcp_bpf.tcp.common import SubflowConfig
from mptcp_bpf.tcp.netsim import Net
from mptcp_bpf.tcp.plain import PlainHost

A = bytes([10, 0, 0, 1])
B = bytes([10, 0, 0, 2])


def run(batch: bool, loss: float, size: int = 600_000, seed: int = 3,
        reorder: float = 0.0) -> tuple[bytes, bytes, int, int]:
    net = Net(seed=seed)
    # rate None: bursts arrive together
    net.link(A, B, delay=0.005, rate=None, loss=loss, reorder=reorder)
    cfg = SubflowConfig(time_wait=0.1)
    a = PlainHost([A], net.timers, net.send, cfg, random.Random(seed))
    b = PlainHost([B], net.timers, net.send, cfg, random.Random(seed + 1))
    acks = [0]
    buf: list[bytes] = []

    def flush(now: float) -> None:
        pkts = buf[:]
        buf.clear()
        b.input_batch(pkts, now)

    def to_b(pkt: bytes, now: float) -> None:
        if not batch:
            b.input(pkt, now)
            return
        buf.append(pkt)
        if len(buf) == 1:
            net.call_at(now, flush)     # after the other packets due at this instant

    def to_a(pkt: bytes, now: float) -> None:
        acks[0] += 1
        a.input(pkt, now)

    net.attach(A, to_a)
    net.attach(B, to_b)
    got = bytearray()
    server = []
    b.listen(80, server.append)
    c = a.connect(A, (B, 80), 0.0)
    data = random.Random(seed).randbytes(size)
    sent = [0]

    def pump() -> bool:
        if c.established and sent[0] < size and c.writable():
            n = min(65536, size - sent[0])
            c.send(data[sent[0]:sent[0] + n], net.now)
            sent[0] += n
        if server:
            got.extend(server[0].recv(1 << 20, net.now))
        return len(got) >= size

    assert net.run_until(pump, 120.0)
    sf = server[0].sf
    return data, bytes(got), acks[0], sf.data_segs_in


@pytest.mark.parametrize("loss", [0.0, 0.02])
def test_batched_receive_is_intact(loss):
    data, got, acks, segs = run(True, loss)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert segs > 0 and acks > 0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_batched_receive_with_loss_and_reordering(seed):
    data, got, _, _ = run(True, 0.03, size=300_000, seed=seed, reorder=0.05)
    assert got == data


def test_batching_sends_fewer_acks():
    _, got1, acks_plain, segs1 = run(False, 0.0)
    _, got2, acks_batch, segs2 = run(True, 0.0)
    assert got1 == got2
    # about every 2nd segment vs about once per arrival burst (160 vs 21 when written)
    assert acks_batch * 3 < acks_plain


def test_without_owner_batch_acks_as_before():
    """defer_ack returns False outside a batch: the subflow ACKs every 2nd segment."""
    net = Net(seed=1)
    net.link(A, B, delay=0.005)
    a = PlainHost([A], net.timers, net.send, rng=random.Random(1))
    b = PlainHost([B], net.timers, net.send, rng=random.Random(2))
    out = []
    net.attach(A, lambda p, t: (out.append(p), a.input(p, t)))
    net.attach(B, b.input)
    srv = []
    b.listen(80, srv.append)
    c = a.connect(A, (B, 80), 0.0)
    assert net.run_until(lambda: bool(srv) and c.established, 5)
    n0 = len(out)
    c.send(bytes(14000), net.now)
    net.run(net.now + 0.03)          # before the 40 ms delayed-ACK timer
    assert len(out) - n0 >= 4        # ~10 segments: an ACK per two
