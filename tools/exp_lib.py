#!/usr/bin/env python3
"""Shared parts of the experiments (tools/exp_*.py): kernel peers that speak the
`mptcp-bpf perf` protocol, our stack's perf run inside a lab node, goodput windows,
tables, JSON and PNG output.

Run as a script inside a lab node for the kernel sides:
  exp_lib.py kserve --port P [--tcp-port Q] [--conns N] [--max-time S]
      kernel MPTCP (and plain TCP) perf server; samples each connection's received bytes
      every 0.2 s; prints {"ready": true}, then one JSON document when done
  exp_lib.py kclient HOST --port P [-t S | -n BYTES] [-R] [--tcp] [--cc C] [--bind A]
      kernel perf client (MPTCP unless --tcp); prints one JSON line
  exp_lib.py kecho --port P      kernel MPTCP echo server (request/response experiments)

Protocol (as mptcp_bpf/cli/commands/perf.py): the client sends one JSON line
{"reverse", "seconds", "bytes"}; the sender half-closes when done; the receiver answers
{"bytes", "seconds"}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PY = sys.executable
IPPROTO_MPTCP = 262
BLOCK = 256 * 1024
SAMPLE = 0.2


# ------------------------------------------------------------------ kernel perf peers
def _read_line(sock: socket.socket, limit: int = 4096) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
        if len(data) > limit:
            raise ValueError("header too long")
    return data


def _send_for(sock: socket.socket, seconds: float | None, nbytes: int | None) -> int:
    view = memoryview(os.urandom(BLOCK))
    sent = 0
    deadline = None if seconds is None else time.monotonic() + seconds
    while True:
        if nbytes is not None:
            if sent >= nbytes:
                break
            n = sock.send(view[:min(BLOCK, nbytes - sent)])
        else:
            if time.monotonic() >= deadline:  # type: ignore[operator]
                break
            n = sock.send(view)
        sent += n
    sock.shutdown(socket.SHUT_WR)
    return sent


class _Conn:
    def __init__(self, sock: socket.socket, peer: Any, proto: str, t0: float) -> None:
        self.sock, self.peer, self.proto = sock, peer, proto
        self.t0 = t0
        self.start = time.monotonic() - t0
        self.end: float | None = None
        self.bytes = 0
        self.sent = 0
        self.header: dict[str, Any] = {}
        self.samples: list[list[float]] = [[round(self.start, 3), 0]]
        self.error = ""

    def run(self) -> None:
        s = self.sock
        try:
            self.header = json.loads(_read_line(s) or b"{}")
            t_start = time.monotonic()
            if self.header.get("reverse"):
                self.sent = _send_for(s, self.header.get("seconds"), self.header.get("bytes"))
                _read_line(s)
            else:
                buf = bytearray(BLOCK)
                while True:
                    n = s.recv_into(buf)
                    if not n:
                        break
                    self.bytes += n
                el = time.monotonic() - t_start
                s.sendall(json.dumps({"bytes": self.bytes, "seconds": el}).encode() + b"\n")
                s.shutdown(socket.SHUT_WR)
                s.settimeout(5)
                try:
                    while s.recv(4096):
                        pass
                except OSError:
                    pass
        except (OSError, ValueError) as exc:
            self.error = str(exc)
        finally:
            self.end = time.monotonic() - self.t0
            self.samples.append([round(self.end, 3), self.bytes])
            s.close()

    def row(self) -> dict[str, Any]:
        return {"peer": f"{self.peer[0]}:{self.peer[1]}", "proto": self.proto, "header": self.header,
                "bytes": self.bytes, "sent": self.sent, "start": round(self.start, 3),
                "end": None if self.end is None else round(self.end, 3),
                "samples": self.samples, "error": self.error}


def kserve(port: int, tcp_port: int | None, conns: int, max_time: float, cc: str = "") -> dict:
    listeners = []
    for p, proto in ((port, IPPROTO_MPTCP), (tcp_port, 0)):
        if not p:
            continue
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM, proto)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if cc:
            ls.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())
        ls.bind(("", p))
        ls.listen(16)
        listeners.append((ls, "mptcp" if proto else "tcp"))
    t0 = time.monotonic()
    print(json.dumps({"ready": True}), flush=True)
    done: list[_Conn] = []
    threads: list[threading.Thread] = []
    stop = threading.Event()

    def sampler() -> None:
        while not stop.wait(SAMPLE):
            t = round(time.monotonic() - t0, 3)
            for c in list(done):
                if c.end is None:
                    c.samples.append([t, c.bytes])

    st = threading.Thread(target=sampler, daemon=True)
    st.start()
    while time.monotonic() - t0 < max_time:
        if conns and len(done) >= conns and all(c.end is not None for c in done):
            break
        r, _, _ = select.select([l for l, _ in listeners], [], [], 0.2)
        for ls, proto in listeners:
            if ls in r:
                s, peer = ls.accept()
                c = _Conn(s, peer, proto, t0)
                print(json.dumps({"accepted": proto, "peer": f"{peer[0]}:{peer[1]}",
                                  "t": round(c.start, 3)}), flush=True)
                done.append(c)
                th = threading.Thread(target=c.run, daemon=True)
                th.start()
                threads.append(th)
    stop.set()
    for th in threads:
        th.join(2)
    return {"conns": [c.row() for c in done]}


def kclient(host: str, port: int, seconds: float | None, nbytes: int | None, reverse: bool,
            tcp: bool, cc: str, bind: str) -> dict:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0 if tcp else IPPROTO_MPTCP)
    if cc:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())
    if bind:
        s.bind((bind, 0))
    t0 = time.monotonic()
    s.connect((host, port))
    header = {"reverse": reverse, "seconds": seconds, "bytes": nbytes}
    s.sendall(json.dumps(header).encode() + b"\n")
    if reverse:
        got = 0
        buf = bytearray(BLOCK)
        while True:
            n = s.recv_into(buf)
            if not n:
                break
            got += n
        elapsed = time.monotonic() - t0
        s.sendall(json.dumps({"bytes": got, "seconds": elapsed}).encode() + b"\n")
        s.shutdown(socket.SHUT_WR)
        out = {"bytes": got, "elapsed": elapsed}
    else:
        sent = _send_for(s, seconds, nbytes)
        peer = json.loads(_read_line(s) or b"{}")
        elapsed = time.monotonic() - t0
        out = {"bytes": peer.get("bytes", 0), "sent": sent, "elapsed": elapsed}
    s.close()
    return out


def kecho(port: int, max_time: float) -> None:
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("", port))
    ls.listen(8)
    print(json.dumps({"ready": True}), flush=True)

    def serve(c: socket.socket) -> None:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                d = c.recv(65536)
                if not d:
                    break
                c.sendall(d)
        except OSError:
            pass
        finally:
            c.close()

    ls.settimeout(1.0)
    t0 = time.monotonic()
    while time.monotonic() - t0 < max_time:
        try:
            c, _ = ls.accept()
        except socket.timeout:
            continue
        threading.Thread(target=serve, args=(c,), daemon=True).start()


# ------------------------------------------------------------------ orchestration helpers
def lib_argv(*args: str) -> list[str]:
    """argv running this file's kernel tools with our interpreter."""
    return [PY, str(Path(__file__).resolve()), *args]


