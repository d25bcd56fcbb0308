"""`mptcp-bpf monitor`: live events of the running stack, in the format of `ip mptcp monitor`
(created, established, announced, removed, sf_established, sf_closed, sf_priority, closed).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mptcp_bpf.cli.commands.conn import add_socket_option, addr, client

# ip mptcp monitor's order; the rest follow sorted, `time` only in JSON
ORDER = ("token", "remid", "locid", "saddr", "daddr", "sport", "dport", "backup", "error",
         "reset_reason", "server_side")
SKIP = {"type", "event", "time"}


def _token(v: Any) -> str:
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:08x}"
    text = str(v)
    return text[2:] if text.startswith("0x") else text


def format_event(ev: dict[str, Any]) -> str:
    kind = str(ev.get("type", ev.get("event", "event"))).upper()
    parts = [f"[{kind:>16}]"]
    keys = [k for k in ORDER if k in ev] + sorted(k for k in ev if k not in ORDER
                                                  and k not in SKIP)
    for k in keys:
        v = ev[k]
        if k in ("token", "remote_token"):
            v = _token(v)
        elif k in ("saddr", "daddr"):
            k += "6" if ":" in str(v) else "4"
        elif k in ("local", "remote"):
            v = addr(v)
        parts.append(f"{k}={v}")
    return " ".join(parts)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("monitor", help="stream the running stack's events (ip mptcp monitor)")
    p.add_argument("-n", "--count", type=int, default=0, help="stop after COUNT events")
    add_socket_option(p)
    p.set_defaults(func=run_monitor)


def run_monitor(args: argparse.Namespace) -> int:
    as_json = args.json or args.pretty
    seen = 0
    for ev in client(args).monitor():
        if as_json:
            print(json.dumps(ev, indent=2 if args.pretty else None, default=str))
        else:
            print(format_event(ev))
        sys.stdout.flush()
        seen += 1
        if args.count and seen >= args.count:
            break
    return 0
