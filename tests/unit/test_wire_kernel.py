"""The codec against real kernel MPTCP v1 traffic (tests/fixtures/wire/kernel_v1*.json).

Each fixture holds every segment of a small kernel-to-kernel transfer (DSS checksums on,
ADD_ADDR signal: IPv4 with a port, IPv6 without; one MP_JOIN) with tshark's dissection of
the same capture.
RFC 8684 has no test vectors, so these are the known answers for keys -> tokens/IDSNs,
the MP_JOIN and ADD_ADDR HMACs and the DSS checksum. The check functions are also run
on a fresh capture by tests/priv/test_wire_capture.py.
"""

from __future__ import annotations

import ipaddress
import json
import pathlib
from collections import Counter

import pytest

from mptcp_bpf.wire import mptcp as m
from mptcp_bpf.wire.checksum import csum_block_add, csum_partial, dss_checksum_ok
from mptcp_bpf.wire.crypto import add_addr_hmac, join_hmac, key_idsn, key_token
from mptcp_bpf.wire.tcp import ACK, SYN

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "wire"


def _parsed(cap: dict):
    """(record, suboption, raw option bytes) for every MPTCP option, in capture order."""
    for r in cap["packets"]:
        syn, ack = bool(r["flags"] & SYN), bool(r["flags"] & ACK)
        for h in r["options"]:
            raw = bytes.fromhex(h)
            yield r, m.parse_mptcp(raw, syn=syn, ack=ack), raw


def _keys(cap: dict) -> tuple[int, int]:
    """(client key, server key) from the MP_CAPABLE handshake (v1: SYN/ACK, then ACK)."""
    server_key = client_key = None
    for r, sub, _ in _parsed(cap):
        if isinstance(sub, m.MpCapable) and sub.sender_key is not None:
            assert sub.version == 1 and sub.hmac_sha
            if r["flags"] & SYN and r["dir"] == "s2c":
                server_key = sub.sender_key
            elif not r["flags"] & SYN and r["dir"] == "c2s" and client_key is None:
                client_key = sub.sender_key
                assert sub.receiver_key == server_key, "ACK echoes the SYN/ACK key"
    assert client_key is not None and server_key is not None
    return client_key, server_key


def _subflow(r: dict) -> tuple:
    """Direction-independent subflow id: (client addr, client port)."""
    return (r["src"], r["sport"]) if r["dir"] == "c2s" else (r["dst"], r["dport"])


def check_capture(cap: dict) -> Counter:
    """Every option parses and re-emits byte-exact; tokens, IDSNs and HMACs agree."""
    names: Counter = Counter()
    for _r, sub, raw in _parsed(cap):
        assert m.emit(sub) == raw, (sub, raw.hex())
        names[m.SUBTYPE_NAMES[raw[2] >> 4]] += 1
    ck, sk = _keys(cap)
    tokens = {"c2s": key_token(sk, 1), "s2c": key_token(ck, 1)}  # the receiver's token
    join_syn: dict = {}
    join_synack: dict = {}
    for r, sub, _ in _parsed(cap):
        sf = _subflow(r)
        if isinstance(sub, m.MpJoinSyn):
            assert sub.token == tokens[r["dir"]], "MP_JOIN token = token of the peer's key"
            join_syn[sf] = sub
        elif isinstance(sub, m.MpJoinSynAck):
            a = join_syn[sf]
            # 8684 §3.2: SYN/ACK carries HMAC(Key-B||Key-A, R-B||R-A), leftmost 64 bits
            assert sub.hmac == int.from_bytes(join_hmac(sk, ck, sub.nonce, a.nonce, 1)[:8], "big")
            join_synack[sf] = sub
        elif isinstance(sub, m.MpJoinAck):
            a, b = join_syn[sf], join_synack[sf]
            assert sub.hmac == join_hmac(ck, sk, a.nonce, b.nonce, 1)[:20]
        elif isinstance(sub, m.AddAddr):
            assert sub.version == 1
            sender, receiver = (sk, ck) if r["dir"] == "s2c" else (ck, sk)
            if sub.echo:
                assert sub.hmac is None
            else:
                assert sub.hmac == add_addr_hmac(sender, receiver, sub.addr_id, sub.address, sub.port)
                assert str(sub.address) in cap["server_addrs"] + cap["client_addrs"]
    assert names["MP_CAPABLE"] >= 3 and names["DSS"] >= 4
    return names


