"""The XDP fast path under BPF_PROG_TEST_RUN, on frames built with scapy."""

from __future__ import annotations

import random
import socket
import struct

import pytest
from scapy.layers.inet import IP, TCP, UDP, IPOption_RR
from scapy.layers.inet6 import (IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,
                                IPv6ExtHdrHopByHop, IPv6ExtHdrRouting)
from scapy.layers.l2 import ARP, Ether, Dot1Q

from mptcp_bpf.datapath import bpfsys
from mptcp_bpf.datapath import structs as S
from mptcp_bpf.wire import checksum as C

pytestmark = pytest.mark.priv

LOCAL4, REMOTE4 = "10.77.0.1", "10.77.0.2"
LOCAL6, REMOTE6 = "fd77::1", "fd77::2"
LPORT, RPORT = 5201, 40001
# Explicit MACs: scapy would otherwise resolve an IPv6 neighbour (about 1 s per frame).
LOCAL_MAC, REMOTE_MAC = "02:00:00:00:77:01", "02:00:00:00:77:02"


def eth() -> Ether:
    return Ether(dst=LOCAL_MAC, src=REMOTE_MAC)
SUBFLOW_ID, TOKEN = 7, 0xA1B2C3D4

# One MPTCP option per subtype (value after kind and length), 8684 §3.
SUBTYPE_OPTS = {
    "MP_CAPABLE": b"\x01\x81",                                # v1 SYN
    "MP_JOIN": b"\x10\x00" + bytes(8),                        # SYN: token, nonce
    "DSS": b"\x20\x01" + bytes(4),                            # data ACK only
    "ADD_ADDR": b"\x30\x01" + socket.inet_aton("10.9.9.9") + bytes(8),
    "REMOVE_ADDR": b"\x40\x05",
    "MP_PRIO": b"\x50\x01",
    "MP_FAIL": b"\x60\x00" + bytes(8),
    "MP_FASTCLOSE": b"\x70\x00" + bytes(8),
    "MP_TCPRST": b"\x80\x00",
}


def frame4(payload: bytes = b"", flags: str = "A", options=(), ip_opts=None,
           src=REMOTE4, dst=LOCAL4, sport=RPORT, dport=LPORT) -> bytes:
    ip = IP(src=src, dst=dst) if ip_opts is None else IP(src=src, dst=dst, options=ip_opts)
    return bytes(eth() / ip / TCP(sport=sport, dport=dport, flags=flags,
                                    options=list(options)) / payload)


def frame6(payload: bytes = b"", flags: str = "A", options=(), ext=None,
           sport=RPORT, dport=LPORT) -> bytes:
    ip = IPv6(src=REMOTE6, dst=LOCAL6)
    if ext is not None:
        ip = ip / ext
    return bytes(eth() / ip / TCP(sport=sport, dport=dport, flags=flags,
                                    options=list(options)) / payload)


def dss_mapping(dsn: int, ssn: int, length: int, csum: int | None, dsn64: bool = True,
                fin: bool = False) -> tuple[int, bytes]:
    """DSS with a 4-byte data ACK and a mapping (optionally with checksum)."""
    flags = 0x01 | 0x04 | (0x08 if dsn64 else 0) | (0x10 if fin else 0)
    body = bytes([0x20, flags]) + struct.pack("!I", 1)
    body += struct.pack("!Q", dsn) if dsn64 else struct.pack("!I", dsn & 0xFFFFFFFF)
    body += struct.pack("!IH", ssn, length)
    if csum is not None:
        body += struct.pack("!H", csum)
    return (30, body)


def delta(after: dict, before: dict) -> dict:
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


@pytest.fixture
def owned(fastpath):
    """The test 4-tuples (v4 and v6) are owned for the duration of a test."""
    fastpath.add_subflow(socket.AF_INET, LOCAL4, LPORT, REMOTE4, RPORT, SUBFLOW_ID, TOKEN)
    fastpath.add_subflow(socket.AF_INET6, LOCAL6, LPORT, REMOTE6, RPORT, SUBFLOW_ID + 1, TOKEN)
    try:
        yield fastpath
    finally:
        fastpath.remove_subflow(socket.AF_INET, LOCAL4, LPORT, REMOTE4, RPORT)
        fastpath.remove_subflow(socket.AF_INET6, LOCAL6, LPORT, REMOTE6, RPORT)


def test_verifier_accepts_program(fastpath):
    info = bpfsys.prog_info(fastpath.prog_fd)
    assert info["type"] == "xdp"
    assert info["verified_insns"] > 0
    names = {bpfsys.map_info(m.fd)["name"] for m in fastpath.maps.values()}
    assert {"subflows", "listeners", "xsks", "devices", "counters"} <= names


