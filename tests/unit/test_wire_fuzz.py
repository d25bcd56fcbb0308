"""Malformed and truncated input raises WireError and nothing else (>= 100k inputs).

Inputs: random bytes, every truncation and random bit flips of valid MPTCP options, TCP
option blocks, IPv4/IPv6 packets (with options and extension headers) and Ethernet frames.
Deterministic seeds, so a failure reproduces.
"""

from __future__ import annotations

import ipaddress
import random

from mptcp_bpf.wire import WireError
from mptcp_bpf.wire import mptcp as m
from mptcp_bpf.wire.ether import EtherHeader
from mptcp_bpf.wire.ip import Ipv4Header, Ipv6Header, walk_ipv6_ext
from mptcp_bpf.wire.packet import build_frame, build_tcp_packet, parse_frame, parse_ip_packet
from mptcp_bpf.wire.tcp import TcpHeader, emit_tcp_options, parse_tcp_options

V4 = ipaddress.ip_address("10.1.2.3")
V6 = ipaddress.ip_address("2001:db8::7")

VALID_OPTIONS = [m.emit(s) for s in (
    m.MpCapable(1, 0x81), m.MpCapable(0, 0x81, 1), m.MpCapable(1, 0xA1, 1, 2),
    m.MpCapable(1, 0x81, 1, 2, 3), m.MpCapable(1, 0x81, 1, 2, 3, 4),
    m.MpJoinSyn(1, 2, 3, True), m.MpJoinSynAck(1, 2, 3), m.MpJoinAck(bytes(range(20))),
    m.Dss(1), m.Dss(1, False), m.Dss(1, True, 2, True, 3, 4, 5, True), m.Dss(None, True, 2, False, 3, 4),
    m.AddAddr(1, V4, None, 9), m.AddAddr(1, V6, 80, 9), m.AddAddr(2, V4, 8080, None, True),
    m.AddAddr(3, V6, None, version=0), m.AddAddr(3, V4, 1, version=0),
    m.RemoveAddr((1, 2, 3)), m.MpPrio(True), m.MpPrio(False, 3), m.MpFail(7), m.MpFastclose(8),
    m.MpTcpRst(2, True),
)]


def _packets() -> list[bytes]:
    from scapy.all import (IP, TCP, IPOption_RR, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,
                           IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, raw)
    opts = emit_tcp_options(ts=(1, 2), extra=VALID_OPTIONS[10])
    pk = [build_tcp_packet(bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), 1, 2, 3, 4, 0x18, 5, opts, b"abc"),
          build_tcp_packet(bytes(range(16)), bytes(range(16, 32)), 1, 2, 3, 4, 0x10, 5, opts, b"x" * 33)]
    pk.append(raw(IP(options=[IPOption_RR(routers=["1.1.1.1"])]) / TCP(options=[("MSS", 1400)]) / b"hi"))
    pk.append(raw(IPv6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting() / IPv6ExtHdrDestOpt()
                  / IPv6ExtHdrFragment() / TCP(options=[("SAckOK", b"")]) / b"hey"))
    return pk


def _mutations(rnd: random.Random, valid: bytes, flips: int):
    for i in range(len(valid)):
        yield valid[:i]
    for _ in range(flips):
        b = bytearray(valid)
        for _ in range(rnd.randint(1, 3)):
            j = rnd.randrange(len(b))
            b[j] ^= 1 << rnd.randrange(8)
        yield bytes(b)


def _only_wire_error(fn, data) -> bool:
    """True when fn(data) raised WireError, False when it returned; anything else fails."""
    try:
        fn(data)
    except WireError:
        return True
    return False


def _mptcp_roundtrip(data: bytes) -> None:
    sub = m.parse_mptcp(data)
    m.emit(sub)  # a parsed object may be unrepresentable only via WireError


def test_fuzz_wire_raises_only_wire_error():
    rnd = random.Random(20261204)
    count = raised = 0

    def run(fn, data):
        nonlocal count, raised
        count += 1
        raised += _only_wire_error(fn, data)

    # MPTCP options: random bodies with a consistent header, truncations, flips
    for _ in range(40000):
        n = rnd.randint(3, 40)
        body = bytearray(rnd.randbytes(n))
        body[0], body[1] = 30, n
        run(_mptcp_roundtrip, bytes(body))
    for opt in VALID_OPTIONS:
        for data in _mutations(rnd, opt, 600):
            run(_mptcp_roundtrip, data)
            run(lambda d: m.parse_mptcp(d, syn=True, ack=False, checksum=True), data)
    # TCP option blocks
    block = emit_tcp_options(mss=1460, wscale=7, sack_perm=True, ts=(1, 2))
    block2 = emit_tcp_options(sack=[(1, 2), (3, 4)], extra=VALID_OPTIONS[5])
    for valid in (block, block2):
        for data in _mutations(rnd, valid, 5000):
            run(parse_tcp_options, data)
    for _ in range(5000):
        run(parse_tcp_options, rnd.randbytes(rnd.randint(0, 44)))
    # packets, frames and the header classes
    for pkt in _packets():
        frame = build_frame(b"\x02" * 6, b"\x04" * 6, pkt)
        for data in _mutations(rnd, pkt, 3000):
            run(parse_ip_packet, data)
            run(Ipv4Header.parse if pkt[0] >> 4 == 4 else Ipv6Header.parse, data)
            run(lambda d: walk_ipv6_ext(d, d[6] if len(d) > 6 else 0), data)
        for data in _mutations(rnd, frame, 3000):
            run(parse_frame, data)
            run(EtherHeader.parse, data)
    for _ in range(8000):
        data = rnd.randbytes(rnd.randint(0, 120))
        run(parse_ip_packet, data)
        run(parse_frame, data)
        run(TcpHeader.parse, data)
    assert count >= 100_000
    assert raised >= count // 4  # most inputs are malformed; the rest parsed fine
