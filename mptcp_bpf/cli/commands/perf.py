"""`mptcp-bpf perf`: iperf3-like goodput over our MPTCP stack, per subflow.

Protocol between our client and server: the client sends one JSON line
{"reverse": bool, "seconds": float|null, "bytes": int|null}, then the data flows from the
client (or, with -R, from the server) until the time or byte budget is spent and the
sender half-closes; the receiver answers with one JSON line {"bytes": n, "seconds": s}.

-J prints {"intervals": [{"t", "bytes", "subflows": [{"id", "bytes", "rtt_ms", "cwnd"}]}],
"end": {...}}, the format `mptcp-bpf plot` draws (docs/PLUGINS.md §5).
"""

from __future__ import annotations

import argparse
import json
import os
import socket as _socket
import sys
import threading
import time
from typing import Any

from mptcp_bpf.cli.commands.nc import (add_stack_options, linger_close, make_stack, new_socket,
                                       parse_port, resolve, shutdown_stack)
from mptcp_bpf.errors import HintedError

DEFAULT_PORT = 5201
BLOCK = 256 * 1024


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("perf", help="measure goodput (iperf3-like) over our MPTCP stack",
                       description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("-s", "--server", action="store_true", help="run a server")
    mode.add_argument("-c", "--client", metavar="HOST", help="connect to a perf server")
    p.add_argument("-p", "--port", type=int, default=DEFAULT_PORT, help="port (5201)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("-t", "--time", type=float, metavar="SECS", help="seconds to send (10)")
    budget.add_argument("-n", "--bytes", metavar="BYTES", help="bytes to send (K/M/G suffixes)")
    p.add_argument("-R", "--reverse", action="store_true", help="the server sends")
    p.add_argument("-J", "--json-out", action="store_true", help="print a JSON report")
    p.add_argument("-i", "--interval", type=float, default=1.0, help="progress interval (1 s)")
    p.add_argument("-1", "--one-off", action="store_true", help="server: one test, then exit")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    add_stack_options(p)
    p.set_defaults(func=run)


def parse_size(text: str) -> int:
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper()
    try:
        if t and t[-1] in mult:
            return int(float(t[:-1]) * mult[t[-1]])
        return int(t)
    except ValueError:
        raise HintedError(f"bad byte count {text!r}", "e.g. -n 16M or -n 1048576") from None


class Monitor:
    """Samples the connection's subflows every interval; prints and keeps the series."""

    def __init__(self, sock: Any, interval: float, sending: bool, quiet: bool,
                 out: Any = sys.stderr) -> None:
        self.sock = sock
        self.interval = max(interval, 0.1)
        self.sending = sending
        self.quiet = quiet
        self.out = out
        self.intervals: list[dict] = []
        self.t0 = time.monotonic()
        self._last: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.app_bytes = 0

    def start(self) -> "Monitor":
        self.t0 = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        try:
            info = self.sock.info()
        except Exception:
            return
        t = time.monotonic() - self.t0
        key = "bytes_sent" if self.sending else "bytes_received"
        subs = []
        total = 0
        for sf in info.get("subflows", []):
            sid = int(sf.get("id", 0))
            cum = int(sf.get(key, 0) or 0)
            delta = cum - self._last.get(sid, 0)
            self._last[sid] = cum
            total += delta
            rtt = sf.get("rtt")
            subs.append({"id": sid, "bytes": delta, "total": cum,
                         "rtt_ms": round(rtt * 1000, 3) if rtt else None,
                         "cwnd": sf.get("cwnd"), "local": sf.get("local"),
                         "remote": sf.get("remote"), "state": sf.get("state")})
        prev_t = self.intervals[-1]["t"] if self.intervals else 0.0
        if t - prev_t < 0.05 and self.intervals:
            return
        self.intervals.append({"t": round(t, 3), "bytes": total, "subflows": subs})
        if not self.quiet:
            dt = max(t - prev_t, 1e-6)
            parts = " ".join(f"sf{s['id']}={s['bytes'] * 8 / dt / 1e6:.1f}Mb/s"
                             f"(rtt={s['rtt_ms'] or 0:.1f}ms,cwnd={s['cwnd']})" for s in subs)
            print(f"[{prev_t:5.1f}-{t:5.1f} s] {total * 8 / dt / 1e6:8.2f} Mbit/s  {parts}",
                  file=self.out, flush=True)


def send_data(sock: Any, seconds: float | None, nbytes: int | None) -> int:
    block = os.urandom(BLOCK)
    view = memoryview(block)
    sent = 0
    deadline = None if seconds is None else time.monotonic() + seconds
    while True:
        if nbytes is not None:
            left = nbytes - sent
            if left <= 0:
                break
            chunk = view[:min(left, BLOCK)]
        else:
            if time.monotonic() >= deadline:  # type: ignore[operator]
                break
            chunk = view
        sent += sock.send(chunk)
    sock.shutdown(_socket.SHUT_WR)
    return sent


def recv_data(sock: Any) -> int:
    got = 0
    buf = bytearray(BLOCK)
    while True:
        n = sock.recv_into(buf)
        if not n:
            return got
        got += n


def read_line(sock: Any, limit: int = 4096) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
        if len(data) > limit:
            raise HintedError("perf peer sent a bad header", "is it a mptcp-bpf perf peer?")
    return data


def run(args: argparse.Namespace) -> int:
    if args.server:
        return run_server(args)
    return run_client(args)


def run_client(args: argparse.Namespace) -> int:
    port = parse_port(args.port)
    nbytes = parse_size(args.bytes) if args.bytes else None
    seconds = None if nbytes is not None else (args.time or 10.0)
    fam, ip = resolve(args.client, args.family)
    stack = make_stack(args)
    try:
        sock = new_socket(args, fam, stack)
        try:
            sock.connect((ip, port))
        except OSError as exc:
            sock.close()
            raise HintedError(f"cannot connect to {args.client} port {port}: "
                              f"{exc.strerror or exc}", "is `mptcp-bpf perf -s` running there?")
        header = {"reverse": args.reverse, "seconds": seconds, "bytes": nbytes}
        sock.sendall(json.dumps(header).encode() + b"\n")
        mon = Monitor(sock, args.interval, not args.reverse, args.quiet or args.json_out).start()
        t0 = time.monotonic()
        if args.reverse:
            count = recv_data(sock)
            elapsed = time.monotonic() - t0
            sock.sendall(json.dumps({"bytes": count, "seconds": elapsed}).encode() + b"\n")
            sock.shutdown(_socket.SHUT_WR)
            peer = {}
        else:
            count = send_data(sock, seconds, nbytes)
            line = read_line(sock)
            elapsed = time.monotonic() - t0
            peer = json.loads(line or b"{}")
        mon.stop()
        info = sock.info()
        linger_close(sock)
        received = peer.get("bytes", count) if not args.reverse else count
        secs = peer.get("seconds", elapsed) if not args.reverse else elapsed
        end = {"bytes": received, "seconds": round(secs, 3),
               "goodput_bps": int(received * 8 / max(secs, 1e-6)),
               "sender_bytes": count if not args.reverse else None,
               "reverse": args.reverse,
               "subflows": max([len(iv["subflows"]) for iv in mon.intervals] or [0]),
               "fallback": info.get("fallback"), "version": info.get("version"),
               "csum": info.get("csum"), "path_manager": info.get("path_manager"),
               "scheduler": info.get("scheduler"), "cc": info.get("cc")}
        ok = (nbytes is None or received == nbytes) and received > 0
        if args.json_out:
            print(json.dumps({"intervals": mon.intervals, "end": end}))
        else:
            print(f"{'receiver' if not args.reverse else 'received'}: {received} bytes in "
                  f"{secs:.2f} s = {end['goodput_bps'] / 1e6:.2f} Mbit/s over "
                  f"{end['subflows']} subflow(s)")
        return 0 if ok else 1
    finally:
        shutdown_stack(stack, args)


def run_server(args: argparse.Namespace) -> int:
    port = parse_port(args.port)
    stack = make_stack(args)
    fam = _socket.AF_INET6 if args.family == 6 else _socket.AF_INET
    try:
        lsock = new_socket(args, fam, stack)
        lsock.bind(("", port))
        lsock.listen(8)
        if not args.quiet:
            print(f"perf server listening on port {port}", file=sys.stderr, flush=True)
        rc = 0
        try:
            while True:
                conn, peer = lsock.accept()
                rc = serve_one(args, conn, peer)
                if args.one_off:
                    return rc
        finally:
            lsock.close()
    finally:
        shutdown_stack(stack, args)


def serve_one(args: argparse.Namespace, conn: Any, peer: tuple) -> int:
    try:
        header = json.loads(read_line(conn) or b"{}")
        reverse = bool(header.get("reverse"))
        mon = Monitor(conn, args.interval, reverse, args.quiet or args.json_out).start()
        t0 = time.monotonic()
        if reverse:
            count = send_data(conn, header.get("seconds"), header.get("bytes"))
            line = read_line(conn)
            result = json.loads(line or b"{}")
            received = result.get("bytes", 0)
        else:
            count = recv_data(conn)
            elapsed = time.monotonic() - t0
            conn.sendall(json.dumps({"bytes": count, "seconds": elapsed}).encode() + b"\n")
            conn.shutdown(_socket.SHUT_WR)
            received = count
        mon.stop()
        elapsed = time.monotonic() - t0
        end = {"peer": f"{peer[0]}:{peer[1]}", "bytes": received, "seconds": round(elapsed, 3),
               "goodput_bps": int(received * 8 / max(elapsed, 1e-6)), "reverse": reverse}
        if args.json_out:
            print(json.dumps({"intervals": mon.intervals, "end": end}), flush=True)
        elif not args.quiet:
            print(f"{end['peer']}: {received} bytes in {elapsed:.2f} s = "
                  f"{end['goodput_bps'] / 1e6:.2f} Mbit/s", file=sys.stderr, flush=True)
        return 0
    except (OSError, ValueError) as exc:
        print(f"mptcp-bpf perf: {exc}", file=sys.stderr)
        return 1
    finally:
        linger_close(conn)
