"""The inspection CLI against a real running stack: our server (`mptcp-bpf nc -l`) holds a
connection from a kernel MPTCP client while other processes run every command, in text and
JSON, and `monitor` streams the connection's events; the same commands in a namespace
without a stack say so and fail."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from test_interop_util import KERNEL_HOLDER, PY, kill_all, lab_for, read_events, wait_for
from test_interop_util import mptcp_cli as cli

pytestmark = pytest.mark.priv

PORT = 5077
@pytest.fixture
def live():
    """A lab whose server runs our stack with one connection from a kernel client."""
    with lab_for("mpbs_insp", paths=2, fast_path=("server",)) as lab:
        lab.mptcp("client", limits={"subflows": 8, "add_addr_accepted": 8})
        procs = []
        try:
            # stdin stays open: our side sends no DATA_FIN while the test looks
            server = lab.popen("server", [PY, "-m", "mptcp_bpf", "nc", "-l", "-p", str(PORT)],
                               stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
            procs.append(server)
            wait_for(lambda: cli(lab, "server", "limits", "show").returncode == 0, 60,
                     "the stack's control socket")
            monitor = lab.popen("server", [PY, "-m", "mptcp_bpf", "-j", "monitor"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            procs.append(monitor)
            time.sleep(1.0)  # the monitor subscribes before the connection starts
            holder = lab.popen("client", [PY, "-c", KERNEL_HOLDER, lab.addresses("server")[0],
                                          str(PORT), "200000"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
            procs.append(holder)
            assert holder.stdout.readline().strip() == "connected"
            yield lab, monitor, holder
        finally:
            kill_all(procs)


def test_every_command_with_a_running_stack(live):
    lab, monitor, holder = live

    def two_subflows():
        r = cli(lab, "server", "-j", "conn", "show")
        conns = json.loads(r.stdout) if r.returncode == 0 else []
        return conns if conns and len(conns[0].get("subflows") or []) >= 2 else None
    conns = wait_for(two_subflows, 30, "a connection with two subflows",
                     lambda: cli(lab, "server", "-j", "conn", "show").stdout)
    token = conns[0]["token"]
    assert conns[0]["state"] and conns[0]["version"] == 1

    text = cli(lab, "server", "conn", "show")
    assert text.returncode == 0 and token in text.stdout
    rows = json.loads(cli(lab, "server", "-j", "subflow", "show").stdout)
    assert len(rows) >= 2 and all(int(r.get("cwnd") or 0) > 0 for r in rows), rows
    text = cli(lab, "server", "subflow", "show")
    assert text.returncode == 0 and "rtt" in text.stdout and "cwnd" in text.stdout

    stats = json.loads(cli(lab, "server", "-p", "stats").stdout)
    flat = json.dumps(stats)
    assert stats["fastpath"]["counters"]["owned"] > 0, stats
    assert "MPCapableSYNRX" in flat and "MPJoin" in flat, stats
    assert cli(lab, "server", "stats").returncode == 0

    endpoints = json.loads(cli(lab, "server", "-j", "endpoint", "show").stdout)
    addrs = json.dumps(endpoints)
    assert all(a in addrs for a in lab.addresses("server")), endpoints
    limits = json.loads(cli(lab, "server", "-j", "limits", "show").stdout)
    assert int(limits["subflows"]) >= 2, limits
    for obj in (("prog", "show"), ("map", "show"), ("map", "dump", "subflows")):
        r = cli(lab, "server", "-j", *obj)
        assert r.returncode == 0 and json.loads(r.stdout), (obj, r.stderr)

    wanted = ("created", "established", "announced", "sf_established")
    events = read_events(monitor.stdout, wanted, 30)
    for kind in wanted:
        assert any(e.get("type") == kind and e.get("token") == token for e in events), \
            f"monitor missed {kind!r}: {events}"


def test_commands_without_a_stack_say_so(live):
    lab, _, _ = live
    for args in (("conn", "show"), ("subflow", "show"), ("endpoint", "show"),
                 ("limits", "show")):
        r = cli(lab, "client", *args)  # the client node runs the kernel's MPTCP, not ours
        assert r.returncode != 0, args
        assert "stack" in r.stderr.lower() and "hint" in r.stderr.lower(), r.stderr
