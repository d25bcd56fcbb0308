#!/usr/bin/env python3
"""Fairness at one shared bottleneck: one MPTCP connection of our stack with two subflows
(ndiffports, same address pair) against one kernel TCP flow, per congestion control.

Lab: one path, client -> server shaped to --rate with --delay (20 ms) each way, random early drop
at the bottleneck (mptcp_bpf/lab/aqm.py: without it a drop-tail queue hits the kernel flow
alone, see docs/EXPERIMENTS.md). The kernel server receives both flows and samples their
bytes on one clock; the ratio is MPTCP goodput / TCP goodput over the time both ran.
Expected: coupled controllers (lia, olia, balia, wvegas) about 1 (at most 1.3), uncoupled
reno about 2; our single-path flow (one subflow, reno) about 1.

The kernel flow runs Reno, except for the delay-based wvegas, whose one flow's share is
measured against its own kind as the wVegas paper does: TCP Vegas, here a BPF struct_ops
(bpf/tcp_vegas.bpf.c, registered for the run by mptcp_bpf/lab/bpf_cc.py) with
alpha = beta = wvegas's total_alpha (10): wVegas keeps total_alpha packets queued for the
whole connection (one subflow: alpha_1 = total_alpha), so the single-path equivalent is a
Vegas flow keeping 10 queued. wvegas runs against Reno too, with the same bound: at this
early-drop queue losses come before its queue target, and there its coupled (LIA) increase,
not its delay target, must keep the connection to one share.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import exp_lib as X  # noqa: E402

CCS = ["reno", "lia", "olia", "balia", "wvegas"]
VEGAS = "vegas"   # competitor label; the kernel name is --vegas-name
# Early drop (min, max ms of queue) for the runs against Reno, and for the delay-based pair:
# there above their equilibrium queue (wvegas's 10 + Vegas's 10 packets, 12 ms at 20 Mbit/s),
# so that their delay control, not early drops, sets the shares (at 5-25 ms a drop came
# about once per RTT and both ran as AIMD, where two subflows each adding 1 per RTT take two
# shares); the queue's tail (100 ms) is still far
AQM_MS = {"reno": (5.0, 25.0), VEGAS: (30.0, 60.0)}
MPTCP_PORT, TCP_PORT = 5201, 5202


def setup(lab: Any, rate: int, delay: float, aqm: Any) -> None:
    X.kernel_mptcp_server(lab, subflows=4)
    lab.link(1, dir="up", rate=f"{rate}bit", delay=delay or None)
    if delay:
        lab.link(1, dir="down", delay=delay)
    aqm.attach(lab, 1, "up", rate)


def set_aqm(lab: Any, aqm: Any, vs: str) -> None:
    """The early-drop thresholds for this competitor; resets the counters (per-run stats)."""
    lo, hi = AQM_MS.get(vs, AQM_MS["reno"])
    aqm.set_thresholds(lab, 1, "up", lo, hi)


def competitors(cc: str) -> list[str]:
    """Kernel flows to run `cc` against: Reno, and for the delay-based wvegas also Vegas
    (its share at its own queue target); fast mode runs both too."""
    return [VEGAS, "reno"] if cc == "wvegas" else ["reno"]


def trial(lab: Any, cc: str, subflows: int, seconds: float, warmup: float,
          kcc: str = "reno") -> dict[str, Any]:
    """One run: ours (cc, subflows) and one kernel flow (congestion control `kcc`), started
    once ours is connected."""
    server = X.start_kserve(lab, MPTCP_PORT, TCP_PORT, conns=2, max_time=seconds + 120)
    ours = kern = None
    try:
        dst = lab.addresses("server")[0]
        pm = ["--path-manager", "ndiffports", "--set", f"ndiffports.num_subflows={subflows}"] \
            if subflows > 1 else ["--path-manager", "default"]
        ours = X.start(lab, "client", X.ours_argv("perf", "-c", dst, "-p", str(MPTCP_PORT),
                                                  "-t", str(seconds), "-J", "--cc", cc, *pm), "our perf client")
        if not server.wait_for('"accepted"', 90):
            raise RuntimeError(f"our client did not connect: {ours.tail()}")
        kern = X.start(lab, "client", X.lib_argv("kclient", dst, "--port", str(TCP_PORT), "--tcp",
                                                 "--cc", kcc, "-t", str(seconds)), "kernel TCP flow")
        mine = ours.finish(seconds + 60)
        kres = kern.finish(seconds + 60)
        doc = server.finish(30)
    finally:
        for p in (ours, kern, server):
            if p is not None:
                p.stop()
    conns = doc.get("conns", [])
    mp = [c for c in conns if c["proto"] == "mptcp"]
    tc = [c for c in conns if c["proto"] == "tcp"]
    if not mp or not tc or any(c["end"] is None for c in mp + tc):
        raise RuntimeError(f"missing flows: ours={mine.get('end')} kernel={kres} "
                           f"server={[(c['proto'], c['bytes'], c['error']) for c in conns]}")
    a, b = X.overlap([mp[0], tc[0]], warmup)
    if b - a < 2:
        raise RuntimeError(f"flows overlapped only {b - a:.1f} s")
    m = X.window_bytes(mp[0]["samples"], a, b) * 8 / (b - a) / 1e6
    t = X.window_bytes(tc[0]["samples"], a, b) * 8 / (b - a) / 1e6
    return {"cc": cc, "subflows": subflows, "mptcp_mbps": m, "tcp_mbps": t,
            "ratio": m / t if t > 0 else float("inf"), "window": [round(a, 2), round(b, 2)],
            "subflows_seen": (mine.get("end") or {}).get("subflows"),
            "mptcp_samples": mp[0]["samples"], "tcp_samples": tc[0]["samples"],
            "ours": X.compact(mine)}


def run(lab: Any, todo: list[tuple[str, int, str]], seconds: float, warmup: float,
        aqm: Any, vegas_name: str = "") -> list[dict[str, Any]]:
    rows = []
    for cc, subflows, vs in todo:
        kcc = vegas_name if vs == VEGAS else vs
        set_aqm(lab, aqm, vs)
        try:
            r = trial(lab, cc, subflows, seconds, warmup, kcc)
        except RuntimeError as exc:
            r = {"cc": cc, "subflows": subflows, "error": str(exc)[:600]}
        r["competitor"] = vs
        r["aqm"] = aqm.stats(lab, 1, "up")
        print(f"{cc} x{subflows} vs {vs}: ratio {r.get('ratio', float('nan')):.2f}", file=sys.stderr, flush=True)
        rows.append(r)
    return rows


def plot(rows: list[dict[str, Any]], png: Path, title: str) -> None:
    plt = X.pyplot()
    ok = [r for r in rows if "ratio" in r]
    fig, ax = plt.subplots(figsize=(8, 4))
    labels = [f"{r['cc']}\n{r['subflows']} subflow{'s' if r['subflows'] > 1 else ''}\nvs {r.get('competitor', 'reno')}"
              for r in ok]

    def colour(r: dict[str, Any]) -> str:
        if r["cc"] == "reno" and r["subflows"] > 1:
            return "tab:red"      # uncoupled: about two shares
        return "tab:green" if r.get("competitor") == VEGAS else "tab:blue"
    ax.bar(labels, [r["ratio"] for r in ok], color=[colour(r) for r in ok])
    ax.tick_params(axis="x", labelsize=7)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhline(1.3, color="gray", ls="--", lw=0.8, label="1.3 (coupled bound)")
    ax.axhline(2.0, color="gray", ls=":", lw=0.8, label="2 (two TCP flows)")
    ax.set_ylabel("MPTCP / TCP goodput")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="exp_fairness", description=__doc__.splitlines()[0])
    X.common_args(p, "fair")
    p.add_argument("--cc", action="append", help=f"controllers to run (default {', '.join(CCS)})")
    p.add_argument("--rate", default="20mbit", help="bottleneck rate (20mbit)")
    # 20 ms: a window of tens of segments, where AIMD (what the controllers differ in) and
    # not loss recovery at 5-10 segments (timeouts, RACK) decides the shares
    p.add_argument("--delay", type=float, default=20.0, help="one-way delay, ms (20)")
    p.add_argument("--time", type=float, help="seconds per run (30; fast 12)")
    p.add_argument("--warmup", type=float, help="seconds ignored at the start (5; fast 3)")
    p.add_argument("--no-single", action="store_true", help="skip our single-path reference run")
    p.add_argument("--single", action="store_true", help="run it in fast mode too")
    p.add_argument("--vegas-name", default="bpf_vegas",
                   help="kernel name of the BPF TCP Vegas registered for wvegas's runs (bpf_vegas)")
    p.add_argument("--vegas-alpha", type=int, default=10, help="its alpha (10: wvegas's total_alpha)")
    p.add_argument("--vegas-beta", type=int, default=10, help="its beta (10)")
    a = p.parse_args(argv)
    from mptcp_bpf.lab.aqm import Aqm
    from mptcp_bpf.lab.impair import parse_rate
    rate = parse_rate(a.rate)
    ccs = a.cc or (["reno", "lia", "wvegas"] if a.fast else CCS)
    seconds = a.time or (12.0 if a.fast else 30.0)
    warmup = a.warmup if a.warmup is not None else (3.0 if a.fast else 5.0)
    todo = [(cc, 2, vs) for cc in ccs for vs in competitors(cc)] + \
        ([] if a.no_single or (a.fast and not a.single) else [("reno", 1, "reno")])
    jpath, png = X.outputs(a.out, "fairness")
    lab = X.fresh_lab(a.lab, paths=1)
    aqm = None
    try:
        aqm = Aqm()
        setup(lab, rate, a.delay, aqm)
        with contextlib.ExitStack() as stack:
            if any(vs == VEGAS for _, _, vs in todo):
                from mptcp_bpf.lab.bpf_cc import registered_vegas
                stack.enter_context(registered_vegas(a.vegas_name, a.vegas_alpha, a.vegas_beta))
            stack.enter_context(X.fast_path(lab, ["client"]))
            rows = run(lab, todo, seconds, warmup, aqm, a.vegas_name)
    finally:
        if aqm is not None:
            aqm.close()
        if not a.keep:
            lab.down()
    print(X.table(["cc", "subflows", "vs kernel", "MPTCP Mbit/s", "TCP Mbit/s", "ratio", "note"],
                  [[r["cc"], r["subflows"], r["competitor"], r.get("mptcp_mbps"), r.get("tcp_mbps"),
                    r.get("ratio"), r.get("error", "")[:60]] for r in rows]))
    doc = {"experiment": "fairness", "rate_bps": rate, "delay_ms": a.delay, "seconds": seconds,
           "warmup": warmup, "vegas": {"alpha": a.vegas_alpha, "beta": a.vegas_beta,
                                       "source": "bpf/tcp_vegas.bpf.c"}, "results": rows}
    X.write_json(jpath, doc)
    plot(rows, png, f"one bottleneck {rate / 1e6:g} Mbit/s, {2 * a.delay:g} ms RTT + queue")
    print(f"wrote {jpath} and {png}")
    return 0 if all("ratio" in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
