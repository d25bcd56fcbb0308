"""`mptcp-bpf plot RUN.json -o out.png`: per-subflow goodput, cwnd and RTT of a perf run."""

from __future__ import annotations

import argparse

from mptcp_bpf import plot
from mptcp_bpf.cli.common import emit


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="draw a perf run's per-subflow series to PNG")
    p.add_argument("run", metavar="RUN.json", help="output of `mptcp-bpf perf -J`")
    p.add_argument("-o", "--output", default=None, help="PNG file (default: RUN.png)")
    p.add_argument("--title", default=None, help="figure title")
    p.set_defaults(func=run_plot)


def run_plot(args: argparse.Namespace) -> int:
    out = args.output or (args.run[:-5] if args.run.endswith(".json") else args.run) + ".png"
    n = plot.render(plot.load(args.run), out, args.title)
    emit(args, {"output": out, "subflows": n}, f"wrote {out} ({n} subflows)")
    return 0
