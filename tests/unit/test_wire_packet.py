"""Packets and frames: the hot-path parse/build against scapy, IPv4 options, IPv6 extension
headers, VLAN tags, and the header classes of wire.ip / wire.ether."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scapy.all import (
    IP, TCP, UDP, Dot1AD, Dot1Q, Ether, IPOption_RR, IPv6, IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, NoPayload, Raw, raw,
)

from mptcp_bpf.wire import WireError
from mptcp_bpf.wire import mptcp as m
from mptcp_bpf.wire.ether import EtherHeader, mac_bytes, mac_str
from mptcp_bpf.wire.ip import Ipv4Header, Ipv6Header, walk_ipv6_ext
from mptcp_bpf.wire.packet import (
    build_frame, build_tcp_packet, parse_frame, parse_ip_packet, tcp_checksum_ok,
)
from mptcp_bpf.wire.tcp import ACK, PSH, emit_tcp_options, parse_tcp_options

# machines running the suite are loaded: no per-example deadline or speed health checks
SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]

V4 = st.binary(min_size=4, max_size=4)
V6 = st.binary(min_size=16, max_size=16)
U16, U32 = st.integers(0, 0xFFFF), st.integers(0, 2**32 - 1)


def _scapy_tcp(p: bytes):
    s = IP(p) if p[0] >> 4 == 4 else IPv6(p)
    return s, s[TCP]


@given(st.one_of(st.tuples(V4, V4), st.tuples(V6, V6)), U16, U16, U32, U32,
       st.integers(0, 0x1FF), U16, st.binary(max_size=1500), st.integers(0, 255), st.integers(1, 255))
@settings(deadline=None, suppress_health_check=SLOW_OK, max_examples=150)
def test_build_parse_against_scapy(addrs, sp, dp, seq, ack, flags, win, payload, tos, ttl):
    src, dst = addrs
    opts = emit_tcp_options(ts=(1, 2), extra=m.emit(m.Dss(seq, True, ack, True, 1, len(payload), 7)))
    pkt = build_tcp_packet(src, dst, sp, dp, seq, ack, flags, win, opts, payload, tos, ttl)
    s, t = _scapy_tcp(pkt)
    # on ports scapy binds a dissector to (135: DCE/RPC, ...) it may re-encode our payload as
    # that protocol: such a comparison would test scapy, not us
    assume(isinstance(t.payload, (Raw, NoPayload)))
    assert (t.sport, t.dport, t.seq, t.ack, t.window, int(t.flags)) == (sp, dp, seq, ack, win, flags)
    assert bytes(t.payload) == payload
    # scapy recomputes both checksums: they must agree with ours
    s2 = s.copy()
    del s2[TCP].chksum
    if IP in s2:
        del s2[IP].chksum
        assert s.tos == tos and s.ttl == ttl
    else:
        assert s.tc == tos and s.hlim == ttl
    assert raw(s2.__class__(raw(s2))) == pkt
    p = parse_ip_packet(pkt)
    assert (p.family, p.src, p.dst, p.sport, p.dport, p.seq, p.ack, p.flags, p.window) == (
        4 if len(src) == 4 else 6, src, dst, sp, dp, seq, ack, flags, win)
    assert p.options == opts and bytes(p.payload) == payload and (p.tos, p.ttl) == (tos, ttl)
    assert tcp_checksum_ok(p)
    f = parse_frame(build_frame(b"\x02" * 6, b"\x04" * 6, pkt))
    assert f.seq == seq and bytes(f.payload) == payload


def test_corrupted_checksum_detected():
    pkt = bytearray(build_tcp_packet(bytes(4), bytes([1, 2, 3, 4]), 1, 2, 3, 4, ACK, 5, b"", b"abc"))
    pkt[-1] ^= 1
    assert not tcp_checksum_ok(parse_ip_packet(pkt))


def test_ipv4_options_and_trailing_padding():
    s = IP(src="10.0.0.1", dst="10.0.0.2", options=[IPOption_RR(routers=["1.1.1.1"])]) / TCP(
        sport=1, dport=2, flags="PA", options=[("NOP", None), ("NOP", None), ("Timestamp", (3, 4))]) / b"xy"
    buf = raw(s) + b"\0" * 6  # Ethernet padding after the IP packet is ignored
    p = parse_ip_packet(buf)
    assert bytes(p.payload) == b"xy" and p.flags == PSH | ACK and tcp_checksum_ok(p)
    assert parse_tcp_options(p.options).ts == (3, 4)
    h = Ipv4Header.parse(buf)
    assert h.options and h.header_len == IP(raw(s)).ihl * 4 and h.checksum_ok()
    assert h.emit(raw(s)[h.header_len:]) == raw(s)


@pytest.mark.parametrize("ext", [
    IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt(), IPv6ExtHdrRouting(addresses=["2001:db8::9"], segleft=0),  # at its final hop
    IPv6ExtHdrFragment(offset=0, m=0, id=77),  # atomic fragment
    IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting() / IPv6ExtHdrDestOpt(),
])
def test_ipv6_extension_headers(ext):
    s = IPv6(src="2001:db8::1", dst="2001:db8::2") / ext / TCP(sport=5, dport=6, seq=9) / b"data!"
    p = parse_ip_packet(raw(s))
    assert (p.sport, p.dport, p.seq, bytes(p.payload)) == (5, 6, 9, b"data!")
    assert tcp_checksum_ok(p)
    w = walk_ipv6_ext(raw(s), raw(s)[6])
    assert w.proto == 6


def test_fragments_and_non_tcp_refused():
    frag6 = IPv6(src="::1", dst="::2") / IPv6ExtHdrFragment(offset=0, m=1, id=77) / TCP()
    frag4 = IP(src="1.1.1.1", dst="2.2.2.2", flags="MF") / TCP()
    later4 = IP(src="1.1.1.1", dst="2.2.2.2", frag=10) / TCP()
    for s in (frag6, frag4, later4, IP() / UDP(), IPv6() / UDP()):
        with pytest.raises(WireError):
            parse_ip_packet(raw(s))
    assert walk_ipv6_ext(raw(frag6), 44).frag == (0, True, 77)


def test_vlan_frames():
    inner = IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=7, dport=8) / b"q"
    for f in (Ether() / Dot1Q(vlan=5) / inner, Ether() / Dot1AD(vlan=6) / Dot1Q(vlan=7) / inner):
        p = parse_frame(raw(f))
        assert (p.sport, p.dport, bytes(p.payload)) == (7, 8, b"q")
        h = EtherHeader.parse(raw(f))
        assert h.ethertype == 0x0800 and h.vlan in (5, 6)
        assert h.emit(raw(f)[h.header_len:]) == raw(f)
    three = Ether() / Dot1AD(vlan=1) / Dot1Q(vlan=2) / Dot1Q(vlan=3) / inner
    with pytest.raises(WireError):
        parse_frame(raw(three))
    with pytest.raises(WireError):
        EtherHeader.parse(raw(three))
    with pytest.raises(WireError):  # ethertype says IPv6, packet is IPv4
        parse_frame(raw(Ether(type=0x86DD) / inner))


def test_header_classes_round_trip():
    h4 = Ipv4Header(bytes([1, 2, 3, 4]), bytes([5, 6, 7, 8]), ttl=9, tos=3, ident=77, options=b"\x01" * 4)
    b = h4.emit(b"payload")
    assert raw(IP(b)) == b and Ipv4Header.parse(b).checksum_ok()
    h6 = Ipv6Header(bytes(range(16)), bytes(range(16, 32)), 6, 33, 5, 0x12345)
    b6 = h6.emit(b"xyz")
    p6 = Ipv6Header.parse(b6)
    assert (p6.tclass, p6.flow, p6.hop_limit, p6.payload_length) == (5, 0x12345, 33, 3)
    assert IPv6(b6).fl == 0x12345
    e = EtherHeader(mac_bytes("02:00:00:00:00:01"), b"\x02" * 6, 0x86DD, ((0x8100, 0x2005),))
    assert EtherHeader.parse(e.emit(b"")) == e and mac_str(e.dst) == "02:00:00:00:00:01"


def test_header_class_errors():
    for bad in (lambda: Ipv4Header.parse(bytes(19)), lambda: Ipv4Header.parse(b"\x65" + bytes(19)),
                lambda: Ipv4Header.parse(b"\x46" + bytes(19)), lambda: Ipv6Header.parse(bytes(40)),
                lambda: Ipv4Header(b"\x01", bytes(4)).emit(), lambda: Ipv6Header(bytes(4), bytes(4)).emit(),
                lambda: EtherHeader.parse(bytes(13)), lambda: mac_bytes("zz"),
                lambda: EtherHeader(bytes(5), bytes(6)).emit(), lambda: walk_ipv6_ext(bytes(40), 0, 40),
                lambda: build_tcp_packet(bytes(4), bytes(16), 1, 2, 3, 4, 0, 0, b"", b""),
                lambda: build_tcp_packet(bytes(4), bytes(4), 1, 2, 3, 4, 0, 0, b"\x01", b""),
                lambda: build_tcp_packet(bytes(4), bytes(4), 70000, 2, 3, 4, 0, 0, b"", b""),
                lambda: build_frame(bytes(6), bytes(6), b"\x50" + bytes(30))):
        with pytest.raises(WireError):
            bad()


def test_addresses_are_bytes():
    p = parse_ip_packet(build_tcp_packet(ipaddress.ip_address("10.1.2.3").packed,
                                         ipaddress.ip_address("10.1.2.4").packed, 1, 2, 3, 4, 0, 0, b"", b""))
    assert isinstance(p.src, bytes) and ipaddress.ip_address(p.dst) == ipaddress.ip_address("10.1.2.4")
