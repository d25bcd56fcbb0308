"""wire.gro.coalesce: which runs of segments merge (Linux's tcp_gro_receive rule) and what
the merged segment carries."""

from __future__ import annotations

import functools
import random

import pytest

from mptcp_bpf.wire.checksum import csum_partial
from mptcp_bpf.wire.gro import MAX_MERGED, SumMeta, coalesce
from mptcp_bpf.wire.packet import TcpBuilder, parse_ip_packet

A, B = bytes([10, 0, 1, 1]), bytes([10, 0, 1, 2])
A6, B6 = bytes(15) + b"\x01", bytes(15) + b"\x02"
ACK, PSH, FIN, SYN = 0x10, 0x08, 0x01, 0x02
OPTS = b"\x01\x01\x08\x0a" + bytes(8) + b"\x1e\x0c\x20\x03" + bytes(8)   # TS + DSS ack


def _seg(seq, payload, flags=ACK, opts=OPTS, ack=7, window=500, sport=1000, tos=0, v6=False):
    tb = TcpBuilder(A6, B6, sport, 80, tos) if v6 else TcpBuilder(A, B, sport, 80, tos)
    return tb.build(seq & 0xFFFFFFFF, ack, flags, window, opts, payload)


def _stream(sizes, seq=0xFFFFF000, **kw):
    """Consecutive segments (the sequence space wraps inside) and their payloads."""
    rnd = random.Random(len(sizes))
    out = []
    for n in sizes:
        data = rnd.randbytes(n)
        out.append((_seg(seq, data, **kw), SumMeta(csum_partial(data))))
        seq += n
    return out


@pytest.mark.parametrize("v6", [False, True])
def test_a_run_becomes_one_segment_with_the_joined_payload_and_sum(v6):
    items = _stream([1400, 1401, 7, 1400, 999], v6=v6)   # odd lengths: sums shift
    out = coalesce(items, lambda m, n: m.payload_sum)
    assert len(out) == 1
    p, meta, k = out[0]
    want = b"".join(bytes(parse_ip_packet(q).payload) for q, _ in items)
    assert k == 5 and bytes(p.payload) == want
    assert p.seq == 0xFFFFF000 and p.flags == ACK and p.options == OPTS
    assert p.family == (6 if v6 else 4) and p.src == (A6 if v6 else A)
    assert meta.payload_sum == csum_partial(want)


def test_without_every_piece_sum_the_merged_meta_is_none():
    items = _stream([100, 200, 300])
    items[1] = (items[1][0], None)
    (p, meta, k), = coalesce(items, lambda m, n: m.payload_sum)
    assert k == 3 and meta is None
    (p, meta, k), = coalesce(_stream([100, 200]))
    assert k == 2 and meta is None


@pytest.mark.parametrize("v6", [False, True])
def test_runs_break_where_the_gro_rule_says(v6):
    base = _stream([100, 100], v6=v6)
    s2 = parse_ip_packet(base[1][0]).seq + 100
    seg = functools.partial(_seg, v6=v6)
    cases = {
        "options": seg(s2, b"x" * 50, opts=OPTS[:-8] + bytes([1] * 8)),
        "gap": seg(s2 + 1, b"x" * 50),
        "ack": seg(s2, b"x" * 50, ack=8),
        "window": seg(s2, b"x" * 50, window=501),
        "flow": seg(s2, b"x" * 50, sport=1001),
        "tos": seg(s2, b"x" * 50, tos=1),
        "family": _seg(s2, b"x" * 50, v6=not v6),
        "fin": seg(s2, b"x" * 50, flags=ACK | FIN),
        "pure ack": seg(s2, b""),
    }
    for why, q in cases.items():
        out = coalesce(base + [(q, None)])
        assert [k for _, _, k in out] == [2, 1], why
    # PSH is allowed on the last segment of a run and ends it
    psh = seg(s2, b"x" * 50, flags=ACK | PSH)
    after = seg(s2 + 50, b"y" * 50)
    out = coalesce(base + [(psh, None), (after, None)])
    assert [k for _, _, k in out] == [3, 1] and out[0][0].flags == ACK | PSH
    # a segment with PSH (or SYN) never starts a run
    out = coalesce([(psh, None), (after, None)])
    assert [k for _, _, k in out] == [1, 1]


def test_merged_size_is_bounded_and_order_is_kept():
    items = _stream([1400] * 100)
    out = coalesce(items)
    assert sum(k for _, _, k in out) == 100 and len(out) > 1
    assert all(len(p.payload) <= MAX_MERGED for p, _, _ in out)
    joined = b"".join(bytes(p.payload) for p, _, _ in out)
    assert joined == b"".join(bytes(parse_ip_packet(q).payload) for q, _ in items)


def test_bad_packets_are_reported_and_memoryviews_merge():
    bad = []
    items = [(memoryview(q), m) for q, m in _stream([300, 301, 302])]
    out = coalesce([(b"\x45junk", None)] + items + [(b"", None)], on_bad=bad.append)
    assert bad == [b"\x45junk", b""] and [k for _, _, k in out] == [3]
    # a truncated follower (IP total length beyond the buffer) is not merged
    q = _seg(0xFFFFF000 + 903, b"z" * 40)
    out = coalesce(items + [(q[:-10], None)], on_bad=bad.append)
    assert [k for _, _, k in out] == [3] and len(bad) == 3
