"""`mptcp-bpf stats`: the fast path's per-subtype and verdict counters (from the pins),
plus the running stack's MPTcpExt-style counters when a stack runs in this namespace."""

from __future__ import annotations

import argparse

from mptcp_bpf.cli.common import emit
from mptcp_bpf.errors import HintedError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stats", help="fast-path counters (per MPTCP subtype) and stack counters")
    p.add_argument("-a", "--all", action="store_true", help="also show zero counters")
    p.add_argument("--fastpath-only", action="store_true", help="skip the running stack")
    p.add_argument("--socket", metavar="PATH", help="control socket of the stack")
    p.set_defaults(func=show_stats)


def fastpath_stats() -> dict | None:
    from mptcp_bpf.datapath.loader import FastPath
    try:
        fp = FastPath.open_pinned()
    except HintedError:
        return None
    with fp:
        return {"counters": fp.counters(),
                "subflows": {str(k): v for k, v in sorted(fp.subflow_stats().items())}}


def stack_stats(path: str | None) -> dict | None:
    from mptcp_bpf.control import ControlClient
    try:
        return ControlClient(path).request("stats")
    except HintedError:
        return None


def show_stats(args: argparse.Namespace) -> int:
    fast = fastpath_stats()
    stack = None if args.fastpath_only else stack_stats(args.socket)
    if fast is None and stack is None:
        raise HintedError("neither the fast path nor a stack runs in this network namespace",
                          "load the fast path (mptcp-bpf load DEV...) or start a stack")
    data = {"fastpath": fast, "stack": stack}
    lines = []
    if fast is not None:
        c = fast["counters"]
        lines.append("fast path:")
        seen = [k for k in c if k.startswith("seen_")]
        lines.append(f"  {'subtype':<14}{'seen':>12}{'owned':>12}")
        for k in seen:
            st = k[len("seen_"):]
            if args.all or c[k] or c[f"owned_{st}"]:
                lines.append(f"  {st:<14}{c[k]:>12}{c[f'owned_{st}']:>12}")
        for k, v in c.items():
            if not k.startswith(("seen_", "owned_")) and (v or args.all):
                lines.append(f"  {k:<26}{v:>12}")
        for sf, st in fast["subflows"].items():
            lines.append(f"  subflow {sf:<10} packets {st['packets']:>10} bytes {st['bytes']:>12}")
    else:
        lines.append("fast path: not loaded")
    if stack is not None:
        lines.append("stack:")
        for k, v in stack.items():
            if v or args.all:
                lines.append(f"  {k:<30}{v:>12}")
    else:
        lines.append("stack: none running")
    emit(args, data, "\n".join(lines))
    return 0
