"""Helpers of the stack's privileged tests: a kernel MPTCP peer script, our side through
`mptcp-bpf nc`, sha256 of files, kernel MIB deltas, and the clean-up of pins and labs."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import time
from typing import Any, Iterator

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PY = os.path.join(ROOT, ".venv", "bin", "python")
if not os.path.exists(PY):
    PY = sys.executable

# A kernel peer: listen|connect, send|recv a file, MPTCP (262) or plain TCP.
KPEER = r'''
import socket, sys, time
role, fam, addr, port, mode, path, mptcp = sys.argv[1:8]
F = socket.AF_INET6 if fam in ("6", "46") else socket.AF_INET
proto = 262 if mptcp == "1" else 0
def xfer(c):
    c.settimeout(120)
    if mode == "send":
        with open(path, "rb") as f:
            while True:
                b = f.read(1 << 16)
                if not b:
                    break
                c.sendall(b)
        c.shutdown(socket.SHUT_WR)
        while c.recv(65536):
            pass
    else:
        with open(path, "wb") as f:
            while True:
                b = c.recv(1 << 16)
                if not b:
                    break
                f.write(b)
    c.close()
if role == "listen":
    s = socket.socket(F, socket.SOCK_STREAM, proto)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == "46":  # dual stack: IPv4 connections, and joins to IPv6 addresses
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("", int(port)))
    s.listen(8)
    print("ready", flush=True)
    s.settimeout(120)
    c, a = s.accept()
    xfer(c)
else:
    deadline = time.time() + 30
    while True:
        c = socket.socket(F, socket.SOCK_STREAM, proto)
        c.settimeout(20)
        try:
            c.connect((addr, int(port)))
            break
        except (ConnectionRefusedError, socket.timeout, OSError):
            c.close()
            if time.time() > deadline:
                raise
            time.sleep(0.2)
    xfer(c)
print("done", flush=True)
'''

BAD_COUNTERS = ("DataCsumErr", "MPCapableFallbackACK", "MPCapableFallbackSYNACK",
                "MPJoinSynAckHMacFailure", "MPJoinAckHMacFailure", "DSSCorruptionFallback",
                "DssFallback", "InfiniteMapTx", "InfiniteMapRx")


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def make_file(path: str, size: int) -> str:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 1 << 20)
            f.write(os.urandom(n))
            left -= n
    return sha256_file(path)


def kpeer_script(tmp: str) -> str:
    path = os.path.join(tmp, "kpeer.py")
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write(KPEER)
    return path


def nc_argv(*args: str) -> list[str]:
    return [PY, "-m", "mptcp_bpf", "nc", *args]


def finish(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, str]]:
    """Wait for all (bounded); kill leftovers; returns (rc, stderr) for each."""
    deadline = time.monotonic() + timeout
    out = []
    for p in procs:
        left = max(deadline - time.monotonic(), 0.1)
        try:
            _, err = p.communicate(timeout=left)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
            err = (err or b"") + b"\n[killed: timeout]"
        out.append((p.returncode, (err or b"").decode(errors="replace")[-3000:]))
    return out


def kill_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items()}


def remove_pins(ns: str) -> None:
    """Remove what our stack pinned for namespace `ns` (fast path, sysctls)."""
    try:
        from mptcp_bpf.datapath import pins
        path = pins.pin_dir(ns)
        if os.path.exists(path):
            pins.remove_dir(path)
    except Exception:
        pass


def preload(lab: Any, nodes: tuple[str, ...] = ("client", "server")) -> None:
    """`mptcp-bpf load` on the nodes' devices: every stack started later reuses the pinned
    fast path instead of compiling it again (and leaves it attached when it exits)."""
    for node in nodes:
        r = lab.exec(node, [PY, "-m", "mptcp_bpf", "load", *lab.devices(node)],
                     capture_output=True, text=True, timeout=180)
        if r.returncode != 0:
            raise RuntimeError(f"mptcp-bpf load failed in {node}: {r.stderr[-2000:]}")


@contextlib.contextmanager
def lab_for(name: str, fast_path: tuple[str, ...] = ("client", "server"),
            **kw: Any) -> Iterator[Any]:
    """A lab (with our fast path loaded on `fast_path` nodes) that is removed with its pins
    even when the test fails."""
    from mptcp_bpf.lab.topology import Lab
    Lab.remove(name)
    lab = Lab.up(name, **kw)
    try:
        preload(lab, fast_path)
        yield lab
    finally:
        for node in ("client", "server"):
            try:
                remove_pins(lab.ns(node))
            except Exception:
                pass
        lab.down()


def set_our_sysctl(lab: Any, node: str, **values: Any) -> None:
    """net.mptcp.* of our stack in a node (through `mptcp-bpf sysctl -w`)."""
    for k, v in values.items():
        r = lab.exec(node, [PY, "-m", "mptcp_bpf", "sysctl", "-w", f"net.mptcp.mptcp_{k}={v}"],
                     capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"sysctl {k}={v} failed: {r.stderr}")


# A kernel MPTCP client: connects (retrying while our server starts), sends argv[3] bytes,
# prints "connected", then holds the connection open until its stdin closes.
KERNEL_HOLDER = r'''
import socket, sys, time
deadline = time.time() + 30
while True:
    c = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
    try:
        c.connect((sys.argv[1], int(sys.argv[2])))
        break
    except OSError:
        c.close()
        if time.time() > deadline:
            raise
        time.sleep(0.2)
c.sendall(b"x" * int(sys.argv[3]))
print("connected", flush=True)
sys.stdin.read()
c.close()
'''


def mptcp_cli(lab: Any, node: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """`mptcp-bpf ARGS...` in a lab node, output captured as text."""
    return lab.exec(node, [PY, "-m", "mptcp_bpf", *args], capture_output=True, text=True,
                    timeout=timeout)


def wait_for(fn: Any, timeout: float, what: str, extra: Any = None) -> Any:
    """Poll fn() until it returns something true; fail naming `what` (and extra()) if not."""
    import pytest
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}; last: {last!r} {extra() if extra else ''}")


def read_events(stream: Any, wanted: tuple[str, ...], timeout: float) -> list[dict]:
    """JSON lines of `mptcp-bpf -j monitor` until every type in `wanted` was seen (or the
    stream ends, or `timeout` passes): the events read."""
    import json
    events: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(
            any(e.get("type") == k for e in events) for k in wanted):
        line = stream.readline()
        if not line:
            break
        events.append(json.loads(line))
    return events
