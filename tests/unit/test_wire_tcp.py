"""TCP options and header: round trips, Linux-like layout, scapy cross-check."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.all import TCP, raw

from mptcp_bpf.wire import WireError
from mptcp_bpf.wire import mptcp as m
from mptcp_bpf.wire.tcp import (
    ACK, SYN, TcpHeader, emit_tcp_options, flags_str, parse_tcp_options,
)

# machines running the suite are loaded: no per-example deadline or speed health checks
SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]

U32 = st.integers(0, 2**32 - 1)
MPTCP_OPTS = st.sampled_from([
    b"", m.emit(m.MpCapable(1, 0x81)), m.emit(m.Dss(5, True)), m.emit(m.MpJoinSyn(1, 2)),
    m.emit(m.Dss(5, True, 6, True, 7, 8, 9)),
])


@given(st.none() | st.integers(0, 0xFFFF), st.none() | st.integers(0, 14), st.booleans(),
       st.lists(st.tuples(U32, U32), max_size=4), st.none() | st.tuples(U32, U32), MPTCP_OPTS)
@settings(deadline=None, suppress_health_check=SLOW_OK)
def test_options_round_trip(mss, wscale, sack_perm, sack, ts, extra):
    try:
        buf = emit_tcp_options(mss, wscale, sack_perm, sack, ts, extra)
    except WireError:
        return  # more than 40 bytes: refused, as it must be
    assert len(buf) % 4 == 0 and len(buf) <= 40
    o = parse_tcp_options(buf)
    assert (o.mss, o.wscale, o.sack_perm, o.ts) == (mss, wscale, sack_perm, ts)
    assert o.sack == list(sack)
    assert o.mptcp == ([extra] if extra else [])


def test_too_long_refused():
    with pytest.raises(WireError):
        emit_tcp_options(ts=(1, 2), sack=[(1, 2)] * 3, extra=m.emit(m.Dss(1, True)))


def test_linux_syn_layout_matches_scapy():
    mine = emit_tcp_options(mss=1460, wscale=7, sack_perm=True, ts=(5, 0))
    ref = raw(TCP(options=[("MSS", 1460), ("SAckOK", b""), ("Timestamp", (5, 0)), ("NOP", None),
                           ("WScale", 7)]))[20:]
    assert mine == ref


def test_parse_scapy_options():
    t = TCP(options=[("MSS", 1400), ("NOP", None), ("WScale", 2), ("SAckOK", b""),
                     ("SAck", (1, 2, 3, 4)), ("Timestamp", (9, 8)), ("EOL", None)])
    o = parse_tcp_options(raw(t)[20:])
    assert (o.mss, o.wscale, o.sack_perm, o.sack, o.ts) == (1400, 2, True, [(1, 2), (3, 4)], (9, 8))


def test_unknown_option_skipped_and_eol_stops():
    o = parse_tcp_options(bytes([254, 4, 0, 0, 2, 4, 5, 0, 0, 99, 99, 99]))
    assert o.mss == 1280


@pytest.mark.parametrize("buf", [
    b"\x02", b"\x02\x04\x05", b"\x02\x03\x05", b"\x08\x0a" + bytes(7), b"\x05\x02",
    b"\x05\x0b" + bytes(9), b"\x03\x04\x00\x00", b"\x04\x03\x00", b"\xfe\x01", b"\x1e\x00",
    b"\x01" * 41,
])
def test_malformed_options(buf):
    with pytest.raises(WireError):
        parse_tcp_options(buf)


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), U32, U32, st.integers(0, 0xFFF),
       st.integers(0, 0xFFFF), st.binary(max_size=64))
@settings(deadline=None, suppress_health_check=SLOW_OK)
def test_header_round_trip(sp, dp, seq, ack, flags, win, payload):
    h = TcpHeader(sp, dp, seq, ack, flags, win, 0x1234, 0, emit_tcp_options(ts=(1, 2)))
    buf = h.emit(payload)
    h2 = TcpHeader.parse(buf)
    assert h2 == h and buf[h2.header_len:] == payload


def test_header_checksum_matches_scapy():
    from scapy.all import IP
    src, dst = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    h = TcpHeader(1000, 80, 7, 9, SYN | ACK, 500, options=emit_tcp_options(mss=1460))
    seg = h.emit(b"hello", src, dst)
    ref = raw(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1000, dport=80, seq=7, ack=9,
              flags="SA", window=500, options=[("MSS", 1460)]) / b"hello")[20:]
    assert seg == ref


def test_header_errors():
    with pytest.raises(WireError):
        TcpHeader.parse(bytes(19))
    with pytest.raises(WireError):
        TcpHeader.parse(bytes(12) + b"\x40" + bytes(7))   # data offset 16
    with pytest.raises(WireError):
        TcpHeader(1, 2, 3, 4, 0, 5, options=b"\x01").emit()
    with pytest.raises(WireError):
        TcpHeader(70000, 2, 3, 4, 0, 5).emit()


def test_flags_str():
    assert flags_str(SYN | ACK) == "S." and flags_str(0) == "none"
