"""MPTCP suboptions, v0 (RFC 6824) and v1 (RFC 8684): emit/parse round trips for every form
and flag combination, the lengths of REFERENCE.md §6, and context checks."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mptcp_bpf.wire import WireError
from mptcp_bpf.wire import mptcp as m

U8, U16, U32, U64 = (st.integers(0, 2**b - 1) for b in (8, 16, 32, 64))
V4 = st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1))
V6 = st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1))


@st.composite
def capables(draw):
    version = draw(st.sampled_from([0, 1]))
    n = draw(st.sampled_from([12, 20] if version == 0 else [4, 12, 20, 22, 24]))
    fields = [draw(U64) if n >= 12 else None, draw(U64) if n >= 20 else None,
              draw(U16) if n >= 22 else None, draw(U16) if n >= 24 else None]
    return m.MpCapable(version, draw(U8), *fields)


@st.composite
def dsses(draw):
    ack8, dsn8 = draw(st.booleans()), draw(st.booleans())
    data_ack = draw(st.none() | (U64 if ack8 else U32))
    mapping = draw(st.booleans())
    if mapping:
        dsn, ssn, dlen = draw(U64 if dsn8 else U32), draw(U32), draw(U16)
        csum = draw(st.none() | U16)
    else:
        dsn = ssn = dlen = csum = None
    return m.Dss(data_ack, ack8, dsn, dsn8, ssn, dlen, csum, draw(st.booleans()))


@st.composite
def add_addrs(draw):
    version = draw(st.sampled_from([0, 1]))
    addr = draw(V4 | V6)
    port = draw(st.none() | U16)
    if version == 0:
        return m.AddAddr(draw(U8), addr, port, None, False, 0)
    echo = draw(st.booleans())
    return m.AddAddr(draw(U8), addr, port, None if echo else draw(U64), echo, 1)


SUBOPTIONS = st.one_of(
    capables(),
    st.builds(m.MpJoinSyn, U32, U32, U8, st.booleans()),
    st.builds(m.MpJoinSynAck, U64, U32, U8, st.booleans()),
    st.builds(m.MpJoinAck, st.binary(min_size=20, max_size=20)),
    dsses(),
    add_addrs(),
    st.builds(m.RemoveAddr, st.lists(U8, min_size=1, max_size=37).map(tuple)),
    st.builds(m.MpPrio, st.booleans(), st.none() | U8),
    st.builds(m.MpFail, U64),
    st.builds(m.MpFastclose, U64),
    st.builds(m.MpTcpRst, U8, st.booleans()),
)

# machines running the suite are loaded: no per-example deadline or speed health checks
SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]


@given(SUBOPTIONS, st.booleans(), st.booleans())
@settings(deadline=None, suppress_health_check=SLOW_OK)
def test_round_trip(sub, syn, ack):
    raw = m.emit(sub)
    assert raw[0] == m.OPT_MPTCP and raw[1] == len(raw) <= 40
    assert m.parse_mptcp(raw, syn=syn, ack=ack) == sub
    assert m.parse_mptcp(memoryview(raw)) == sub
    assert m.emit(m.parse_mptcp(bytearray(raw))) == raw


@given(dsses())
@settings(deadline=None, suppress_health_check=SLOW_OK)
def test_dss_length_and_checksum_context(d):
    raw = m.emit(d)
    flags = raw[3]
    assert len(raw) == m.dss_length(flags, d.checksum is not None)
    if d.dsn is not None:
        assert m.parse_mptcp(raw, checksum=d.checksum is not None) == d
        with pytest.raises(WireError):
            m.parse_mptcp(raw, checksum=d.checksum is None)


@pytest.mark.parametrize("ack8,dsn8,mapping,csum,length", [
    (False, False, False, False, 8), (True, False, False, False, 12),
    (False, False, True, False, 18), (False, False, True, True, 20),
    (False, True, True, True, 24), (True, True, True, True, 28), (True, True, True, False, 26),
])
def test_dss_lengths(ack8, dsn8, mapping, csum, length):
    d = m.Dss(1, ack8, 2 if mapping else None, dsn8, 3 if mapping else None,
              4 if mapping else None, 5 if csum else None)
    assert len(m.emit(d)) == length


def test_reference_lengths():
    # REFERENCE.md §6
    assert len(m.emit(m.MpCapable(1, 0x81))) == 4
    assert len(m.emit(m.MpCapable(0, 0x81, 1))) == 12
    assert len(m.emit(m.MpCapable(1, 0x81, 1, 2))) == 20
    assert len(m.emit(m.MpCapable(1, 0x81, 1, 2, 3))) == 22
    assert len(m.emit(m.MpCapable(1, 0x81, 1, 2, 3, 4))) == 24
    assert len(m.emit(m.MpJoinSyn(1, 2))) == 12
    assert len(m.emit(m.MpJoinSynAck(1, 2))) == 16
    assert len(m.emit(m.MpJoinAck(bytes(20)))) == 24
    v4, v6 = ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("2001:db8::1")
    assert [len(m.emit(m.AddAddr(1, a, p, version=0))) for a in (v4, v6) for p in (None, 1)] == [8, 10, 20, 22]
    assert [len(m.emit(m.AddAddr(1, a, p, 7))) for a in (v4, v6) for p in (None, 1)] == [16, 18, 28, 30]
    assert [len(m.emit(m.AddAddr(1, a, p, None, True))) for a in (v4, v6) for p in (None, 1)] == [8, 10, 20, 22]
    assert len(m.emit(m.MpPrio(True))) == 3
    assert len(m.emit(m.MpFail(1))) == 12 and len(m.emit(m.MpFastclose(1))) == 12
    assert len(m.emit(m.MpTcpRst(1))) == 4
    assert len(m.emit(m.RemoveAddr((1, 2, 3)))) == 6


def test_known_bytes():
    # from the kernel capture (tests/fixtures/wire/kernel_v1.json)
    assert m.parse_mptcp(bytes.fromhex("1e040181"), syn=True, ack=False) == m.MpCapable(1, 0x81)
    sub = m.parse_mptcp(bytes.fromhex("1e0c10014b50793cc880fd9d"), syn=True, ack=False)
    assert sub == m.MpJoinSyn(0x4B50793C, 0xC880FD9D, 1, False)
    sub = m.parse_mptcp(bytes.fromhex("1e1030010a4702023d356e06b3667b13"))
    assert sub == m.AddAddr(1, ipaddress.ip_address("10.71.2.2"), None, 0x3D356E06B3667B13, False, 1)
    sub = m.parse_mptcp(bytes.fromhex("1e1c201f8128d0e9ceae34b00c7a2f978cb2d2380000000000016502"))
    assert sub.data_fin and sub.ssn == 0 and sub.data_len == 1 and sub.checksum == 0x6502
    assert sub.dsn8 and sub.data_ack8
    # v0 ADD_ADDR: IPVer nibble
    assert m.parse_mptcp(bytes.fromhex("1e0834050a000001")) == m.AddAddr(
        5, ipaddress.ip_address("10.0.0.1"), None, None, False, 0)


def test_capable_flags():
    c = m.MpCapable(1, m.MPC_FLAG_A | m.MPC_FLAG_H)
    assert c.checksum_required and c.hmac_sha and not c.extensibility and not c.no_source_join
    c = m.MpCapable(1, m.MPC_FLAG_B | m.MPC_FLAG_C)
    assert c.extensibility and c.no_source_join and not c.checksum_required


@pytest.mark.parametrize("sub", [
    m.MpCapable(0, 0x81),                      # v0 has no 4-byte form
    m.MpCapable(1, 0x81, None, 2),             # receiver key without sender key
    m.MpCapable(0, 0x81, 1, 2, 3),             # v0 has no data-level length
    m.MpCapable(1, 0x81, 1, 2, None, 4),       # checksum without length
    m.MpCapable(1, 0x81, 2**64),
    m.MpJoinSyn(2**32, 1), m.MpJoinAck(bytes(19)),
    m.Dss(2**32, False), m.Dss(None, True, 1, True, None, 1),
    m.Dss(None, True, None, True, 1, 1),
    m.AddAddr(1, ipaddress.ip_address("1.2.3.4"), None, None, False, 1),   # v1 needs HMAC
    m.AddAddr(1, ipaddress.ip_address("1.2.3.4"), None, 5, True, 1),       # echo has none
    m.AddAddr(1, ipaddress.ip_address("1.2.3.4"), None, 5, False, 0),      # v0 has none
    m.AddAddr(1, ipaddress.ip_address("1.2.3.4"), 70000, 5),
    m.RemoveAddr(()), m.RemoveAddr((256,)),
    m.MpTcpRst(256), m.MpFail(-1),
])
def test_unrepresentable_raises_wire_error(sub):
    with pytest.raises(WireError):
        m.emit(sub)


def test_emit_rejects_other_objects():
    with pytest.raises(WireError):
        m.emit("DSS")  # type: ignore[arg-type]


@pytest.mark.parametrize("hexstr", [
    "", "1e", "1e03", "1e0320", "1f0400ff", "1e050000",   # too short, wrong kind, length mismatch
    "1e04f000",                 # unknown subtype 15
    "1e040081",                 # v0 MP_CAPABLE of 4 bytes
    "1e0d0181" + "00" * 9,      # MP_CAPABLE of 13 bytes
    "1e0820050000000000",       # DSS length 9 != flags
    "1e0a20040000000000000000", # mapping too short
    "1e0430010a000001"[:8],     # ADD_ADDR 4 bytes
    "1e0940",                   # REMOVE_ADDR length mismatch
    "1e0340",                   # REMOVE_ADDR without ids
    "1e055000ff",               # MP_PRIO 5 bytes
    "1e0b60000000000000000000"[:22],
    "1e058000ff",               # MP_TCPRST 5 bytes
])
def test_malformed_examples(hexstr):
    with pytest.raises(WireError):
        m.parse_mptcp(bytes.fromhex(hexstr))


def test_subtype_of():
    assert m.subtype_of(m.emit(m.Dss(1))) == m.DSS
    with pytest.raises(WireError):
        m.subtype_of(b"\x1e\x03")
