#!/usr/bin/env python3
"""Schedulers on RTT-unbalanced paths: the latency of small request/response messages
over one MPTCP connection of our stack per scheduler (default, roundrobin, redundant)
against a kernel MPTCP echo server.

Lab: two direct paths, path 1 with --fast-delay and path 2 with --slow-delay each way;
our client uses both addresses (fullmesh, the server announces nothing: one subflow per
path). Each message is one small segment; the kernel answers on its own choice of
subflow (mostly the fast one), so a request sent on the slow path costs slow + fast
one-way delays, or two slow ones when the kernel answers there too. Expected: default and redundant near the fast path's
RTT (redundant lowest, never worse), roundrobin alternating between the two paths as
num_segments says.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import exp_lib as X  # noqa: E402

PORT = 7007
MSG = 64


# ------------------------------------------------------------------ inside the client
def client(dst: str, port: int, runs: list[dict[str, Any]], count: int, gap: float) -> dict[str, Any]:
    """Run in the client namespace: one connection per run on our stack, `count` messages."""
    from mptcp_bpf import plugins, sockopt as so
    from mptcp_bpf.socket.core import MptcpSocket, namespace_stack
    from mptcp_bpf.stack import StackConfig
    stack = namespace_stack(StackConfig.from_sysctl())
    out = []
    try:
        for run in runs:
            for key, value in run.get("set", {}).items():
                kind, name, param = key.split(".")
                plugins.set_param(kind, name, param, value)
            s = MptcpSocket(2, stack=stack)
            s.setsockopt(so.SOL_TCP, so.MPTCP_SCHEDULER, run["sched"].encode())
            s.setsockopt(so.SOL_TCP, so.MPTCP_PATH_MANAGER, b"fullmesh")
            s.setsockopt(so.SOL_TCP, so.TCP_NODELAY, 1)
            s.settimeout(10)
            s.connect((dst, port))
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                subs = s.info().get("subflows", [])
                if sum(1 for sf in subs if sf.get("state") == "ESTABLISHED") >= 2:
                    break
                time.sleep(0.05)
            msg = bytes(MSG)
            lat = []
            for i in range(count + 5):  # the first 5 warm up both subflows' RTT estimates
                t0 = time.perf_counter()
                s.sendall(msg)
                got = 0
                while got < MSG:
                    d = s.recv(MSG - got)
                    if not d:
                        raise RuntimeError("echo server closed")
                    got += len(d)
                if i >= 5:
                    lat.append((time.perf_counter() - t0) * 1000)
                time.sleep(gap)
            info = s.info()
            s.close()
            out.append({**run, "latency_ms": lat,
                        "subflows": [{"local": sf.get("local"), "remote": sf.get("remote"),
                                      "rtt_ms": round((sf.get("rtt") or 0) * 1000, 2)}
                                     for sf in info.get("subflows", [])]})
    finally:
        stack.close()
    return {"runs": out}


# ------------------------------------------------------------------ orchestration
def runs_for(fast: bool) -> list[dict[str, Any]]:
    rr1 = {"sched.roundrobin.num_segments": 1, "sched.roundrobin.cwnd_limited": "true"}
    runs = [{"sched": "default"}, {"sched": "roundrobin", "set": rr1, "label": "roundrobin (1)"},
            {"sched": "redundant"}]
    if not fast:
        runs.append({"sched": "roundrobin", "label": "roundrobin (2)",
                     "set": {"sched.roundrobin.num_segments": 2, "sched.roundrobin.cwnd_limited": "true"}})
    for r in runs:
        r.setdefault("label", r["sched"])
    return runs


def measure(lab: Any, runs: list[dict[str, Any]], count: int, gap: float) -> list[dict[str, Any]]:
    echo = X.start(lab, "server", X.lib_argv("kecho", "--port", str(PORT), "--max-time", "600"),
                   "kernel echo server", '"ready"', timeout=30)
    cl = None
    try:
        cl = X.start(lab, "client", [X.PY, str(Path(__file__).resolve()), "client",
                                     lab.addresses("server")[0], json.dumps(runs), str(count), str(gap)],
                     "our request/response client")
        doc = cl.finish(120 + count * len(runs) * (gap + 0.2))
        if not doc.get("runs"):
            raise RuntimeError(f"the client reported nothing: {cl.tail()}")
        return doc["runs"]
    finally:
        for p in (cl, echo):
            if p is not None:
                p.stop()


def summarise(run: dict[str, Any], split_ms: float) -> dict[str, Any]:
    lat = run["latency_ms"]
    slow = [x > split_ms for x in lat]
    changes = sum(1 for a, b in zip(slow, slow[1:]) if a != b)
    return {"label": run["label"], "sched": run["sched"], "n": len(lat),
            "median_ms": statistics.median(lat), "mean_ms": statistics.fmean(lat),
            "p90_ms": sorted(lat)[int(0.9 * (len(lat) - 1))], "min_ms": min(lat), "max_ms": max(lat),
            "slow_share": sum(slow) / len(lat), "pattern": "".join("S" if s else "f" for s in slow[:24]),
            "switches": changes}


def plot(runs: list[dict[str, Any]], rows: list[dict[str, Any]], png: Path, split: float) -> None:
    plt = X.pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    for r in runs:
        ax1.plot(r["latency_ms"][:60], marker=".", lw=0.7, label=r["label"])
    ax1.axhline(split, color="gray", ls=":", lw=0.8)
    ax1.set_xlabel("message")
    ax1.set_ylabel("request/response latency (ms)")
    ax1.legend(fontsize=8)
    ax2.boxplot([r["latency_ms"] for r in runs], showfliers=False)
    ax2.set_xticks(range(1, len(runs) + 1), [r["label"] for r in runs])
    ax2.tick_params(axis="x", labelsize=7)
    ax2.set_title("median: " + ", ".join(f"{x['median_ms']:.1f}" for x in rows), fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "client":
        print(json.dumps(client(argv[1], PORT, json.loads(argv[2]), int(argv[3]), float(argv[4]))), flush=True)
        return 0
    p = argparse.ArgumentParser(prog="exp_sched", description=__doc__.splitlines()[0])
    X.common_args(p, "sched")
    p.add_argument("--fast-delay", type=float, default=5.0, help="path 1 one-way delay, ms (5)")
    p.add_argument("--slow-delay", type=float, default=25.0, help="path 2 one-way delay, ms (25)")
    p.add_argument("--count", type=int, help="messages per scheduler (200; fast 40)")
    p.add_argument("--gap", type=float, default=0.02, help="pause between messages, s (0.02)")
    a = p.parse_args(argv)
    count = a.count or (40 if a.fast else 200)
    runs = runs_for(a.fast)
    jpath, png = X.outputs(a.out, "sched")
    split = a.fast_delay * 2 + (a.slow_delay - a.fast_delay) / 2  # between the two RTT classes
    lab = X.fresh_lab(a.lab, paths=2)
    try:
        X.kernel_mptcp_server(lab, subflows=4)
        lab.link(1, delay=a.fast_delay)
        lab.link(2, delay=a.slow_delay)
        with X.fast_path(lab, ["client"]):
            res = measure(lab, runs, count, a.gap)
    finally:
        if not a.keep:
            lab.down()
    rows = [summarise(r, split) for r in res]
    print(X.table(["scheduler", "median ms", "mean ms", "p90 ms", "slow share", "first messages (f/S)"],
                  [[r["label"], r["median_ms"], r["mean_ms"], r["p90_ms"], r["slow_share"], r["pattern"]]
                   for r in rows]))
    X.write_json(jpath, {"experiment": "sched", "fast_delay_ms": a.fast_delay, "slow_delay_ms": a.slow_delay,
                         "split_ms": split, "summary": rows, "runs": res})
    plot(res, rows, png, split)
    print(f"wrote {jpath} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