def _streams(cap: dict) -> dict:
    """Per (subflow, direction): ISN and the bytes by relative sequence number."""
    out: dict = {}
    for r in cap["packets"]:
        key = (_subflow(r), r["dir"])
        st = out.setdefault(key, {"isn": None, "data": {}})
        if r["flags"] & SYN:
            st["isn"] = r["seq"]
        payload = bytes.fromhex(r["payload"])
        if payload and st["isn"] is not None:
            st["data"][(r["seq"] - st["isn"]) & 0xFFFFFFFF] = payload
    return out


def _mapping_sum(data: dict, ssn: int, length: int) -> int | None:
    """Sum of subflow bytes [ssn, ssn+length) combined from per-segment partial sums."""
    total, pos, end = 0, ssn, ssn + length
    while pos < end:
        for start, seg in data.items():
            if start <= pos < start + len(seg):
                piece = seg[pos - start:min(end, start + len(seg)) - start]
                total = csum_block_add(total, csum_partial(piece), pos - ssn)
                pos += len(piece)
                break
        else:
            return None  # not captured
    return total


def check_dss_checksums(cap: dict) -> int:
    """Every DSS mapping's checksum (8684 §3.3.1) verifies; returns how many were checked."""
    ck, sk = _keys(cap)
    streams = _streams(cap)
    checked = 0
    for r, sub, _ in _parsed(cap):
        key = (_subflow(r), r["dir"])
        if isinstance(sub, m.Dss) and sub.dsn is not None:
            assert sub.checksum is not None, "checksums were negotiated"
            assert sub.dsn8, "the kernel sends 64-bit DSNs"
            length = sub.data_len - (1 if sub.data_fin else 0)
            if sub.data_fin and sub.ssn == 0:
                length = 0  # DATA_FIN-only mapping: no payload (8684 §3.3.3)
            psum = _mapping_sum(streams[key]["data"], sub.ssn, length)
            if psum is None:
                continue
            assert dss_checksum_ok(sub.dsn, sub.ssn, sub.data_len, psum, sub.checksum), (r["frame"], sub)
            checked += 1
        elif isinstance(sub, m.MpCapable) and sub.checksum is not None:
            # MP_CAPABLE with data (8684 §3.1): DSN = IDSN + 1, SSN = 1
            idsn = key_idsn(sub.sender_key, 1)
            psum = _mapping_sum(streams[key]["data"], 1, sub.data_len)
            if psum is not None:
                assert dss_checksum_ok(idsn + 1, 1, sub.data_len, psum, sub.checksum)
                checked += 1
    return checked


def check_tshark(cap: dict) -> int:
    """Fields agree with tshark's dissection; returns the number of options compared."""
    ck, sk = _keys(cap)
    compared = 0
    for r in cap["packets"]:
        t = r.get("tshark") or {}
        if len(r["options"]) != 1 or not t:
            continue
        sub = m.parse_mptcp(bytes.fromhex(r["options"][0]), syn=bool(r["flags"] & SYN))

        def one(field: str) -> str | None:
            v = t.get(f"tcp.options.mptcp.{field}")
            return v[0] if v else None

        def num(field: str) -> int | None:
            v = one(field)
            return None if v is None else int(v, 0)

        assert num("subtype") == bytes.fromhex(r["options"][0])[2] >> 4
        if isinstance(sub, m.MpCapable):
            assert num("version") == sub.version and num("flags") == sub.flags
            assert num("sendkey") == sub.sender_key
            assert num("recvkey") == sub.receiver_key
            assert num("datalvllen") == sub.data_len
            assert num("checksum") == sub.checksum
            if sub.sender_key is not None and "mptcp.expected_token" in t:
                assert int(t["mptcp.expected_token"][0], 0) == key_token(sub.sender_key, 1)
                assert int(t["mptcp.expected_idsn"][0], 0) == key_idsn(sub.sender_key, 1)
        elif isinstance(sub, m.MpJoinSyn):
            assert (num("recvtok"), num("sendrand"), num("addrid")) == (sub.token, sub.nonce, sub.addr_id)
            assert sub.token in (key_token(ck, 1), key_token(sk, 1))
        elif isinstance(sub, m.MpJoinSynAck):
            assert (num("sendtrunchmac"), num("sendrand"), num("addrid")) == (sub.hmac, sub.nonce, sub.addr_id)
        elif isinstance(sub, m.MpJoinAck):
            assert bytes.fromhex(one("sendhmac").replace(":", "")) == sub.hmac
        elif isinstance(sub, m.Dss):
            assert num("rawdataack") == sub.data_ack
            assert num("rawdataseqno") == sub.dsn
            assert num("subflowseqno") == sub.ssn
            assert num("datalvllen") == sub.data_len
            if one("checksum") is not None:  # tshark 4.0 does not show DSS checksums
                assert num("checksum") == sub.checksum
            assert bool(num("datafin.flag")) == sub.data_fin
        elif isinstance(sub, m.AddAddr):
            assert num("addrid") == sub.addr_id
            assert ipaddress.ip_address(one("ipv4") or one("ipv6")) == sub.address
            assert num("port") == sub.port
            assert bool(num("echo")) == sub.echo
            assert num("addaddrtrunchmac") == sub.hmac
        compared += 1
    return compared


