"""The control socket across processes and namespaces: `ip netns exec NS mptcp-bpf ...`
finds the stack of NS (by its netns inode), and another namespace says none runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import leftover_namespaces

pytestmark = pytest.mark.priv

PY = sys.executable
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NS_A, NS_B = "mpbp-ctl-a", "mpbp-ctl-b"

FAKE_STACK = r"""
import sys, threading
from mptcp_bpf import control

class Stack:
    subs = []
    def conn_infos(self):
        return [{"token": "0badcafe", "state": "ESTABLISHED", "version": 1,
                 "subflows": [{"id": 0, "local": "10.9.0.1:1", "remote": "10.9.0.2:2",
                               "state": "ESTABLISHED", "rtt": 0.001, "cwnd": 14480}]}]
    def stats(self): return {"MPCapableSYNRX": 3}
    def endpoints(self): return [{"id": 1, "address": "10.9.0.1", "flags": ["signal"]}]
    def limits(self): return {"subflows": 32, "add_addr_accepted": 8}
    def subscribe(self, cb):
        self.subs.append(cb)
        return lambda: None

st = Stack()
srv = control.ControlServer(st).start()
print(srv.path, flush=True)
try:
    for line in sys.stdin:          # each input line becomes a monitor event
        for cb in list(st.subs):
            cb({"type": line.strip(), "token": "0badcafe"})
finally:
    srv.stop()
"""


def run_in(ns: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, PY, "-m", "mptcp_bpf", *argv],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture
def namespaces():
    for ns in (NS_A, NS_B):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "add", ns], check=True, timeout=30)
    try:
        yield NS_A, NS_B
    finally:
        for ns in (NS_A, NS_B):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        assert not [n for n in leftover_namespaces("mpbp-ctl")]


@pytest.fixture
def stack_in_a(namespaces):
    proc = subprocess.Popen(["ip", "netns", "exec", NS_A, PY, "-c", FAKE_STACK],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    path = None
    try:
        path = proc.stdout.readline().strip()
        assert path.endswith(".sock"), proc.stderr.read() if proc.poll() is not None else path
        yield proc, path
    finally:
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)
        if path and os.path.exists(path):
            os.unlink(path)


def test_cli_finds_the_stack_of_its_namespace(stack_in_a):
    proc, path = stack_in_a
    inode = os.stat(f"/run/netns/{NS_A}").st_ino
    assert os.path.basename(path) == f"{inode}.sock"
    r = run_in(NS_A, "-j", "conn", "show")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["token"] == "0badcafe"
    r = run_in(NS_A, "subflow", "show")
    assert r.returncode == 0 and "10.9.0.1:1 -> 10.9.0.2:2" in r.stdout, r.stderr
    r = run_in(NS_A, "limits", "show")
    assert r.stdout.strip() == "subflows 32 add_addr_accepted 8"
    r = run_in(NS_A, "-j", "plugin", "set", "sched.roundrobin.num_segments=2")
    assert r.returncode == 0 and json.loads(r.stdout)[0]["value"] == 2, r.stderr
    r = run_in(NS_B, "conn", "show")
    assert r.returncode == 1
    assert "no mptcp-bpf stack runs in this network namespace" in r.stderr


def test_monitor_across_processes(stack_in_a):
    proc, path = stack_in_a
    mon = subprocess.Popen(["ip", "netns", "exec", NS_A, PY, "-m", "mptcp_bpf", "monitor",
                            "-n", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, cwd=ROOT)
    try:
        # events are only delivered to subscribed monitors: feed until two arrive
        import time
        deadline = time.monotonic() + 60
        while mon.poll() is None and time.monotonic() < deadline:
            proc.stdin.write("created\n")
            proc.stdin.flush()
            time.sleep(0.3)
        out, err = mon.communicate(timeout=30)
    finally:
        if mon.poll() is None:
            mon.kill()
            mon.wait(timeout=20)
    assert mon.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 2 and all("CREATED" in x and "token=0badcafe" in x for x in lines)
