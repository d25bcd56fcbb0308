"""`mptcp-bpf endpoint|limits` on a live stack over XDP with the KERNEL's MPTCP as the peer:
our server (`mptcp-bpf nc -l`) holds a connection from a kernel client while another process
adds a signal endpoint (the kernel counts the ADD_ADDR and joins it), makes it backup
(MP_PRIO), deletes it (REMOVE_ADDR, its subflow closes), and sets limits; the monitor shows
the events and refused changes fail with ip mptcp's reasons and a hint."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess

import pytest

from mptcp_bpf import control
from test_interop_util import (KERNEL_HOLDER, PY, kill_all, lab_for, mptcp_cli, read_events,
                               wait_for)

pytestmark = pytest.mark.priv

PORT = 5079
EXTRA = "10.0.2.3"   # a second address on the server's path-2 device, made by the test


def cli(lab, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return mptcp_cli(lab, "server", *args, timeout=timeout)


def ok_json(lab, *args: str):
    r = cli(lab, "-j", *args)
    assert r.returncode == 0, (args, r.stderr)
    return json.loads(r.stdout)


def our_subflows(lab) -> list[dict]:
    r = cli(lab, "-j", "subflow", "show")
    return json.loads(r.stdout) if r.returncode == 0 else []


def grew(lab, before: dict[str, int], name: str):
    def check():
        now = lab.nstat("client")
        return now if now.get(name, 0) > before.get(name, 0) else None
    return check


@pytest.fixture
def live():
    """A lab whose server runs our stack with one connection from a kernel client."""
    with lab_for("mpbe_ep", paths=2, fast_path=("server",)) as lab:
        lab.mptcp("client", limits={"subflows": 8, "add_addr_accepted": 8})
        procs = []
        ns_id = lab.exec("server", ["stat", "-Lc", "%i", "/proc/self/ns/net"],
                         capture_output=True, text=True, timeout=30).stdout.strip()
        try:
            server = lab.popen("server", [PY, "-m", "mptcp_bpf", "nc", "-l", "-p", str(PORT)],
                               stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
            procs.append(server)
            wait_for(lambda: cli(lab, "limits", "show").returncode == 0, 60,
                     "the stack's control socket")
            monitor = lab.popen("server", [PY, "-m", "mptcp_bpf", "-j", "monitor"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            procs.append(monitor)
            holder = lab.popen("client", [PY, "-c", KERNEL_HOLDER, lab.addresses("server")[0],
                                          str(PORT), "100000"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
            procs.append(holder)
            assert holder.stdout.readline().strip() == "connected"
            yield lab, monitor
        finally:
            kill_all(procs)
            if ns_id.isdigit():   # a killed stack leaves its control socket file behind
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(control.socket_path(int(ns_id)))


def test_endpoint_changes_reach_a_kernel_peer(live):
    lab, monitor = live
    wait_for(lambda: len(our_subflows(lab)) >= 2, 30, "the kernel's join to our path 2",
             lambda: cli(lab, "subflow", "show").stdout)

    # refused as ip mptcp refuses, with a hint
    for args, text in ((("endpoint", "add", "10.99.0.1", "signal"), "not an address of this host"),
                       (("endpoint", "add", lab.addresses("server")[0]), "already exists"),
                       (("endpoint", "delete", "id", "77"), "not found"),
                       (("limits", "set", "subflows", "33"), "limit greater than maximum")):
        r = cli(lab, *args)
        assert r.returncode == 1 and text in r.stderr and "hint:" in r.stderr, (args, r.stderr)

    # limits set and read back
    assert ok_json(lab, "limits", "set", "subflows", "4", "add_addr_accepted", "2") == {
        "subflows": 4, "add_addr_accepted": 2}
    assert ok_json(lab, "limits", "show") == {"subflows": 4, "add_addr_accepted": 2}

    # a signal endpoint on a new address: the kernel peer gets ADD_ADDR and joins it
    dev2 = lab.devices("server")[1]
    r = lab.exec("server", ["ip", "addr", "add", f"{EXTRA}/24", "dev", dev2],
                 capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    before = lab.nstat("client")
    row = ok_json(lab, "endpoint", "add", EXTRA, "signal")
    assert row["address"] == EXTRA and row["flags"] == ["signal"] and row["dev"] == dev2
    ep_id = row["id"]
    assert [e["address"] for e in ok_json(lab, "endpoint", "show", "id", str(ep_id))] == [EXTRA]
    wait_for(grew(lab, before, "AddAddr"), 30, "the kernel's AddAddr")

    def joined():
        return [s for s in our_subflows(lab) if EXTRA in str(s.get("local"))
                and s.get("state") == "ESTABLISHED"]
    wait_for(joined, 30, "the kernel's join to the new endpoint",
             lambda: cli(lab, "subflow", "show").stdout)

    # backup: MP_PRIO on the subflow using it
    before = lab.nstat("client")
    assert "backup" in ok_json(lab, "endpoint", "change", "id", str(ep_id), "backup")["flags"]
    wait_for(grew(lab, before, "MPPrioRx"), 30, "the kernel's MPPrioRx")
    wait_for(lambda: all(s.get("backup") for s in joined()), 30, "our subflow marked backup")

    # delete: REMOVE_ADDR, and our subflow from it closes
    before = lab.nstat("client")
    assert ok_json(lab, "endpoint", "delete", "id", str(ep_id))["address"] == EXTRA
    wait_for(grew(lab, before, "RmAddr"), 30, "the kernel's RmAddr")
    wait_for(lambda: not joined(), 30, "the subflow of the deleted endpoint to close")
    assert all(e["address"] != EXTRA for e in ok_json(lab, "endpoint", "show"))
    assert len(our_subflows(lab)) >= 1, "the connection lost its other subflows"

    # flush: one REMOVE_ADDR for what we announced (path 2); its join closes, the
    # initial subflow stays
    path2 = lab.addresses("server")[1]
    before = lab.nstat("client")
    assert path2 in [e["address"] for e in ok_json(lab, "endpoint", "flush")]
    assert ok_json(lab, "endpoint", "show") == []
    wait_for(grew(lab, before, "RmAddr"), 30, "the kernel's RmAddr after the flush")
    wait_for(lambda: not [s for s in our_subflows(lab) if path2 in str(s.get("local"))
                          and s.get("state") == "ESTABLISHED"], 30,
             "the subflow to path 2 to close", lambda: cli(lab, "subflow", "show").stdout)
    assert our_subflows(lab), "the flush closed the initial subflow"

    wanted = ("endpoint_added", "announced", "sf_priority", "removed", "endpoint_removed",
              "limits_set")
    events = read_events(monitor.stdout, wanted, 30)
    for kind in wanted:
        assert any(e.get("type") == kind for e in events), f"monitor missed {kind!r}: {events}"
