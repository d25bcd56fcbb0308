"""Helpers for tests that use labs: leak checks and traffic runs with bounded time.

`leftovers(name)` lists what a lab could leave behind (namespaces, pins, state, processes,
its BPF program); a test fixture asserts it is empty after `Lab.remove`, also when the
test failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from mptcp_bpf.lab import bpfmap, sh, state
from mptcp_bpf.lab.topology import Lab

ROOT = str(Path(__file__).resolve().parents[2])


def _procs_mentioning(text: str) -> list[int]:
    out = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ")
        except OSError:
            continue
        if b"mptcp_bpf.lab" in cmd and text.encode() in cmd:
            out.append(int(entry))
    return out


def leftovers(name: str, prog_id: int = 0, timeout: float = 15.0) -> list[str]:
    """What lab `name` left behind (empty list = clean). Waits up to `timeout` for the
    kernel's asynchronous namespace cleanup to free the BPF program."""
    found: list[str] = []
    prefix = state.ns_prefix(name) + "-"
    found += [f"netns {n}" for n in sh.list_netns(prefix)]
    if os.path.exists(bpfmap.pin_dir(name)):
        found.append(f"pins {bpfmap.pin_dir(name)}")
    if os.path.exists(state.state_path(name)):
        found.append(f"state {state.state_path(name)}")
    found += [f"process {pid}" for pid in _procs_mentioning(name)]
    if prog_id:
        deadline = time.monotonic() + timeout
        while bpfmap.prog_exists(prog_id) and time.monotonic() < deadline:
            time.sleep(0.1)
        if bpfmap.prog_exists(prog_id):
            found.append(f"bpf program id {prog_id}")
    return found


def remove_and_check(name: str) -> list[str]:
    """Remove lab `name` and return what it left behind (namespaces, pins, processes, its
    BPF program): the check every lab test ends with."""
    found = Lab.find(name)
    prog = found.state.get("prog_id", 0) if found else 0
    Lab.remove(name)
    return leftovers(name, prog)


@contextlib.contextmanager
def checked_lab(name: str, **kwargs: Any) -> Iterator[Lab]:
    """A lab for one test: a stale one of that name is removed first; on exit the lab is
    removed and anything left behind fails the test."""
    Lab.remove(name)
    made = Lab.up(name, **kwargs)
    try:
        yield made
    finally:
        problems = remove_and_check(name)
        assert not problems, f"left behind: {problems}"


def py(module: str, *args: str) -> list[str]:
    """argv running one of our modules with this interpreter (works under `ip netns exec`)."""
    return [sys.executable, "-m", module, *args]


def start(lab: Lab, node: str, module: str, *args: str) -> subprocess.Popen:
    """Start `python -m module args` in a node; returns after its first line ('ready')."""
    proc = lab.popen(node, py(module, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if '"ready"' not in line:
        proc.kill()
        err = proc.communicate(timeout=10)[1]
        raise RuntimeError(f"{module} {args} did not start: {line!r} {err[-2000:]}")
    return proc


def finish(proc: subprocess.Popen, timeout: float) -> dict[str, Any]:
    """Wait for a started tool and parse its JSON result line; kill it on timeout."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
        raise RuntimeError(f"timed out after {timeout} s: {err[-2000:]}")
    lines = [l for l in out.splitlines() if l.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"exit {proc.returncode}: {err[-2000:]}")
    return json.loads(lines[-1])


def run(lab: Lab, node: str, module: str, *args: str, timeout: float = 120) -> dict[str, Any]:
    """Run `python -m module args` in a node to completion; its JSON result."""
    proc = lab.popen(node, py(module, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return finish(proc, timeout)


def ping_rtts(lab: Lab, dst: str, count: int = 20, interval: float = 0.05, node: str = "client",
              size: int = 56) -> list[float]:
    """RTTs in ms of `count` pings from node to dst (lost ones are missing)."""
    out = lab.exec(node, ["ping", "-n", "-c", str(count), "-i", str(interval), "-s", str(size),
                          "-W", "2", dst], capture_output=True, text=True,
                   timeout=count * interval + 30).stdout
    rtts = []
    for line in out.splitlines():
        if "time=" in line:
            rtts.append(float(line.split("time=")[1].split()[0]))
    return rtts
