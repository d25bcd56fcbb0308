#!/usr/bin/env python3
"""Moving traffic away from congestion: two disjoint paths of the same rate, path 1 loaded
by kernel TCP flows; our MPTCP connection (one subflow per path) should carry most of its
data on the free path 2, the more so with a coupled controller.

Lab: two direct paths, each shaped to --rate client -> server with --delay each way and
random early drop (mptcp_bpf/lab/aqm.py). The kernel server receives everything. Our
client (fullmesh over both client addresses, the server announcing nothing: subflows
10.0.1.1 -> 10.0.1.2 on path 1 and 10.0.2.1 -> 10.0.1.2 on path 2) starts once the
kernel load runs. Per-subflow goodput over time comes from our perf -J report (bytes
handed to each subflow per interval).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import exp_lib as X  # noqa: E402

CCS = ["reno", "lia", "olia", "balia", "wvegas"]
MPTCP_PORT, TCP_PORT = 5201, 5202


def setup(lab: Any, rate: int, delay: float, aqm: Any) -> None:
    X.kernel_mptcp_server(lab, subflows=4)
    for path in (1, 2):
        lab.link(path, dir="up", rate=f"{rate}bit", delay=delay or None)
        if delay:
            lab.link(path, dir="down", delay=delay)
    for path in (1, 2):
        aqm.attach(lab, path, "up", rate)


def trial(lab: Any, cc: str, load: int, seconds: float, warmup: float) -> dict[str, Any]:
    server = X.start_kserve(lab, MPTCP_PORT, TCP_PORT, conns=load + 1, max_time=seconds + 150)
    procs: list[Any] = [server]
    try:
        dst = lab.addresses("server")[0]
        c1 = lab.addresses("client")[0]
        for _ in range(load):
            procs.append(X.start(lab, "client", X.lib_argv(
                "kclient", dst, "--port", str(TCP_PORT), "--tcp", "--cc", "reno", "--bind", c1,
                "-t", str(seconds + 40)), "kernel load"))
        if not server.wait_for('"accepted"', 30, count=load):
            raise RuntimeError("the kernel load did not connect")
        time.sleep(2.0)  # let the load fill path 1
        ours = X.start(lab, "client", X.ours_argv("perf", "-c", dst, "-p", str(MPTCP_PORT), "-t", str(seconds),
                                                  "-J", "--cc", cc, "--path-manager", "fullmesh"),
                       "our perf client")
        procs.append(ours)
        mine = ours.finish(seconds + 90)
    finally:
        for p in procs:
            p.stop()
    if not mine.get("intervals"):
        raise RuntimeError(f"our client reported nothing: {ours.tail(600)}")
    c2 = lab.addresses("client")[1]
    series = X.subflow_series({"intervals": X.compact(mine)})
    free = loaded = 0.0
    prev = 0.0
    for iv in X.compact(mine):
        t = float(iv["t"])
        if t >= warmup:
            for sf in iv["subflows"]:
                b = float(sf["bytes"] or 0)
                if sf["pair"].startswith(c2 + ":"):
                    free += b
                else:
                    loaded += b
        prev = t
    span = max(prev - warmup, 1e-6)
    return {"cc": cc, "load_flows": load, "free_mbps": free * 8 / span / 1e6,
            "loaded_mbps": loaded * 8 / span / 1e6,
            "free_share": free / (free + loaded) if free + loaded else 0.0,
            "subflows": (mine.get("end") or {}).get("subflows"),
            "series": {k: [v[0], v[1]] for k, v in series.items()}, "ours": X.compact(mine)}


def plot(rows: list[dict[str, Any]], png: Path, c2: str) -> None:
    plt = X.pyplot()
    ok = [r for r in rows if "series" in r]
    fig, axes = plt.subplots(len(ok) or 1, 1, figsize=(8, 2.2 * max(1, len(ok))), squeeze=False)
    for ax, r in zip(axes[:, 0], ok):
        for pair, (ts, ms) in sorted(r["series"].items()):
            path = "path 2 (free)" if pair.startswith(c2 + ":") else "path 1 (loaded)"
            ax.plot(ts, ms, label=f"{path} {pair}")
        ax.set_title(f"{r['cc']}: {r['free_share']:.0%} on the free path", fontsize=9)
        ax.set_ylabel("Mbit/s")
        ax.legend(fontsize=7, loc="upper left")
    axes[-1, 0].set_xlabel("s")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="exp_congestion", description=__doc__.splitlines()[0])
    X.common_args(p, "cong")
    p.add_argument("--cc", action="append", help=f"controllers (default {', '.join(CCS)}; fast: lia)")
    p.add_argument("--rate", default="10mbit", help="rate of each path (10mbit)")
    p.add_argument("--delay", type=float, default=10.0, help="one-way delay of each path, ms (10)")
    p.add_argument("--load", type=int, default=2, help="kernel TCP flows on path 1 (2)")
    p.add_argument("--time", type=float, help="seconds per run (25; fast 12)")
    p.add_argument("--warmup", type=float, help="seconds ignored at the start (5; fast 3)")
    a = p.parse_args(argv)
    from mptcp_bpf.lab.aqm import Aqm
    from mptcp_bpf.lab.impair import parse_rate
    rate = parse_rate(a.rate)
    ccs = a.cc or (["lia"] if a.fast else CCS)
    seconds = a.time or (12.0 if a.fast else 25.0)
    warmup = a.warmup if a.warmup is not None else (3.0 if a.fast else 5.0)
    jpath, png = X.outputs(a.out, "congestion")
    lab = X.fresh_lab(a.lab, paths=2)
    aqm = None
    rows = []
    try:
        aqm = Aqm()
        setup(lab, rate, a.delay, aqm)
        with X.fast_path(lab, ["client"]):
            for cc in ccs:
                try:
                    r = trial(lab, cc, a.load, seconds, warmup)
                except RuntimeError as exc:
                    r = {"cc": cc, "error": str(exc)[:600]}
                print(f"{cc}: free share {r.get('free_share', float('nan')):.2f}", file=sys.stderr, flush=True)
                rows.append(r)
        c2 = lab.addresses("client")[1]
    finally:
        if aqm is not None:
            aqm.close()
        if not a.keep:
            lab.down()
    print(X.table(["cc", "path 1 (loaded) Mbit/s", "path 2 (free) Mbit/s", "free share", "note"],
                  [[r["cc"], r.get("loaded_mbps"), r.get("free_mbps"), r.get("free_share"),
                    r.get("error", "")[:60]] for r in rows]))
    X.write_json(jpath, {"experiment": "congestion", "rate_bps": rate, "delay_ms": a.delay,
                         "load_flows": a.load, "seconds": seconds, "warmup": warmup, "results": rows})
    plot(rows, png, c2)
    print(f"wrote {jpath} and {png}")
    return 0 if all("free_share" in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