@pytest.fixture(scope="module", params=["kernel_v1.json", "kernel_v1_ipv6.json"])
def kernel_capture(request) -> dict:
    return json.loads((FIXTURES / request.param).read_text())


def test_fixture_options_parse_and_reemit(kernel_capture):
    names = check_capture(kernel_capture)
    assert names["MP_JOIN"] >= 3 and names["ADD_ADDR"] >= 2


def test_fixture_dss_checksums(kernel_capture):
    assert check_dss_checksums(kernel_capture) >= 4


def test_fixture_agrees_with_tshark(kernel_capture):
    assert check_tshark(kernel_capture) >= 10


def test_fixture_mp_capable_with_data(kernel_capture):
    """The kernel's first client data rides in a 24-byte MP_CAPABLE (length + checksum)."""
    mpc = [(r, s) for r, s, raw in _parsed(kernel_capture)
           if isinstance(s, m.MpCapable) and s.data_len is not None]
    assert len(mpc) == 1
    r, s = mpc[0]
    assert s.checksum is not None and s.checksum_required and r["dir"] == "c2s"
    assert len(bytes.fromhex(r["payload"])) == s.data_len
    only_mpc = {"packets": [p for p in kernel_capture["packets"] if p["flags"] & SYN or p is r],
                "server_addrs": [], "client_addrs": []}
    assert check_dss_checksums(only_mpc) == 1


def test_fixture_add_addr_forms(kernel_capture):
    """IPv4 capture: ADD_ADDR with port (18 bytes), echo 10; IPv6: 28 and echo 20."""
    adds = [(len(raw), s) for _r, s, raw in _parsed(kernel_capture) if isinstance(s, m.AddAddr)]
    want = {4: {18, 10}, 6: {28, 20}}[kernel_capture["family"]]
    assert {n for n, _ in adds} == want
    assert all(s.port == kernel_capture["signal_port"] for _n, s in adds)


def test_fixture_tokens_known_answers(kernel_capture):
    ck, sk = _keys(kernel_capture)
    # the MP_JOIN SYN names the server by token; tshark computed the same from the key
    joins = [s for _r, s, _ in _parsed(kernel_capture) if isinstance(s, m.MpJoinSyn)]
    assert joins and all(j.token == key_token(sk, 1) for j in joins)
    # the first client data byte has DSN IDSN + 1 (8684 §3.3.1); the MP_CAPABLE with data
    # carries the first data_len bytes, so the first DSS mapping follows them
    mpc_len = sum(s.data_len or 0 for _r, s, _ in _parsed(kernel_capture) if isinstance(s, m.MpCapable))
    dsns = [s.dsn for r, s, _ in _parsed(kernel_capture)
            if isinstance(s, m.Dss) and s.dsn is not None and r["dir"] == "c2s"]
    assert min(dsns) == (key_idsn(ck, 1) + 1 + mpc_len) & 0xFFFFFFFFFFFFFFFF
    sdsns = [s.dsn for r, s, _ in _parsed(kernel_capture)
             if isinstance(s, m.Dss) and s.dsn is not None and r["dir"] == "s2c"]
    assert min(sdsns) == (key_idsn(sk, 1) + 1) & 0xFFFFFFFFFFFFFFFF