def test_not_owned_passes_untouched(fastpath):
    frame = frame4(b"hello", options=[(30, SUBTYPE_OPTS["DSS"])])
    before = fastpath.counters()
    ret, meta, out, _ = fastpath.test_run(frame)
    d = delta(fastpath.counters(), before)
    assert ret == bpfsys.XDP_PASS
    assert meta is None and out == frame
    assert d.get("not_owned") == 1 and d.get("seen_DSS") == 1 and "owned" not in d


@pytest.mark.parametrize("name", list(SUBTYPE_OPTS))
def test_each_subtype_counted_and_flagged(owned, name):
    idx = S.SUBTYPE_NAMES.index(name)
    frame = frame4(b"x" * 10, options=[(30, SUBTYPE_OPTS[name])])
    before = owned.counters()
    ret, meta, out, _ = owned.test_run(frame)
    d = delta(owned.counters(), before)
    assert ret == bpfsys.XDP_DROP          # owned, but no XSK bound in a test run
    assert d.get(f"seen_{name}") == 1 and d.get(f"owned_{name}") == 1
    assert d.get("owned") == 1 and d.get("mptcp") == 1 and d.get("no_xsk") == 1
    assert meta is not None and meta.owned
    assert meta.subtypes == 1 << idx and meta.subtype_names() == [name]
    assert meta.subflow_id == SUBFLOW_ID and meta.token == TOKEN
    assert out == frame


def test_several_subtypes_in_one_segment(owned):
    opts = [(30, SUBTYPE_OPTS["DSS"]), (1, b""), (30, SUBTYPE_OPTS["ADD_ADDR"])]
    _, meta, _, _ = owned.test_run(frame4(b"", options=opts))
    assert meta.subtypes == (1 << S.MPB_ST_DSS) | (1 << S.MPB_ST_ADD_ADDR)


def test_metadata_offsets_v4_and_v6(owned):
    payload = b"abcdefg"
    f4 = frame4(payload, options=[(30, SUBTYPE_OPTS["DSS"])])
    _, m4, _, _ = owned.test_run(f4)
    assert (m4.l3_off, m4.l4_off) == (14, 34)
    assert f4[m4.payload_off:m4.payload_off + m4.payload_len] == payload
    assert m4.dss_off and f4[m4.dss_off] == 30 and m4.flags & S.MPB_F_HAS_DSS
    f6 = frame6(payload)
    _, m6, _, _ = owned.test_run(f6)
    assert m6.subflow_id == SUBFLOW_ID + 1 and m6.flags & S.MPB_F_IPV6
    assert (m6.l3_off, m6.l4_off) == (14, 54)
    assert f6[m6.payload_off:m6.payload_off + m6.payload_len] == payload


def test_pass_no_xsk_flag(fastpath):
    fastpath.add_subflow(socket.AF_INET, LOCAL4, 9, REMOTE4, 9, 99, 1, pass_no_xsk=True)
    try:
        ret, meta, _, _ = fastpath.test_run(frame4(b"z", sport=9, dport=9))
        assert ret == bpfsys.XDP_PASS and meta.subflow_id == 99
    finally:
        assert fastpath.remove_subflow(socket.AF_INET, LOCAL4, 9, REMOTE4, 9)
    ret, meta, _, _ = fastpath.test_run(frame4(b"z", sport=9, dport=9))
    assert ret == bpfsys.XDP_PASS and meta is None


def test_listener_owns_syn_only(fastpath):
    fastpath.add_listener(socket.AF_INET, None, 8080)
    fastpath.add_listener(socket.AF_INET6, LOCAL6, 8081)
    try:
        syn = frame4(options=[(30, SUBTYPE_OPTS["MP_CAPABLE"])], flags="S", dport=8080)
        ret, meta, _, _ = fastpath.test_run(syn)
        assert ret == bpfsys.XDP_DROP and meta.flags & S.MPB_F_LISTENER
        assert meta.subflow_id == 0 and meta.subtypes == 1 << S.MPB_ST_MP_CAPABLE
        # A SYN/ACK or a plain ACK to the port is not the listener's.
        for flags in ("SA", "A"):
            ret, meta, _, _ = fastpath.test_run(frame4(flags=flags, dport=8080))
            assert ret == bpfsys.XDP_PASS and meta is None
        # Exact-address listener: matches its address only.
        _, meta, _, _ = fastpath.test_run(frame6(flags="S", dport=8081))
        assert meta is not None and meta.flags & S.MPB_F_LISTENER
        other = bytes(eth() / IPv6(src=REMOTE6, dst="fd77::99") / TCP(dport=8081, flags="S"))
        ret, meta, _, _ = fastpath.test_run(other)
        assert ret == bpfsys.XDP_PASS and meta is None
        assert {(l["port"], l["addr"]) for l in fastpath.listeners()} >= {(8080, "*"),
                                                                          (8081, LOCAL6)}
    finally:
        fastpath.remove_listener(socket.AF_INET, None, 8080)
        fastpath.remove_listener(socket.AF_INET6, LOCAL6, 8081)


