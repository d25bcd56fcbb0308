"""Checksum arithmetic: the big-int sum against a word-by-word reference, partial sums
combined across odd-length segments, pseudo-headers and the DSS checksum (8684 §3.3.1)."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mptcp_bpf.wire import WireError
from mptcp_bpf.wire.checksum import (
    csum_add, csum_block_add, csum_finish, csum_partial, csum_shift, dss_checksum,
    dss_checksum_ok, pseudo_header_sum,
)

# machines running the suite are loaded: no per-example deadline or speed health checks
SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]


def ref_sum(data: bytes) -> int:
    """RFC 1071 word-by-word ones'-complement sum with end-around carry."""
    if len(data) & 1:
        data += b"\0"
    s = 0
    for (w,) in struct.iter_unpack("!H", data):
        s += w
        s = (s & 0xFFFF) + (s >> 16)
    return s


@given(st.binary(max_size=3000))
@settings(deadline=None, suppress_health_check=SLOW_OK)
def test_csum_partial_matches_reference(data):
    assert csum_partial(data) == ref_sum(data)
    assert csum_partial(memoryview(data)) == ref_sum(data)
    assert csum_partial(bytearray(data)) == ref_sum(data)


def test_all_ones_and_zero():
    assert csum_partial(b"") == 0
    assert csum_partial(b"\0" * 10) == 0
    assert csum_partial(b"\xff\xff") == 0xFFFF
    assert csum_partial(b"\xff\xff" * 7) == 0xFFFF
    assert csum_partial(b"\x00\x01\xff\xfe") == 0xFFFF  # sums to a multiple of 0xffff
    assert csum_finish(0xFFFF) == 0 and csum_finish(0) == 0xFFFF


@given(st.binary(max_size=400), st.integers(0, 0xFFFF))
@settings(deadline=None, suppress_health_check=SLOW_OK)
def test_initial_is_added(data, initial):
    assert csum_partial(data, initial) == csum_add(ref_sum(data), initial)


@given(st.binary(min_size=1, max_size=3000), st.lists(st.integers(0, 3000), max_size=8))
@settings(deadline=None, suppress_health_check=SLOW_OK)
def test_partial_sums_across_segments_combine(data, cuts):
    cuts = sorted({c % len(data) for c in cuts} | {0, len(data)})
    total = 0
    for a, b in zip(cuts, cuts[1:]):
        total = csum_block_add(total, csum_partial(data[a:b]), a)
    assert total == csum_partial(data)


def test_odd_segments_explicitly():
    rnd = random.Random(7)
    data = rnd.randbytes(1461 + 777 + 3)
    parts = [data[:1461], data[1461:1461 + 777], data[1461 + 777:]]
    s, off = 0, 0
    for p in parts:
        ps = csum_partial(p)
        s = csum_add(s, csum_shift(ps) if off & 1 else ps)
        off += len(p)
    assert s == csum_partial(data)


def test_pseudo_header_v4_v6():
    src4, dst4 = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    assert pseudo_header_sum(src4, dst4, 6, 40) == ref_sum(src4 + dst4 + bytes([0, 6]) + struct.pack("!H", 40))
    src6, dst6 = bytes(range(16)), bytes(range(100, 116))
    ph = src6 + dst6 + struct.pack("!I", 70000) + bytes(3) + bytes([6])
    assert pseudo_header_sum(src6, dst6, 6, 70000) == ref_sum(ph)
    with pytest.raises(WireError):
        pseudo_header_sum(src4, dst6, 6, 1)


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1), st.binary(max_size=2000))
@settings(deadline=None, suppress_health_check=SLOW_OK, max_examples=200)
def test_dss_checksum_whole(dsn, ssn, payload):
    length = len(payload)
    c = dss_checksum(dsn, ssn, length, csum_partial(payload))
    ph = struct.pack("!QIHH", dsn, ssn, length, c)
    assert ref_sum(ph + payload) == 0xFFFF  # the checksum makes the whole sum all-ones
    assert dss_checksum_ok(dsn, ssn, length, csum_partial(payload), c)
    assert not dss_checksum_ok(dsn ^ 1, ssn, length, csum_partial(payload), c)


@given(st.binary(min_size=2, max_size=3000), st.data())
@settings(deadline=None, suppress_health_check=SLOW_OK, max_examples=200)
def test_dss_checksum_from_segment_sums(payload, data):
    """A mapping spread over several segments: per-segment sums combine (odd lengths too)."""
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(payload) - 1), max_size=5))))
    bounds = [0] + cuts + [len(payload)]
    s = 0
    for a, b in zip(bounds, bounds[1:]):
        s = csum_block_add(s, csum_partial(payload[a:b]), a)
    whole = dss_checksum(1 << 40, 1, len(payload), csum_partial(payload))
    assert dss_checksum(1 << 40, 1, len(payload), s) == whole
    assert dss_checksum_ok(1 << 40, 1, len(payload), s, whole)


def test_dss_checksum_corruption_detected():
    rnd = random.Random(1)
    payload = bytearray(rnd.randbytes(1001))
    c = dss_checksum(5, 1, 1001, csum_partial(payload))
    payload[500] ^= 0x10
    assert not dss_checksum_ok(5, 1, 1001, csum_partial(payload), c)
