"""Each net.mptcp.* sysctl of our stack has its effect (issue 6 §Sysctls), checked end to end
over a two-path lab with `mptcp-bpf perf`/`nc` in the namespaces: mptcp_enabled 0/1/2,
mptcp_checksum, mptcp_version 0/1 (ours against ours), mptcp_syn_retries against a middlebox
that drops MP_CAPABLE SYNs, mptcp_debug (a log of the connection's events)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from test_interop_util import (PY, finish, kill_all, kpeer_script, lab_for, make_file,
                               nc_argv, set_our_sysctl, sha256_file)

pytestmark = pytest.mark.priv


@pytest.fixture(scope="module")
def lab():
    with lab_for("mpbs_sys", paths=2) as lab:
        for node, flag in (("server", "signal"), ("client", "subflow")):
            lab.mptcp(node, limits={"subflows": 8, "add_addr_accepted": 8},
                      endpoints=[f"{a} {flag}" for a in lab.addresses(node)[1:]])
        yield lab


def reset(lab) -> None:
    for node in ("client", "server"):
        set_our_sysctl(lab, node, enabled=1, checksum=0, version=1, debug=0, syn_retries=3)


@pytest.fixture
def defaults(lab):
    """Our sysctls at their defaults, before and after the test."""
    reset(lab)
    try:
        yield
    finally:
        reset(lab)


def wait_listening(srv: subprocess.Popen) -> None:
    """The perf server says when it listens (its stack may take seconds to start)."""
    lines = []
    for _ in range(50):
        line = srv.stderr.readline()
        lines.append(line)
        if not line or b"listening" in line:
            break
    assert b"listening" in lines[-1], f"perf server did not start: {lines!r}"


def holders(lab, node: str) -> str:
    """Who holds our devices (for a failure message)."""
    return lab.exec(node, ["sh", "-c", "ps -eo pid,args | grep -c mptcp_bpf; "
                           "ps -eo pid,etimes,args | grep 'mptcp_bpf' | grep -v grep"],
                    capture_output=True, text=True, timeout=30).stdout


def ours_vs_ours(lab, port: int, nbytes: str = "2M", client_args=(), server_args=()) -> dict:
    """perf server (server ns) and client (client ns), both ours; the client's -J report."""
    srv = lab.popen("server", [PY, "-m", "mptcp_bpf", "perf", "-s", "-1", "-p", str(port),
                               *server_args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    procs = [srv]
    try:
        wait_listening(srv)
        cli = lab.popen("client", [PY, "-m", "mptcp_bpf", "perf", "-c", lab.addresses("server")[0],
                                   "-p", str(port), "-n", nbytes, "-J", *client_args],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append(cli)
        out, err = cli.communicate(timeout=120)
        rc_srv = finish([srv], 30)[0]
    finally:
        kill_all(procs)
    assert cli.returncode == 0, (f"perf client failed: {err.decode()[-2000:]}\n"
                                 f"{holders(lab, 'client')}")
    assert rc_srv[0] == 0, f"perf server failed: {rc_srv[1]}"
    return json.loads(out)


@pytest.mark.usefixtures("defaults")
def test_version_and_checksum(lab):
    set_our_sysctl(lab, "client", version=0)
    end = ours_vs_ours(lab, 9001)["end"]
    assert end["version"] == 0 and not end["fallback"], end
    set_our_sysctl(lab, "client", version=1, checksum=1)
    end = ours_vs_ours(lab, 9002)["end"]
    assert end["version"] == 1 and end["csum"] is True, end
    set_our_sysctl(lab, "client", checksum=0)
    end = ours_vs_ours(lab, 9003)["end"]
    assert end["csum"] is False, end


@pytest.mark.usefixtures("defaults")
def test_enabled_modes(lab):
    set_our_sysctl(lab, "server", enabled=0)
    end = ours_vs_ours(lab, 9011, "1M")["end"]
    assert end["fallback"] is True, f"mptcp_enabled=0 on the server: plain TCP {end}"
    set_our_sysctl(lab, "server", enabled=1)
    set_our_sysctl(lab, "client", enabled=2)
    end = ours_vs_ours(lab, 9012, "1M")["end"]
    assert end["fallback"] is True, f"mode 2 without MPTCP_ENABLED: plain TCP {end}"
    end = ours_vs_ours(lab, 9013, "1M", client_args=["--mptcp"])["end"]
    assert end["fallback"] is False, f"mode 2 with MPTCP_ENABLED=1: MPTCP {end}"


@pytest.mark.usefixtures("defaults")
def test_debug_log(lab):
    set_our_sysctl(lab, "client", debug=1)
    port = 9021
    srv = lab.popen("server", [PY, "-m", "mptcp_bpf", "perf", "-s", "-1", "-p",
                               str(port)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    wait_listening(srv)
    cli = lab.popen("client", [PY, "-m", "mptcp_bpf", "perf", "-q", "-c",
                               lab.addresses("server")[0], "-p", str(port), "-n", "256K"],
                    stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    res = finish([cli, srv], 120)
    assert res[0][0] == 0, (res, holders(lab, "client"))
    log = res[0][1]
    assert "mptcp-bpf debug: created" in log and "established" in log, log[-2000:]
    assert "mptcp-bpf debug" not in res[1][1], "debug is per namespace: server has it off"


@pytest.mark.usefixtures("defaults")
@pytest.mark.parametrize("impair", ["drop_mpc_syn", "strip_mptcp_syn"])
def test_syn_retries_fallback(lab, tmp_path, impair):
    """A middlebox eats MP_CAPABLE SYNs (or strips the option): after mptcp_syn_retries
    SYNs our client drops MP_CAPABLE, the connection works as plain TCP and the data
    arrives (kernel server)."""
    set_our_sysctl(lab, "client", syn_retries=1)
    for p in (1, 2):
        if impair == "drop_mpc_syn":
            lab.link(p, dir="up", drop_subtype=0)
        else:
            lab.link(p, dir="up", strip_mptcp_syn=True)
    src, dst = str(tmp_path / "in"), str(tmp_path / "out")
    want = make_file(src, 256 * 1024)
    procs = []
    try:
        kp = lab.popen("server", [PY, kpeer_script(str(tmp_path)), "listen", "4", "", "9031",
                                  "recv", dst, "1"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
        procs.append(kp)
        assert kp.stdout.readline().strip() == b"ready"
        with open(src, "rb") as fin:
            procs.append(lab.popen("client", nc_argv("-w", "60", lab.addresses("server")[0],
                                                     "9031"),
                                   stdin=fin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        res = finish(procs, 120)
    finally:
        kill_all(procs)
        for p in (1, 2):
            lab.link(p, clear=True)
    assert os.path.exists(dst) and sha256_file(dst) == want, res
    assert all(rc == 0 for rc, _ in res), res
