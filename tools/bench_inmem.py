#!/usr/bin/env python3
"""CPU cost of the protocol core: a bulk transfer over the in-memory network (tcp.netsim).

Modes:
  mptcp     two mptcp.host.Host ends (client sends to server), both in this process
  tcp       two plain TCP subflows (tcp.plain.PlainHost)
  sender    replay only the sender's input (the ACKs recorded from a full run) into a fresh
            sender; its output is counted and dropped
  receiver  replay only the receiver's input (the data segments recorded) into a fresh
            receiver, whose application reads everything

The replays are exact: hosts are seeded and time is virtual, so the replayed side makes the
same decisions as in the recorded run (checked: it must end with every byte acked /
received). Goodput is given per CPU-second of this process (time.process_time), so it does
not depend on the simulated link. --proto tcp|mptcp picks the stack for sender/receiver.

    .venv/bin/python tools/bench_inmem.py mptcp --mb 20
    .venv/bin/python tools/bench_inmem.py sender --proto mptcp --profile
"""

from __future__ import annotations

import argparse
import cProfile
import io
import ipaddress
import os
import pstats
import random
import sys
import time
from typing import Any, Callable

# MPTCP_BPF_SRC=dir measures another source tree (before/after comparisons)
sys.path.insert(0, os.environ.get("MPTCP_BPF_SRC")
                or os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mptcp_bpf.mptcp.host import Host, HostConfig  # noqa: E402
from mptcp_bpf.tcp.common import SubflowConfig  # noqa: E402
from mptcp_bpf.tcp.netsim import Net  # noqa: E402
from mptcp_bpf.tcp.plain import PlainHost  # noqa: E402
from mptcp_bpf.timers import TimerWheel  # noqa: E402

A_IP, B_IP = "10.0.1.1", "10.0.1.2"
A, B = ipaddress.ip_address(A_IP).packed, ipaddress.ip_address(B_IP).packed
PORT = 80
BUF = 8 << 20


class _Sink:
    """Counts output packets (the replayed side's peer is a recording)."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, pkt: Any) -> None:
        self.n += 1


# ------------------------------------------------------------------ the two stacks

class MptcpApp:
    """Client A sends `total` bytes to server B over Hosts; pump() is the application."""

    def __init__(self, timers: TimerWheel, out_a: Callable, out_b: Callable, total: int,
                 csum: bool, side: str = "both") -> None:
        tcp = {"time_wait": 0.2, "rcv_buf": BUF}
        cfg = dict(checksum=csum, tcp=tcp, sndbuf=BUF, rcvbuf=BUF)
        self.a = Host(HostConfig(**cfg), timers, out_a, random.Random(1))
        self.b = Host(HostConfig(**cfg), timers, out_b, random.Random(101))
        self.a.add_address(A_IP)
        self.b.add_address(B_IP)
        self.lst = self.b.listen(None, PORT)
        self.total = total
        self.side = side
        self.chunk = b"\xa5" * 65536
        self.sent = 0
        self.got = 0
        self.server: Any = None
        self.client = self.a.connect((B_IP, PORT), now=0.0)

    def pump(self) -> None:
        c = self.client
        if self.side != "receiver" and c.connected and self.sent < self.total:
            while self.sent < self.total:
                n = c.send(self.chunk[:min(65536, self.total - self.sent)])
                if not n:
                    break
                self.sent += n
        if self.side != "sender":
            if self.server is None:
                self.server = self.lst.accept()
            s = self.server
            if s is not None:
                try:
                    while True:
                        b = s.recv(1 << 20)
                        if not b:
                            break
                        self.got += len(b)
                except BlockingIOError:
                    pass

    def acked(self) -> bool:
        return self.sent >= self.total and self.client.snd_una >= self.total

    def done(self) -> bool:
        return self.acked() if self.side == "sender" else self.got >= self.total

    def host_of(self, who: str) -> Host:
        return self.a if who == "a" else self.b


class TcpApp:
    """Plain TCP: A sends `total` bytes to B."""

    def __init__(self, timers: TimerWheel, out_a: Callable, out_b: Callable, total: int,
                 csum: bool, side: str = "both") -> None:
        cfg = SubflowConfig(rcv_buf=BUF, time_wait=0.2)
        self.a = PlainHost([A], timers, out_a, cfg, random.Random(1))
        self.b = PlainHost([B], timers, out_b, cfg, random.Random(101))
        self.server: Any = None
        self.b.listen(PORT, self._accept)
        self.total = total
        self.side = side
        self.chunk = b"\xa5" * 65536
        self.sent = 0
        self.got = 0
        self.now = 0.0
        self.client = self.a.connect(A, (B, PORT), 0.0)

    def _accept(self, conn: Any) -> None:
        self.server = conn

    def pump(self) -> None:
        c = self.client
        now = self.now
        if self.side != "receiver" and c.established:
            while self.sent < self.total and c.writable():
                n = min(65536, self.total - self.sent)
                c.send(self.chunk[:n], now)
                self.sent += n
        s = self.server
        if self.side != "sender" and s is not None:
            while True:
                b = s.recv(1 << 20, now)
                if not b:
                    break
                self.got += len(b)

    def acked(self) -> bool:
        return self.sent >= self.total and self.client.sf.bytes_acked >= self.total

    def done(self) -> bool:
        return self.acked() if self.side == "sender" else self.got >= self.total

    def host_of(self, who: str) -> Any:
        return self.a if who == "a" else self.b


# ------------------------------------------------------------------ runs

def full_run(proto: str, total: int, csum: bool, record: bool,
             batch: int = 1) -> tuple[dict, dict]:
    """Both ends over netsim; returns (result, recording {'a': [(t, pkt)], 'b': [...]})."""
    net = Net(seed=1)
    net.link(A, B, delay=0.0005, rate=None)
    rec: dict[str, list] = {"a": [], "b": []}
    cls = MptcpApp if proto == "mptcp" else TcpApp
    app = cls(net.timers, net.send, net.send, total, csum)
    for who, addr in (("a", A), ("b", B)):
        h = app.host_of(who)
        lst = rec[who]
        if record:
            def handler(pkt: bytes, now: float, h=h, lst=lst) -> None:
                lst.append((now, pkt))
                _input(h, pkt, now)
        elif batch > 1 and hasattr(h, "input_batch"):
            def handler(pkt: bytes, now: float, h=h, buf: list = []) -> None:
                # packets arriving at one instant go in as one batch (after the others
                # due now: call_at queues behind them)
                buf.append(pkt)
                if len(buf) == 1:
                    def flush(t: float, h=h, buf=buf) -> None:
                        pkts = buf[:]
                        buf.clear()
                        h.input_batch(pkts, t)
                    net.call_at(now, flush)
        else:
            def handler(pkt: bytes, now: float, h=h) -> None:
                _input(h, pkt, now)
        net.attach(addr, handler)

    def pred() -> bool:
        if proto == "tcp":
            app.now = net.now
        app.pump()
        return app.got >= total and app.acked()

    c0, w0 = time.process_time(), time.perf_counter()
    ok = net.run_until(pred, 600.0)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    if not ok:
        raise SystemExit(f"transfer did not finish: got {app.got} of {total}")
    segs = sum(1 for _, p in rec["b"]) if record else None
    return {"cpu": cpu, "wall": wall, "virtual": net.now, "bytes": total, "segs": segs,
            "packets": sum(p.sent for p in net._pipes.values())}, rec


def _input(h: Any, pkt: Any, now: float) -> None:
    h.input(pkt, now)


def _batched(feed: list, n: int) -> list:
    """Group packets that arrived at the same instant (at most n): a receive batch."""
    out: list = []
    for t, pkt in feed:
        if out and out[-1][0] == t and len(out[-1][1]) < n:
            out[-1][1].append(pkt)
        else:
            out.append((t, [pkt]))
    return out


def replay(proto: str, total: int, csum: bool, side: str, rec: dict, batch: int = 1) -> dict:
    """Feed one side the packets it got in the recorded run, at the recorded times."""
    timers = TimerWheel()
    sink = _Sink()
    cls = MptcpApp if proto == "mptcp" else TcpApp
    app = cls(timers, sink, sink, total, csum, side=side)
    who = "a" if side == "sender" else "b"
    h = app.host_of(who)
    feed = rec[who]
    c0 = time.process_time()
    is_tcp = proto == "tcp"
    nxt = timers.next_deadline
    run_due = timers.run_due
    inp = h.input
    pump = app.pump
    n_in = len(feed)
    if batch > 1 and hasattr(h, "input_batch"):
        feed = _batched(feed, batch)
        inp = h.input_batch
    for t, pkt in feed:
        while True:
            d = nxt()
            if d is None or d > t:
                break
            if is_tcp:
                app.now = d
            run_due(d)
            pump()
        if is_tcp:
            app.now = t
        inp(pkt, t)
        pump()
    cpu = time.process_time() - c0
    ok = app.done()
    stats = getattr(h, "stats", None)
    thinned = stats.get("rx_acks_thinned", 0) if stats is not None else \
        getattr(h, "acks_thinned", 0)
    return {"cpu": cpu, "bytes": total, "segs": sink.n,
            "ok": ok, "out": sink.n, "in": n_in, "thinned": thinned}


def report(name: str, r: dict, data_segs: int) -> None:
    cpu = r["cpu"]
    mbps = r["bytes"] * 8 / cpu / 1e6 if cpu else float("inf")
    print(f"{name:10s} {r['bytes'] / 1e6:7.1f} MB  cpu {cpu:6.2f} s  "
          f"goodput/cpu-s {mbps:7.1f} Mbit/s"
          f"  {data_segs / cpu:9.0f} data segs/s  {cpu / data_segs * 1e6:6.1f} us/data seg"
          + (f"  (replay ok={r['ok']}, {r['in']} in, {r['out']} out, "
             f"{r['thinned']} ACKs thinned)" if "ok" in r else "")
          + (f"  ({r['packets']} packets, {r['virtual']:.2f} s virtual)"
             if "packets" in r else ""))


def _no_tx_csum() -> None:
    """Every Subflow made from now on leaves its TCP checksum 0 (a datapath fills it)."""
    from mptcp_bpf.tcp.subflow import Subflow
    init = Subflow.__init__

    def patched(self: Any, *args: Any, **kw: Any) -> None:
        init(self, *args, **kw)
        self.tx_csum = False

    Subflow.__init__ = patched  # type: ignore[method-assign]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["mptcp", "tcp", "sender", "receiver", "all"])
    ap.add_argument("--proto", choices=["mptcp", "tcp"], default="mptcp",
                    help="stack of the sender/receiver replays")
    ap.add_argument("--mb", type=float, default=10.0, help="megabytes to transfer")
    ap.add_argument("--csum", action="store_true", help="MPTCP DSS checksums on")
    ap.add_argument("--repeat", type=int, default=1, help="repeat and print each run")
    ap.add_argument("--profile", action="store_true", help="cProfile top-20 (tottime)")
    ap.add_argument("--batch", type=int, default=1,
                    help="packets that arrive together (at most N) go in as one batch "
                         "(input_batch: one ACK per subflow and batch, GRO, ACK thinning)")
    ap.add_argument("--no-tx-csum", action="store_true",
                    help="subflows leave the TCP checksum to the datapath (sf.tx_csum = False)")
    a = ap.parse_args()
    total = int(a.mb * 1e6)
    if a.no_tx_csum:
        _no_tx_csum()
    modes = ["tcp", "mptcp", "sender", "receiver"] if a.mode == "all" else [a.mode]
    for mode in modes:
        proto = mode if mode in ("tcp", "mptcp") else a.proto
        need_rec = mode in ("sender", "receiver")
        base, rec = full_run(proto, total, a.csum, record=need_rec) if need_rec else (None, None)
        data_segs = sum(1 for _, p in rec["b"] if len(p) > 100) if need_rec else -(-total // 1400)
        runs: list[float] = []
        for _ in range(a.repeat):
            prof = cProfile.Profile() if a.profile else None
            if prof:
                prof.enable()
            if need_rec:
                r = replay(proto, total, a.csum, mode, rec, a.batch)
            else:
                r, _ = full_run(proto, total, a.csum, record=False, batch=a.batch)
            if prof:
                prof.disable()
            label = mode if mode in ("tcp", "mptcp") else f"{mode}/{proto}"
            report(label, r, data_segs)
            runs.append(r["cpu"] / data_segs * 1e6)
            if prof:
                s = io.StringIO()
                pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(20)
                print(s.getvalue())
        if len(runs) > 1:
            runs.sort()
            print(f"{label:10s} us/data seg over {len(runs)} runs: min {runs[0]:.1f}  "
                  f"median {runs[len(runs) // 2]:.1f}  max {runs[-1]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
