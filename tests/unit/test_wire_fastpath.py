"""The fast paths of the packet hot path equal their reference forms.

TcpBuilder == build_tcp_packet byte for byte; the IPv4 single-unpack parse == the fields
the packet was built from; csum_partial (fold before modulo) == a word-by-word RFC 1071 sum.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mptcp_bpf.wire.checksum import csum_partial
from mptcp_bpf.wire.errors import WireError
from mptcp_bpf.wire.packet import (TX_CSUM_PARTIAL, TcpBuilder, build_tcp_packet, parse_ip_packet,
                                   segment_sum, tcp_checksum_ok)


def ref_sum(data: bytes) -> int:
    """RFC 1071 word by word, folded, not complemented (0xffff for a non-zero multiple)."""
    if len(data) & 1:
        data += b"\0"
    s = 0
    for i in range(0, len(data), 2):
        s += data[i] << 8 | data[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return s


u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
addr4 = st.binary(min_size=4, max_size=4)
addr6 = st.binary(min_size=16, max_size=16)
opts = st.integers(0, 10).flatmap(lambda n: st.binary(min_size=4 * n, max_size=4 * n))


@settings(max_examples=300, deadline=None)
@given(v6=st.booleans(), a4=addr4, b4=addr4, a6=addr6, b6=addr6, sport=u16, dport=u16,
       seq=u32, ack=u32, flags=st.integers(0, 0x1FF), window=u16, options=opts,
       payload=st.one_of(st.binary(max_size=300), st.integers(0, 1500).map(os.urandom)),
       tos=st.integers(0, 255), ttl=st.integers(0, 255), csum=st.booleans())
def test_builder_equals_build_tcp_packet(v6, a4, b4, a6, b6, sport, dport, seq, ack, flags,
                                         window, options, payload, tos, ttl, csum):
    src, dst = (a6, b6) if v6 else (a4, b4)
    want = build_tcp_packet(src, dst, sport, dport, seq, ack, flags, window, options, payload,
                            tos, ttl, csum)
    tb = TcpBuilder(src, dst, sport, dport, tos, ttl)
    got = tb.build(seq, ack, flags, window, options, memoryview(payload), csum)
    assert got == want
    p = parse_ip_packet(got)
    assert (p.src, p.dst, p.sport, p.dport, p.seq, p.ack, p.flags, p.window, p.tos, p.ttl) == \
        (src, dst, sport, dport, seq, ack, flags, window, tos, ttl)
    assert p.options == options and bytes(p.payload) == payload
    assert tcp_checksum_ok(p) == csum or (not csum and segment_sum(src, dst, p.segment) == 0xFFFF)


def test_builder_rejects_bad_input():
    with pytest.raises(WireError):
        TcpBuilder(bytes(4), bytes(16), 1, 2)
    with pytest.raises(WireError):
        TcpBuilder(bytes(4), bytes(4), 70000, 2)
    tb = TcpBuilder(bytes(4), bytes(4), 1, 2)
    with pytest.raises(WireError):
        tb.build(0, 0, 0x10, 0, b"\x01" * 3, b"")
    with pytest.raises(WireError):
        tb.build(1 << 32, 0, 0x10, 0, b"", b"")
    with pytest.raises(WireError):
        tb.build(0, 0, 0x10, 0, b"", bytes(70000))


@settings(max_examples=300, deadline=None)
@given(data=st.one_of(st.binary(max_size=600), st.integers(0, 4000).map(os.urandom),
                      st.integers(0, 3000).map(lambda n: b"\xff" * n)))
def test_csum_partial_matches_rfc1071(data):
    assert csum_partial(data) == ref_sum(data)


def test_ipv4_fast_parse_falls_back_for_the_odd_cases():
    pkt = bytearray(build_tcp_packet(bytes(4), b"\x0a\0\0\x02", 1, 2, 3, 4, 0x10, 5, b"",
                                     b"xy"))
    frag = bytearray(pkt)
    frag[6] = 0x20                                   # more fragments
    with pytest.raises(WireError):
        parse_ip_packet(bytes(frag))
    udp = bytearray(pkt)
    udp[9] = 17
    with pytest.raises(WireError):
        parse_ip_packet(bytes(udp))
    bad = bytearray(pkt)
    bad[32] = 0xF0                                   # data offset 60 > segment
    with pytest.raises(WireError):
        parse_ip_packet(bytes(bad))
    short = bytearray(pkt)
    short[2:4] = (30).to_bytes(2, "big")             # total length cuts the TCP header
    with pytest.raises(WireError):
        parse_ip_packet(bytes(short))
    p = parse_ip_packet(bytes(pkt) + b"trailer")     # bytes after the IP length ignored
    assert bytes(p.payload) == b"xy"


def _finish_partial(pkt: bytes, l4: int) -> bytes:
    """What the kernel does for CHECKSUM_PARTIAL: sum from l4 to the end, complement."""
    seg = pkt[l4:]
    s = int.from_bytes(seg + (b"\0" if len(seg) & 1 else b""), "big") % 0xFFFF
    c = ~s & 0xFFFF if s else 0xFFFF
    return pkt[:l4 + 16] + c.to_bytes(2, "big") + pkt[l4 + 18:]


@settings(max_examples=200, deadline=None)
@given(v6=st.booleans(), a4=addr4, b4=addr4, a6=addr6, b6=addr6, sport=u16, dport=u16,
       seq=u32, ack=u32, options=opts, payload=st.integers(0, 1500).map(os.urandom))
def test_partial_checksum_finishes_to_a_valid_one(v6, a4, b4, a6, b6, sport, dport, seq, ack,
                                                  options, payload):
    src, dst = (a6, b6) if v6 else (a4, b4)
    part = build_tcp_packet(src, dst, sport, dport, seq, ack, 0x18, 9, options, payload,
                            csum=TX_CSUM_PARTIAL)
    tb = TcpBuilder(src, dst, sport, dport)
    assert tb.build(seq, ack, 0x18, 9, options, payload, TX_CSUM_PARTIAL) == part
    done = _finish_partial(part, 40 if v6 else 20)
    assert tcp_checksum_ok(parse_ip_packet(done))