LENGTHS = [0, 1, 2, 3, 4, 5, 7, 8, 255, 256, 257, 511, 512, 513, 1023, 1459, 1460]


@pytest.mark.parametrize("family", [4, 6])
def test_payload_sum_matches_reference(owned, family):
    rng = random.Random(2024 + family)
    lengths = LENGTHS + [rng.randrange(0, 1461) for _ in range(40)]
    for n in lengths:
        payload = bytes(rng.getrandbits(8) for _ in range(n))
        frame = frame4(payload) if family == 4 else frame6(payload)
        ret, meta, _, _ = owned.test_run(frame)
        assert meta is not None and meta.flags & S.MPB_F_SUM_VALID, n
        assert meta.payload_len == n
        assert meta.csum == C.csum_partial(payload), (n, hex(meta.csum))


def test_payload_sum_extremes(owned):
    for payload in (b"\xff" * 1460, b"\x00" * 1460, b"\xff" * 1459, b"\x00\x01" * 730):
        _, meta, _, _ = owned.test_run(frame4(payload))
        assert meta.csum == C.csum_partial(payload)


def test_padded_frame_uses_ip_length(owned):
    frame = frame4(b"abc") + b"\xee" * 20      # Ethernet padding after the IP packet
    _, meta, _, _ = owned.test_run(frame)
    assert meta.payload_len == 3 and meta.csum == C.csum_partial(b"abc")


@pytest.mark.parametrize("n", [1, 100, 1000, 1401])
def test_dss_checksum_good_and_corrupted(owned, n):
    payload = bytes(random.Random(n).getrandbits(8) for _ in range(n))
    dsn, ssn = 0x0102030405060708, 1
    good = C.dss_checksum(dsn, ssn, n, C.csum_partial(payload))
    before = owned.counters()
    _, meta, _, _ = owned.test_run(frame4(payload, options=[dss_mapping(dsn, ssn, n, good)]))
    assert meta.flags & S.MPB_F_CSUM_CHECKED and not meta.csum_bad
    assert meta.flags & S.MPB_F_MAPPING_IN_SEGMENT and meta.flags & S.MPB_F_DSS_CSUM
    # Corrupt the payload, then the checksum field itself.
    bad_payload = bytes([payload[0] ^ 0x40]) + payload[1:]
    _, meta, _, _ = owned.test_run(frame4(bad_payload, options=[dss_mapping(dsn, ssn, n, good)]))
    assert meta.csum_bad
    _, meta, _, _ = owned.test_run(frame4(payload,
                                          options=[dss_mapping(dsn, ssn, n, good ^ 0x0100)]))
    assert meta.csum_bad
    d = delta(owned.counters(), before)
    assert d.get("csum_ok") == 1 and d.get("csum_bad") == 2


def test_dss_checksum_data_fin(owned):
    payload = b"last bytes"
    n = len(payload) + 1                           # DATA_FIN takes one data-level byte
    good = C.dss_checksum(77, 5, n, C.csum_partial(payload))
    _, meta, _, _ = owned.test_run(frame4(payload, options=[dss_mapping(77, 5, n, good,
                                                                        fin=True)]))
    assert meta.flags & S.MPB_F_CSUM_CHECKED and not meta.csum_bad


def test_dss_checksum_not_checked_when_not_possible(owned):
    payload = b"q" * 50
    # 4-byte DSN: the pseudo-header needs the 64-bit DSN, known only to the connection.
    _, meta, _, _ = owned.test_run(frame4(payload, options=[dss_mapping(9, 1, 50, 0x1234,
                                                                        dsn64=False)]))
    assert meta.flags & S.MPB_F_HAS_MAPPING and not meta.flags & S.MPB_F_CSUM_CHECKED
    # Mapping longer than the segment: checked later from partial sums.
    _, meta, _, _ = owned.test_run(frame4(payload, options=[dss_mapping(9, 1, 3000, 0x1234)]))
    assert not meta.flags & S.MPB_F_MAPPING_IN_SEGMENT and not meta.csum_bad
    # No checksum in the mapping.
    _, meta, _, _ = owned.test_run(frame4(payload, options=[dss_mapping(9, 1, 50, None)]))
    assert meta.flags & S.MPB_F_HAS_MAPPING and not meta.flags & S.MPB_F_DSS_CSUM


def test_ipv4_options(owned):
    frame = frame4(b"payload", ip_opts=[IPOption_RR(routers=["1.2.3.4", "5.6.7.8"])],
                   options=[(30, SUBTYPE_OPTS["DSS"])])
    _, meta, _, _ = owned.test_run(frame)
    assert meta is not None and meta.l4_off > 34
    assert frame[meta.payload_off:] == b"payload"
    assert meta.csum == C.csum_partial(b"payload")