def ours_argv(*args: str) -> list[str]:
    """argv of the `mptcp-bpf` command (our stack)."""
    return [PY, "-m", "mptcp_bpf", *args]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


def popen(lab: Any, node: str, argv: list[str]) -> subprocess.Popen:
    return lab.popen(node, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                     cwd=str(ROOT), env=env(), start_new_session=True)


class LineProc:
    """A started tool whose stdout and stderr lines are collected by threads, so the
    caller can wait for a line without blocking on a pipe."""

    def __init__(self, proc: subprocess.Popen, what: str) -> None:
        self.proc, self.what = proc, what
        self.out: list[str] = []
        self.err: list[str] = []
        self._cv = threading.Condition()
        self._threads = [threading.Thread(target=self._pump, args=(f, lst), daemon=True)
                         for f, lst in ((proc.stdout, self.out), (proc.stderr, self.err))]
        for th in self._threads:
            th.start()

    def _pump(self, f: Any, lst: list[str]) -> None:
        for line in f:
            with self._cv:
                lst.append(line)
                self._cv.notify_all()
        with self._cv:
            self._cv.notify_all()

    def wait_for(self, text: str, timeout: float, stream: str = "out", count: int = 1) -> bool:
        """Wait until `count` lines of the stream contain `text`; False on timeout or exit."""
        lst = self.out if stream == "out" else self.err
        deadline = time.monotonic() + timeout
        with self._cv:
            while sum(text in l for l in lst) < count:
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not any(t.is_alive() for t in self._threads)):
                    return False
                self._cv.wait(min(left, 0.5))
        return True

    def finish(self, timeout: float) -> dict[str, Any]:
        """Wait for the exit (kill after `timeout`); the last JSON line of stdout."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill(self.proc)
        for th in self._threads:
            th.join(5)
        return last_json("".join(self.out))

    def stop(self) -> None:
        kill(self.proc)
        for th in self._threads:
            th.join(5)

    def tail(self, n: int = 1500) -> str:
        """The end of stderr, with the exit status when it has exited."""
        rc = self.proc.poll()
        return (f"[{self.what}: exit {rc}] " if rc is not None else f"[{self.what}: running] ") + \
            ("".join(self.err))[-n:]


def kill(proc: subprocess.Popen) -> None:
    """Stop a process we started (its own session: ip netns exec + the tool)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, 15)
        except ProcessLookupError:
            pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, 9)
            except ProcessLookupError:
                pass
            proc.wait(5)


