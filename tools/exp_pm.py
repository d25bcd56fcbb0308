#!/usr/bin/env python3
"""Path managers against the kernel: how many subflows, over which address pairs, our
client creates with fullmesh (2x1, 1x2, 2x2, 2x2 with num_subflows 2) and ndiffports
(num_subflows 3), confirmed by the kernel server's MPJoin counters.

Lab: two direct paths; the client has 10.0.1.1 and 10.0.2.1 (one or both given to our
stack with --dev), the kernel server 10.0.1.2 and 10.0.2.2 and announces the second with
a `signal` endpoint when the case wants two server addresses. For each case our
`mptcp-bpf perf` client runs a few seconds; the subflows are read from its -J report
(local and remote address of each), the joins from the server's MPTcpExt counters.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import exp_lib as X  # noqa: E402

PORT = 5201


@dataclass
class Case:
    label: str
    pm: str
    local: int          # client addresses our stack uses
    remote: int         # server addresses (1: initial only; 2: also announced)
    sets: tuple[str, ...] = ()

    def expected_pairs(self, lab: Any) -> Counter:
        c = lab.addresses("client")[:self.local]
        s = lab.addresses("server")[:self.remote]
        if self.pm == "ndiffports":
            n = int(self.sets[0].split("=")[1]) if self.sets else 2
            return Counter({(c[0], s[0]): n})
        n = int(self.sets[0].split("=")[1]) if self.sets else 1
        return Counter({(a, b): n for a in c for b in s})


CASES = [
    Case("fullmesh 2x1", "fullmesh", 2, 1),
    Case("fullmesh 1x2", "fullmesh", 1, 2),
    Case("fullmesh 2x2", "fullmesh", 2, 2),
    Case("fullmesh 2x2 num_subflows=2", "fullmesh", 2, 2, ("fullmesh.num_subflows=2",)),
    Case("ndiffports 3", "ndiffports", 1, 1, ("ndiffports.num_subflows=3",)),
]

COUNTERS = ("MPCapableSYNRX", "MPJoinSynRx", "MPJoinAckRx", "MPJoinRejected", "AddAddrTx")


def run_case(lab: Any, case: Case, seconds: float) -> dict[str, Any]:
    signal = [lab.addresses("server")[1]] if case.remote > 1 else []
    X.kernel_mptcp_server(lab, subflows=8, signal=signal)
    before = lab.nstat("server")
    server = X.start_kserve(lab, PORT, conns=1, max_time=seconds + 120)
    ours = None
    try:
        argv = ["perf", "-c", lab.addresses("server")[0], "-p", str(PORT), "-t", str(seconds), "-J",
                "--path-manager", case.pm]
        for s in case.sets:
            argv += ["--set", s]
        for dev in lab.devices("client")[:case.local]:
            argv += ["--dev", dev]
        ours = X.start(lab, "client", X.ours_argv(*argv), "our perf client")
        mine = ours.finish(seconds + 90)
        server.finish(30)
    finally:
        for p in (ours, server):
            if p is not None:
                p.stop()
    after = lab.nstat("server")
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in COUNTERS}
    subflows: dict[str, tuple[str, str]] = {}
    for iv in mine.get("intervals", []):
        for sf in iv.get("subflows", []):
            if sf.get("local") and sf.get("remote"):
                subflows[f"{sf['local']}>{sf['remote']}"] = (sf["local"].rsplit(":", 1)[0],
                                                             sf["remote"].rsplit(":", 1)[0])
    pairs = Counter(subflows.values())
    want = case.expected_pairs(lab)
    n = sum(pairs.values())
    ok = pairs == want and delta["MPJoinAckRx"] == n - 1 and delta["MPCapableSYNRX"] == 1
    if not mine:
        ok = False
    return {"case": case.label, "pm": case.pm, "sets": list(case.sets), "subflows": n,
            "expected": sum(want.values()), "pairs": sorted(f"{a}->{b} x{k}" for (a, b), k in pairs.items()),
            "expected_pairs": sorted(f"{a}->{b} x{k}" for (a, b), k in want.items()),
            "kernel": delta, "ok": ok, "error": "" if mine else ours.tail(600) if ours else ""}


def plot(rows: list[dict[str, Any]], png: Path) -> None:
    plt = X.pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["subflows"] for r in rows], 0.4, label="subflows (ours)")
    ax.bar([i + 0.2 for i in x], [r["kernel"]["MPJoinAckRx"] + 1 for r in rows], 0.4,
           label="1 + kernel MPJoinAckRx")
    ax.plot(list(x), [r["expected"] for r in rows], "k_", markersize=30, label="expected")
    ax.set_xticks(list(x), [r["case"].replace(" num", "\nnum") for r in rows], fontsize=8)
    ax.set_ylabel("subflows")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="exp_pm", description=__doc__.splitlines()[0])
    X.common_args(p, "pm")
    p.add_argument("--time", type=float, help="seconds of traffic per case (4; fast 3)")
    a = p.parse_args(argv)
    seconds = a.time or (3.0 if a.fast else 4.0)
    jpath, png = X.outputs(a.out, "pm")
    lab = X.fresh_lab(a.lab, paths=2)
    rows = []
    try:
        with X.fast_path(lab, ["client"]):
            for case in CASES:
                try:
                    r = run_case(lab, case, seconds)
                    if not r["ok"]:  # a loaded machine can lose a join's handshake: once more
                        r = run_case(lab, case, seconds)
                except RuntimeError as exc:
                    r = {"case": case.label, "pm": case.pm, "sets": list(case.sets), "subflows": 0,
                         "expected": 0, "pairs": [], "expected_pairs": [], "ok": False,
                         "kernel": {k: 0 for k in COUNTERS}, "error": str(exc)[:600]}
                print(f"{case.label}: {r['subflows']} subflows {'ok' if r['ok'] else 'WRONG'}",
                      file=sys.stderr, flush=True)
                rows.append(r)
    finally:
        if not a.keep:
            lab.down()
    print(X.table(["case", "subflows", "expected", "kernel joins", "pairs", "result"],
                  [[r["case"], r["subflows"], r["expected"], r["kernel"]["MPJoinAckRx"],
                    ", ".join(r["pairs"]), "ok" if r["ok"] else "WRONG"] for r in rows]))
    X.write_json(jpath, {"experiment": "pm", "seconds": seconds, "results": rows})
    plot(rows, png)
    print(f"wrote {jpath} and {png}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