@pytest.mark.parametrize("ext", [
    IPv6ExtHdrHopByHop(),
    IPv6ExtHdrDestOpt(),
    IPv6ExtHdrRouting(addresses=["fd77::9"]),
    IPv6ExtHdrFragment(m=0, offset=0),
    IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / IPv6ExtHdrRouting(),
], ids=["hop", "dst", "routing", "atomic-frag", "chain"])
def test_ipv6_extension_headers(owned, ext):
    frame = frame6(b"v6 data", ext=ext, options=[(30, SUBTYPE_OPTS["MP_PRIO"])])
    _, meta, _, _ = owned.test_run(frame)
    assert meta is not None and meta.subflow_id == SUBFLOW_ID + 1
    assert meta.subtypes == 1 << S.MPB_ST_MP_PRIO
    assert frame[meta.payload_off:] == b"v6 data"


def test_fragments_pass(owned):
    before = owned.counters()
    f6 = frame6(b"x" * 20, ext=IPv6ExtHdrFragment(m=1, offset=0))
    f4 = bytes(eth() / IP(src=REMOTE4, dst=LOCAL4, flags="MF") / TCP(sport=RPORT,
                                                                          dport=LPORT) / b"x")
    for f in (f4, f6):
        ret, meta, out, _ = owned.test_run(f)
        assert ret == bpfsys.XDP_PASS and meta is None and out == f
    assert delta(owned.counters(), before).get("fragment") == 2


def test_non_tcp_and_garbage_pass_untouched(owned):
    rng = random.Random(7)
    frames = [
        bytes(eth() / ARP()),
        bytes(eth() / IP(src=REMOTE4, dst=LOCAL4) / UDP(sport=RPORT, dport=LPORT) / b"u"),
        bytes(eth() / IPv6(src=REMOTE6, dst=LOCAL6) / UDP() / b"u"),
        bytes(eth() / Dot1Q(vlan=5) / IP() / UDP()),
        b"\x00" * 14, b"\xff" * 60,
    ]
    frames += [bytes(rng.getrandbits(8) for _ in range(rng.randrange(14, 200)))
               for _ in range(200)]
    for f in frames:
        ret, meta, out, _ = owned.test_run(f)
        assert ret == bpfsys.XDP_PASS and meta is None and out == f


def test_truncated_and_lying_frames_are_safe(owned):
    full = frame4(b"0123456789" * 5, options=[dss_mapping(1, 1, 50, 0)])
    before = owned.counters()
    for cut in range(14, len(full)):
        ret, meta, out, _ = owned.test_run(full[:cut])
        assert ret in (bpfsys.XDP_PASS, bpfsys.XDP_DROP)
        if ret == bpfsys.XDP_PASS:
            assert out == full[:cut]
    d = delta(owned.counters(), before)
    assert d.get("malformed", 0) > 0
    # Lengths that lie: IP total length past the frame; TCP data offset past the packet.
    lie_ip = bytearray(full)
    lie_ip[16:18] = struct.pack("!H", 4000)
    lie_doff = bytearray(full)
    lie_doff[14 + 20 + 12] = 0xF0
    bad_opt = frame4(b"x", options=[(30, b"\x20")])[:-1] + b"x"   # option runs short
    for f in (bytes(lie_ip), bytes(lie_doff)):
        ret, meta, out, _ = owned.test_run(f)
        assert ret == bpfsys.XDP_PASS and meta is None and out == f
    ret, _, _, _ = owned.test_run(bad_opt)
    assert ret in (bpfsys.XDP_PASS, bpfsys.XDP_DROP)


def test_random_option_bytes_never_crash(owned):
    rng = random.Random(11)
    base = frame4(b"data" * 10)
    for _ in range(300):
        nopt = rng.randrange(1, 11) * 4
        opts = bytes(rng.getrandbits(8) for _ in range(nopt))
        f = bytearray(base[:54] + opts + base[54:])
        f[14 + 20 + 12] = ((20 + nopt) // 4) << 4
        f[16:18] = struct.pack("!H", len(f) - 14)
        ret, meta, out, _ = owned.test_run(bytes(f))
        assert ret in (bpfsys.XDP_PASS, bpfsys.XDP_DROP)
        if meta is not None:
            assert meta.payload_len == 40 and meta.csum == C.csum_partial(b"data" * 10)


def test_subflow_stats_count_owned_segments(owned):
    before = owned.subflow_stats().get(SUBFLOW_ID, {"packets": 0, "bytes": 0})
    for _ in range(3):
        owned.test_run(frame4(b"x" * 100))
    after = owned.subflow_stats()[SUBFLOW_ID]
    assert after["packets"] - before["packets"] == 3
    assert after["bytes"] - before["bytes"] == 300