def last_json(text: str) -> dict[str, Any]:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return {}


def start(lab: Any, node: str, argv: list[str], what: str, ready: str | None = None,
          stream: str = "out", timeout: float = 90.0) -> LineProc:
    """Start a tool in a node; wait for its `ready` text when given."""
    lp = LineProc(popen(lab, node, argv), what)
    if ready and not lp.wait_for(ready, timeout, stream):
        lp.stop()
        raise RuntimeError(f"{what} did not start: {lp.tail()}")
    return lp


def start_kserve(lab: Any, port: int = 5201, tcp_port: int | None = None, conns: int = 0,
                 max_time: float = 120.0, node: str = "server", cc: str = "") -> LineProc:
    """Kernel perf server; prints {"accepted": ...} per connection."""
    args = ["kserve", "--port", str(port), "--conns", str(conns), "--max-time", str(max_time)]
    if cc:
        args += ["--cc", cc]
    if tcp_port:
        args += ["--tcp-port", str(tcp_port)]
    return start(lab, node, lib_argv(*args), "kernel perf server", '"ready"', timeout=30)


def start_ours_server(lab: Any, port: int = 5201, extra: list[str] | None = None,
                      node: str = "server", timeout: float = 90.0) -> LineProc:
    return start(lab, node, ours_argv("perf", "-s", "-1", "-J", "-p", str(port), *(extra or [])),
                 "our perf server", "listening", "err", timeout)


def window_bytes(samples: list[list[float]], a: float, b: float) -> float:
    """Bytes received between times a and b from cumulative samples (linear in between)."""
    def at(t: float) -> float:
        if not samples:
            return 0.0
        if t <= samples[0][0]:
            return samples[0][1]
        for (t1, v1), (t2, v2) in zip(samples, samples[1:]):
            if t1 <= t <= t2:
                return v1 if t2 == t1 else v1 + (v2 - v1) * (t - t1) / (t2 - t1)
        return samples[-1][1]
    return max(0.0, at(b) - at(a))


def overlap(conns: list[dict[str, Any]], warmup: float) -> tuple[float, float]:
    """The window when every connection was running, minus a warm-up at its start."""
    a = max(c["start"] for c in conns) + warmup
    b = min(c["end"] for c in conns)
    return a, b


