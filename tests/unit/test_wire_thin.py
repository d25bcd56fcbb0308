"""wire.gro.thin_acks (ACK thinning in the receive batch) on synthetic batches, and
Host.input_batch on a sender whose ACKs arrive in batches: superseded pure cumulative ACKs
go, duplicate ACKs, SACKs, data, FIN/RST and ACKs with other MPTCP options stay."""

from __future__ import annotations

import random

import pytest

from mptcp_bpf.wire.gro import thin_acks
from mptcp_bpf.wire.packet import TcpBuilder, parse_ip_packet

A, B = bytes([10, 0, 1, 1]), bytes([10, 0, 1, 2])
A6, B6 = bytes(15) + b"\x01", bytes(15) + b"\x02"
ACK, PSH, FIN, RST = 0x10, 0x08, 0x01, 0x04
TS = b"\x01\x01\x08\x0a" + bytes(8)
DACK = b"\x1e\x08\x20\x01" + bytes(4)                 # DSS: data ACK only (4 bytes)
DACK8 = b"\x1e\x0c\x20\x03" + bytes(8)                # DSS: data ACK only (8 bytes)
DMAP = b"\x1e\x10\x20\x05" + bytes(12)                # DSS: data ACK + mapping
DFIN = b"\x1e\x08\x20\x11" + bytes(4)                 # DSS: data ACK + DATA_FIN
PRIO = b"\x1e\x03\x50\x01"                            # MP_PRIO
SACK = b"\x01\x01\x05\x0a" + bytes(8)                 # one SACK block


def _ack(ack, opts=TS + DACK8, flags=ACK, payload=b"", sport=1000, window=500, v6=False):
    tb = TcpBuilder(A6, B6, sport, 80, 0) if v6 else TcpBuilder(A, B, sport, 80, 0)
    return tb.build(7, ack & 0xFFFFFFFF, flags, window, opts, payload)


def _acks(items):
    return [parse_ip_packet(p).ack for p in items]


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("opts", [TS + DACK8, TS + DACK, TS, b""])
def test_a_run_keeps_its_first_and_last_ack(v6, opts):
    batch = [_ack(a, opts=opts, v6=v6) for a in (100, 200, 300, 400, 500)]
    kept, n = thin_acks(batch)
    assert n == 3 and _acks(kept) == [100, 500]


def test_ack_numbers_wrap():
    acks = [0xFFFFFF00, 0xFFFFFFF0, 0x10, 0x200]
    kept, n = thin_acks([_ack(a) for a in acks])
    assert n == 2 and _acks(kept) == [0xFFFFFF00, 0x200]


def test_duplicate_acks_are_kept():
    # RFC 5681 §2: repeats of an ACK number (possible duplicate ACKs) are never dropped,
    # nor the ACK they repeat, nor an ACK right after a repeat
    for acks in ([100, 100, 100, 200], [100, 200, 200, 300], [100, 100, 100, 100, 100],
                 [300, 200, 100, 50]):
        kept, n = thin_acks([_ack(a) for a in acks])
        assert n == 0 and _acks(kept) == acks, acks


def test_acks_that_carry_more_than_a_cumulative_ack_are_kept():
    for odd in (dict(opts=TS + SACK + DACK8), dict(opts=TS + DMAP), dict(opts=TS + DFIN),
                dict(opts=TS + DACK8 + PRIO), dict(flags=ACK | FIN), dict(flags=ACK | PSH),
                dict(flags=RST | ACK), dict(payload=b"x" * 100)):
        batch = [_ack(100), _ack(200), _ack(300, **odd), _ack(400), _ack(500)]
        kept, n = thin_acks(batch)
        assert len(kept) == 5 - n and batch[2] in kept, odd
        # the odd packet also ends the run: 200 stays (nothing later supersedes it in
        # the run), 400 is the first of the next run
        assert n == 0, odd


def test_window_changes_do_not_matter_the_later_ack_carries_the_newest():
    batch = [_ack(a, window=w) for a, w in ((100, 10), (200, 0), (300, 20), (400, 30))]
    kept, n = thin_acks(batch)
    assert n == 2 and _acks(kept) == [100, 400]


def test_flows_are_thinned_apart_and_order_and_metas_are_kept():
    batch = []
    for i in range(5):
        batch.append((_ack(100 * (i + 1), sport=1000), ("a", i)))
        batch.append((_ack(1000 * (i + 1), sport=1001, v6=True), ("b", i)))
    kept, n = thin_acks(batch)
    assert n == 6
    assert [m for _, m in kept] == [("a", 0), ("b", 0), ("a", 4), ("b", 4)]


def test_small_and_odd_batches():
    one = [_ack(1)]
    assert thin_acks(one) == (one, 0)
    batch = [b"", b"\x45" * 3, _ack(1), b"\x60garbage", _ack(2), _ack(3), memoryview(_ack(4))]
    kept, n = thin_acks(batch)
    assert n == 2 and kept[:4] == batch[:4]


def _sender_batched(loss: float = 0.0, reorder: float = 0.0, seed: int = 1, cc: str = "reno"
                    ) -> tuple[bool, dict, dict]:
    """1.5 MB client -> server over two paths; the client's (sender's) packets are handed
    over every 2 ms as one input_batch. Returns (intact, client stats, subflow info)."""
    from tests.unit.test_mptcp_netsim import Pair, ip
    p = Pair(paths=2, loss=loss, reorder=reorder, seed=seed, client_cfg={"cc": cc})
    q: list = []

    def tick(now):
        items, q[:] = list(q), []
        p.a.input_batch(items, now)
        p.net.call_at(now + 0.002, tick)

    for x in p.a_addrs:
        p.net.attach(ip(x), lambda pkt, now: q.append(bytes(pkt)))
    p.net.call_at(p.net.now + 0.002, tick)
    p.connect()
    data = random.Random(seed).randbytes(1_500_000)
    got_s, _ = p.transfer(data)
    return got_s == data, dict(p.a.stats), {}


def test_sender_with_thinned_acks_delivers_intact():
    ok, stats, _ = _sender_batched()
    assert ok and stats.get("rx_acks_thinned", 0) > 0, stats


@pytest.mark.parametrize("seed", [3, 5])
def test_sender_with_thinned_acks_under_loss_and_reordering(seed):
    ok, stats, _ = _sender_batched(loss=0.02, reorder=0.02, seed=seed)
    assert ok and stats.get("rx_acks_thinned", 0) > 0, stats
