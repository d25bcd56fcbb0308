"""The lab's pure parts: names, value parsing, TBF sizing, MIB parsing, bench bounds, CLI."""

from __future__ import annotations

import pytest

from mptcp_bpf.errors import HintedError
from mptcp_bpf.lab import bench, impair, kmptcp, state, topology


def test_namespace_names_always_start_with_mpb():
    assert state.ns_name("lab1", "client") == "mpblab1-client"
    assert state.ns_name("mpbx", "server") == "mpbx-server"
    for bad in ("", "a b", "x" * 25, "../etc", "lab-1"):
        with pytest.raises(HintedError):
            state.check_name(bad)


@pytest.mark.parametrize("text,bits", [("20mbit", 20_000_000), ("500kbit", 500_000), ("1gbit", 10**9),
                                       (30e6, 30_000_000), ("2M", 2_000_000), ("1mbps", 8_000_000)])
def test_rates(text, bits):
    assert impair.parse_rate(text) == bits


@pytest.mark.parametrize("bad", ["fast", "10 parsecs", "1bit", -5])
def test_bad_rates_are_hinted(bad):
    with pytest.raises(HintedError):
        impair.parse_rate(bad)


def test_rate_off():
    assert impair.parse_rate(None) is None and impair.parse_rate("off") is None


@pytest.mark.parametrize("text,ms", [(10, 10.0), ("25ms", 25.0), ("500us", 0.5), ("1s", 1000.0), ("1.5", 1.5)])
def test_times(text, ms):
    assert impair.parse_ms(text) == pytest.approx(ms)


def test_percent_and_subtypes():
    assert impair.parse_pct("1.5%", "loss") == 1.5
    with pytest.raises(HintedError):
        impair.parse_pct(101, "loss")
    with pytest.raises(HintedError):
        impair.parse_pct("lots", "loss")
    assert impair.parse_subtypes("join,DSS") == ["mp_join", "dss"]
    assert impair._subtype_mask(["mp_join", "dss", "8"]) == (1 << 1) | (1 << 2) | (1 << 8)
    with pytest.raises(HintedError):
        impair.parse_subtypes("mp_bogus")
    assert impair._prob(100) == 0xFFFFFFFF and impair._prob(0) == 0
    assert abs(impair._prob(1) / 2**32 - 0.01) < 1e-6


def test_tbf_sizing():
    burst, limit = impair.tbf_params(50_000_000, None)
    assert burst == 50_000_000 // 8 * impair.BUCKET_MS // 1000
    assert limit >= burst and limit >= 50_000_000 // 8 // 10
    burst, limit = impair.tbf_params(64_000, None)
    assert burst >= 3028 and limit >= burst


def test_normalise_rejects_unknown_and_conflicting():
    assert impair._normalise({"loss": "2", "delay": "5ms", "up": True}) == {"loss": 2.0, "delay": 5.0, "down": False}
    with pytest.raises(HintedError):
        impair._normalise({"limit": 10})


def test_plan_addresses_and_devices():
    st = topology._plan("t", 3, router=False, ipv6=True)
    assert st["addresses"]["server"]["4"] == ["10.0.1.2", "10.0.2.2", "10.0.3.2"]
    assert st["addresses"]["client"]["6"][1] == "dead:beef:2::1"
    assert st["devices"]["client"] == ["c1", "c2", "c3"]
    r = topology._plan("t", 2, router=True, ipv6=False)
    assert r["addresses"]["server"]["4"] == ["10.0.3.3"]
    assert r["devices"]["router"] == ["r1", "r2", "rs"] and r["addresses"]["router"]["6"] == []
    assert set(r["ns"]) == {"client", "server", "router", "wire"}
    assert all(n.startswith("mpb") for n in r["ns"].values())


def test_endpoint_specs():
    ep = kmptcp.parse_endpoint("10.0.2.1 subflow backup port 1000 dev c2")
    assert ep == {"addr": "10.0.2.1", "flags": ["subflow", "backup"], "port": "1000", "dev": "c2"}
    assert kmptcp.parse_endpoint({"addr": "::1", "flags": "signal"})["flags"] == ["signal"]
    for bad in ("10.0.2.1 subflw", "nonsense", "", "10.0.0.1 port"):
        with pytest.raises(HintedError):
            kmptcp.parse_endpoint(bad)


def test_netstat_parsing():
    text = ("TcpExt: A B\nTcpExt: 1 2\nMPTcpExt: MPCapableSYNRX DataCsumErr\nMPTcpExt: 3 4\n"
            "Ip: Forwarding\nIp: 1\n")
    got = kmptcp.parse_netstat(text)
    assert got["MPTcpExtDataCsumErr"] == 4 and got["TcpExtB"] == 2 and got["IpForwarding"] == 1


def test_bench_bound_matches_selftests():
    case = bench.Case(10, 10, 0, 0)
    # simult_flows.sh: 1000 * size * 8 * 10 / ((r1 + r2) * 1000 * 1000 * 9) ms + 400 + 50
    want_ms = 1000 * case.size * 8 * 10 // ((10 + 10) * 1000 * 1000 * 9) + 450
    assert case.bound * 1000 == pytest.approx(want_ms, abs=1)
    assert len(bench.cases()) == 9 and len(bench.cases(fast=True)) == 1


def test_state_roundtrip(tmp_path, monkeypatch):
    monkeypatch.setattr(state, "STATE_DIR", str(tmp_path))
    st = topology._plan("rt", 2, False, False)
    state.save(st)
    assert state.load("rt") == st and state.names() == ["rt"]
    with state.locked("rt"):
        pass
    state.remove("rt")
    assert state.load("rt") is None and state.names() == []


def test_cli_registers_lab():
    from mptcp_bpf.cli.main import build_parser
    args = build_parser().parse_args(["lab", "link", "x", "1", "--dir", "up", "--loss", "2", "--strip-mptcp-syn"])
    assert args.loss == "2" and args.strip_mptcp_syn is True and args.dir == "up"
    args = build_parser().parse_args(["lab", "exec", "x", "client", "--", "ping", "-c1", "h"])
    assert args.cmd[-3:] == ["ping", "-c1", "h"]