def subflow_series(perf_json: dict[str, Any]) -> dict[str, tuple[list[float], list[float]]]:
    """'local->remote' -> (times, Mbit/s) from `mptcp-bpf perf -J` intervals."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    prev = 0.0
    for iv in perf_json.get("intervals", []):
        t = float(iv.get("t", 0))
        dt = t - prev
        prev = t
        if dt <= 0.05:
            continue
        for sf in iv.get("subflows", []):
            key = sf.get("pair") or f"{sf.get('local')}->{sf.get('remote')}"
            ts, ms = out.setdefault(key, ([], []))
            ts.append(t)
            ms.append(int(sf.get("bytes") or 0) * 8 / dt / 1e6)
    return out


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.2f}"
    return "-" if v is None else str(v)


def outputs(out_dir: str, name: str) -> tuple[Path, Path]:
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    return d / f"{name}.json", d / f"{name}.png"


def write_json(path: Path, doc: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)


def pyplot():  # type: ignore[no-untyped-def]
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def common_args(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument("--fast", action="store_true", help="short CI version")
    p.add_argument("--out", default="exp-results", help="directory for the JSON and PNG (exp-results)")
    p.add_argument("--lab", default=f"mpbe{name}", help=f"lab name (mpbe{name})")
    p.add_argument("--keep", action="store_true", help="leave the lab up afterwards")


def fresh_lab(name: str, **kw: Any) -> Any:
    from mptcp_bpf.lab import Lab
    Lab.remove(name)
    return Lab.up(name, **kw)


def kernel_mptcp_server(lab: Any, subflows: int = 8, signal: list[str] | None = None) -> None:
    lab.sysctl("server", {"net.mptcp.enabled": 1})
    lab.mptcp("server", limits={"subflows": subflows, "add_addr_accepted": 8},
              endpoints=[f"{a} signal" for a in (signal or [])])


@contextlib.contextmanager
def fast_path(lab: Any, nodes: list[str]):  # type: ignore[no-untyped-def]
    """Attach and pin our XDP fast path on the nodes' devices once (compiled once in this
    process), so each `mptcp-bpf perf` run reuses it instead of compiling for seconds; on
    exit detach and unpin it again."""
    from mptcp_bpf.datapath.loader import FastPath
    loaded = []
    try:
        for node in nodes:
            devs = [d for d in lab.devices(node)]
            loaded.append((FastPath.load(devs, netns=lab.ns(node)), devs))
        yield
    finally:
        for fp, devs in loaded:
            try:
                fp.unload(devs, force=True)
            except Exception as exc:  # the lab's teardown removes the devices anyway
                print(f"fast path unload: {exc}", file=sys.stderr)


def cleanup_lab(name: str) -> list[str]:
    """Remove lab `name` and any fast-path pins left in its namespaces (after a killed run).
    Returns what was found left over afterwards (empty = clean)."""
    from mptcp_bpf.datapath import pins
    from mptcp_bpf.lab import Lab
    from mptcp_bpf.lab.testing import leftovers
    lab = Lab.find(name)
    if lab is not None:
        for node in lab.nodes():
            try:
                path = pins.pin_dir(lab.ns(node))
            except Exception:
                continue
            if os.path.isdir(path):
                try:
                    from mptcp_bpf.datapath.loader import FastPath
                    fp = FastPath.open_pinned(lab.ns(node))
                    fp.unload([d for d in lab.devices(node)], force=True)
                except Exception:
                    pins.remove_dir(path)
    Lab.remove(name)
    return leftovers(name)


def compact(perf: dict[str, Any]) -> list[dict[str, Any]]:
    """A perf -J run's intervals without the per-interval address strings."""
    out = []
    for iv in perf.get("intervals", []):
        out.append({"t": iv.get("t"), "subflows": [
            {"id": s.get("id"), "pair": f"{s.get('local')}->{s.get('remote')}", "bytes": s.get("bytes"),
             "rtt_ms": s.get("rtt_ms"), "cwnd": s.get("cwnd")} for s in iv.get("subflows", [])]})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="exp_lib.py", description="kernel sides of the experiments")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("kserve")
    s.add_argument("--port", type=int, default=5201)
    s.add_argument("--tcp-port", type=int)
    s.add_argument("--conns", type=int, default=0)
    s.add_argument("--max-time", type=float, default=120)
    s.add_argument("--cc", default="")
    c = sub.add_parser("kclient")
    c.add_argument("host")
    c.add_argument("--port", type=int, default=5201)
    c.add_argument("-t", type=float)
    c.add_argument("-n", type=int)
    c.add_argument("-R", action="store_true")
    c.add_argument("--tcp", action="store_true")
    c.add_argument("--cc", default="")
    c.add_argument("--bind", default="")
    e = sub.add_parser("kecho")
    e.add_argument("--port", type=int, default=7)
    e.add_argument("--max-time", type=float, default=300)
    a = p.parse_args(argv)
    if a.cmd == "kserve":
        print(json.dumps(kserve(a.port, a.tcp_port, a.conns, a.max_time, a.cc)), flush=True)
    elif a.cmd == "kclient":
        secs = a.t if a.t is not None or a.n is not None else 10.0
        print(json.dumps(kclient(a.host, a.port, secs, a.n, a.R, a.tcp, a.cc, a.bind)), flush=True)
    else:
        kecho(a.port, a.max_time)
    return 0


if __name__ == "__main__":
    sys.exit(main())
