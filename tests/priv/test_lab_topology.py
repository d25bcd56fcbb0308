"""Lab shapes, naming, the CLI, and clean removal (also after a killed process)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mptcp_bpf.errors import HintedError
from mptcp_bpf.lab import Lab
from mptcp_bpf.lab.testing import leftovers, ping_rtts, remove_and_check

pytestmark = pytest.mark.priv


@pytest.fixture
def make_lab():
    """Build labs named mpbl_*; remove them and check nothing is left, pass or fail."""
    made: list[str] = []

    def make(suffix: str, **kwargs) -> Lab:
        name = f"mpbl_{suffix}"
        Lab.remove(name)  # a stale one from a killed run
        made.append(name)
        return Lab.up(name, **kwargs)

    yield make
    problems = [p for name in made for p in remove_and_check(name)]
    assert not problems, f"left behind: {problems}"


def _rx_packets(lab: Lab, node: str, dev: str) -> int:
    out = subprocess.run(["ip", "-n", lab.ns(node), "-s", "-j", "link", "show", dev],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    return int(json.loads(out)[0]["stats64"]["rx"]["packets"])


def test_direct_shape_ipv4_ipv6(make_lab):
    lab = make_lab("dir", paths=2, ipv6=True)
    assert all(lab.ns(n).startswith("mpb") for n in ("client", "server"))
    assert lab.devices("client") == ["c1", "c2"] and lab.devices("server") == ["s1", "s2"]
    assert lab.addresses("client") == ["10.0.1.1", "10.0.2.1"]
    for fam in (4, 6):
        for p, dst in enumerate(lab.addresses("server", fam), start=1):
            before = _rx_packets(lab, "server", f"s{p}")
            assert len(ping_rtts(lab, dst, count=3, interval=0.05)) == 3, (fam, dst)
            assert _rx_packets(lab, "server", f"s{p}") - before >= 3
    # impairments act on IPv6 too
    lab.link(1, dir="up", delay=5)
    rtts = ping_rtts(lab, lab.addresses("server", 6)[0], count=4, interval=0.05)
    assert len(rtts) == 4 and min(rtts) >= 4.9
    lab.link(1, dir="up", loss=100)
    assert ping_rtts(lab, lab.addresses("server", 6)[0], count=2, interval=0.05) == []


def test_router_shape_each_source_uses_its_path(make_lab):
    lab = make_lab("rtr", paths=2, router=True, ipv6=True)
    assert lab.devices("router") == ["r1", "r2", "rs"]
    server = lab.addresses("server")
    assert server == ["10.0.3.3"]
    fwd = lab.exec("router", ["sysctl", "-n", "net.ipv4.ip_forward"], capture_output=True, text=True)
    assert fwd.stdout.strip() == "1"
    for p, src in enumerate(lab.addresses("client"), start=1):
        before = _rx_packets(lab, "router", f"r{p}")
        out = lab.exec("client", ["ping", "-n", "-c", "3", "-i", "0.05", "-W", "2", "-I", src, server[0]],
                       capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stdout + out.stderr
        assert _rx_packets(lab, "router", f"r{p}") - before >= 3, f"source {src} did not use path {p}"
    server6 = lab.addresses("server", 6)[0]
    for p, src in enumerate(lab.addresses("client", 6), start=1):
        before = _rx_packets(lab, "router", f"r{p}")
        out = lab.exec("client", ["ping", "-6", "-n", "-c", "3", "-i", "0.05", "-W", "2", "-I", src, server6],
                       capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stdout + out.stderr
        assert _rx_packets(lab, "router", f"r{p}") - before >= 3, f"source {src} did not use path {p}"


def test_three_paths_name_gets_mpb_prefix(make_lab):
    lab = make_lab("three", paths=3)
    assert lab.ns("client") == "mpbl_three-client"
    assert len(lab.addresses("server")) == 3
    assert len(ping_rtts(lab, lab.addresses("server")[2], count=2)) == 2


def test_user_mistakes_are_hinted(make_lab):
    lab = make_lab("err", paths=1)
    with pytest.raises(HintedError):
        Lab.up(lab.name, paths=1)
    with pytest.raises(HintedError):
        Lab.up("bad name!", paths=1)
    with pytest.raises(HintedError):
        Lab.up("mpbl_zero", paths=0)
    with pytest.raises(HintedError):
        lab.link(2, loss=1)
    with pytest.raises(HintedError):
        lab.link(1, loss=101)
    with pytest.raises(HintedError):
        lab.link(1, rate="fast")
    with pytest.raises(HintedError):
        lab.link(1, drop_subtype="mp_nothing")
    with pytest.raises(HintedError):
        lab.ns("router")


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "mptcp_bpf", *args], capture_output=True, text=True,
                          timeout=120)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_cli_up_show_exec_link_down():
    name = "mpbl_cli"
    Lab.remove(name)
    try:
        _cli("lab", "up", name, "--paths", "2")
        info = json.loads(_cli("-j", "lab", "show", name).stdout)
        assert info["paths"] == 2 and info["namespaces"]["client"] == f"{name}-client"
        out = _cli("lab", "exec", name, "client", "--", "ping", "-c1", "-W2", "10.0.2.2")
        assert "1 received" in out.stdout
        res = json.loads(_cli("-j", "lab", "link", name, "1", "--dir", "up", "--loss", "2").stdout)
        assert res["up"] == {"loss": 2.0} and res["down"] == {}
        bad = _cli("lab", "link", name, "1", "--loss", "x", check=False)
        assert bad.returncode == 1 and "hint:" in bad.stderr
        _cli("lab", "down", name)
        assert _cli("lab", "down", name, check=False).returncode == 1
    finally:
        Lab.remove(name)
    assert not leftovers(name)


def test_down_finds_a_lab_of_a_killed_process():
    name = "mpbl_kill"
    Lab.remove(name)
    code = ("import os, signal\n"
            "from mptcp_bpf.lab import Lab\n"
            f"lab = Lab.up({name!r}, paths=2)\n"
            "lab.link(1, delay=5, loss=1)\n"
            "print('built', flush=True)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert "built" in proc.stdout, proc.stderr
        assert proc.returncode == -signal.SIGKILL
        lab = Lab.find(name)
        assert lab is not None and lab.state["delayline_pid"]
        prog = lab.state.get("prog_id", 0)
        assert Lab.remove(name)
    finally:
        Lab.remove(name)
    assert not leftovers(name, prog)


def test_context_manager_cleans_up_after_an_error():
    name = "mpbl_ctx"
    Lab.remove(name)
    with pytest.raises(RuntimeError):
        with Lab.up(name, paths=1) as lab:
            lab.link(1, delay=2)
            prog = Lab.find(name).state["prog_id"]
            raise RuntimeError("test failure inside the lab")
    assert not leftovers(name, prog)
