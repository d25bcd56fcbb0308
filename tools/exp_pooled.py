#!/usr/bin/env python3
"""Pooled capacity: the lab's reference run (the kernel selftests' simultaneous-flows
cases, mptcp_bpf/lab/bench.py) with our stack at one end, in both directions, beside the
kernel at both ends in the same run.

For each case (rates r1/r2 Mbit/s, one-way delays d1/d2 ms; client -- 2 paths -- router
-- server; the client has a `subflow` endpoint on path 2, limits 1/1) four transfers of
--size bytes run one after the other:
  kernel<->kernel  the reference: both ends kernel MPTCP, size bytes each way at once
  kernel->kernel   one way, kernel perf peers (tools/exp_lib.py)
  ours->kernel     our `mptcp-bpf perf` client sends to a kernel server
  kernel->ours     a kernel client sends to our `mptcp-bpf perf` server
A transfer passes within size*8*10/9/(r1+r2) + 450 ms (the selftest's bound); "pooled" is
the goodput over r1+r2, so above max(r1, r2)/(r1+r2) both paths were used.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import exp_lib as X  # noqa: E402

PORT = 10001
CC = "cubic"  # the reference run's; the host default (bbr) is not what the selftests use
MODES = ["kernel<->kernel", "kernel->kernel", "ours->kernel", "kernel->ours"]


def per_path_routes(lab: Any) -> None:
    """Routes to the server's subnet through each client path, path 1 preferred (metric).

    Kernel lookups keep using path 1 (as the lab's default route) and the source rules;
    our stack used to ask for the next hop with the outgoing device only (no source
    address), which without these found no gateway on path 2 (since fixed; kept, harmless).
    """
    net = lab.addresses("server")[0].rsplit(".", 1)[0] + ".0/24"
    gws = lab.addresses("router")
    for i, dev in enumerate(lab.devices("client")):
        lab.exec("client", ["ip", "route", "add", net, "via", gws[i], "dev", dev, "metric", str(10 * (i + 1))],
                 check=True, capture_output=True)


def one_way(lab: Any, case: Any, mode: str, timeout: float) -> float:
    """Seconds from connect to the receiver's answer for one transfer of case.size bytes."""
    dst = lab.addresses("server")[0]
    size = str(case.size)
    procs: list[Any] = []
    try:
        if mode == "ours->kernel":
            srv = X.start_kserve(lab, PORT, conns=1, max_time=timeout + 30, cc=CC)
            procs.append(srv)
            cl = X.start(lab, "client", X.ours_argv("perf", "-c", dst, "-p", str(PORT), "-n", size, "-J"),
                         "our perf client")
            procs.append(cl)
            mine = cl.finish(timeout)
            doc = srv.finish(30)
            conns = [c for c in doc.get("conns", []) if c["end"] is not None]
            if not conns or conns[0]["bytes"] != case.size:
                raise RuntimeError(f"short transfer: {[c['bytes'] for c in conns]} {mine.get('end')} {cl.tail(400)}")
            return float(conns[0]["end"] - conns[0]["start"])
        if mode == "kernel->ours":
            srv = X.start_ours_server(lab, PORT)
            procs.append(srv)
        else:
            srv = X.start_kserve(lab, PORT, conns=1, max_time=timeout + 30, cc=CC)
            procs.append(srv)
        cl = X.start(lab, "client", X.lib_argv("kclient", dst, "--port", str(PORT), "-n", size, "--cc", CC),
                     "kernel perf client")
        procs.append(cl)
        res = cl.finish(timeout)
        if mode == "kernel->ours":
            # let our server close its stack itself (it removes its fast-path listener and
            # subflows); killed, it used to leave them and a later kernel server on this
            # port never saw a SYN (the "stall after an earlier case")
            srv.finish(20)
        if int(res.get("bytes", 0)) != case.size:
            raise RuntimeError(f"short transfer: {res} {cl.tail(400)} {srv.tail(400)}")
        return float(res["elapsed"])
    finally:
        for p in procs:
            p.stop()


def run_case(lab: Any, case: Any, modes: list[str], retries: int) -> list[dict[str, Any]]:
    from mptcp_bpf.lab import bench
    rows = []
    for mode in modes:
        if mode == "kernel<->kernel":
            r = bench.run_case(lab, case, retries=retries)
        else:
            timeout = max(60.0, case.bound * 6)
            r = bench.run_case(lab, case, retries=retries,
                               hook=lambda lab, c, m=mode, t=timeout: one_way(lab, c, m, t))
        row = r.row()
        row["mode"] = mode
        rows.append(row)
        print(f"{case.label} {mode}: {r.elapsed:.3f} s (bound {case.bound:.3f}) pooled {r.pooled:.0%}"
              f"{' ' + r.error[:200] if r.error else ''}", file=sys.stderr, flush=True)
    return rows


def plot(rows: list[dict[str, Any]], png: Path) -> None:
    plt = X.pyplot()
    cases = list(dict.fromkeys(r["case"] for r in rows))
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(cases)), 4))
    w = 0.8 / len(modes)
    for j, m in enumerate(modes):
        vals = [next((r["pooled"] for r in rows if r["case"] == c and r["mode"] == m), 0) for c in cases]
        ax.bar([i + (j - (len(modes) - 1) / 2) * w for i in range(len(cases))], vals, w, label=m)
    ax.axhline(0.9, color="gray", ls=":", lw=0.8)
    ax.set_xticks(range(len(cases)), [c.replace(", ", "\n") for c in cases], fontsize=7)
    ax.set_ylabel("goodput / (r1 + r2)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from mptcp_bpf.lab import bench
    p = argparse.ArgumentParser(prog="exp_pooled", description=__doc__.splitlines()[0])
    X.common_args(p, "pool")
    p.add_argument("--size", type=int, help="bytes per transfer (16 MiB; fast 8 MiB)")
    p.add_argument("--mode", action="append", choices=MODES, help="transfers to run (all)")
    p.add_argument("--retries", type=int, default=1, help="reruns of a transfer over its bound (1)")
    p.add_argument("--case", action="append", metavar="R1/R2,D1/D2", help="only this case (repeatable)")
    a = p.parse_args(argv)
    todo = [bench.Case(10, 10, 0, 0)] if a.fast else bench.cases()
    if a.case:
        todo = []
        for spec in a.case:
            try:
                todo.append(bench.parse_case(spec))
            except ValueError as exc:
                p.error(str(exc))
    for c in todo:
        c.size = a.size or ((8 << 20) if a.fast else bench.SIZE)
    modes = a.mode or MODES
    jpath, png = X.outputs(a.out, "pooled")
    lab = X.fresh_lab(a.lab, paths=2, router=True)
    rows: list[dict[str, Any]] = []
    try:
        bench.setup(lab)
        per_path_routes(lab)
        with X.fast_path(lab, ["client", "server"]):
            for case in todo:
                rows += run_case(lab, case, modes, a.retries)
    finally:
        if not a.keep:
            lab.down()
    print(X.table(["case", "transfer", "time s", "bound s", "pooled", "result"],
                  [[r["case"], r["mode"], r["time"], r["bound"], f"{r['pooled']:.0%}",
                    "ok" if r["ok"] else "MISS " + r["error"][:50]] for r in rows]))
    X.write_json(jpath, {"experiment": "pooled", "results": rows})
    plot(rows, png)
    print(f"wrote {jpath} and {png}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
