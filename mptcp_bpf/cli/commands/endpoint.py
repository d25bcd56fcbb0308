"""`mptcp-bpf endpoint show`: the running stack's local addresses, like `ip mptcp endpoint`."""

from __future__ import annotations

import argparse
from typing import Any

from mptcp_bpf.cli.commands.conn import add_socket_option, client
from mptcp_bpf.cli.common import emit


def format_endpoint(e: dict[str, Any]) -> str:
    parts = [str(e.get("address", "-"))]
    if e.get("port"):
        parts.append(f"port {e['port']}")
    parts.append(f"id {e.get('id', '-')}")
    flags = e.get("flags") or []
    if isinstance(flags, str):
        flags = flags.split(",")
    if e.get("backup") and "backup" not in flags:
        flags = list(flags) + ["backup"]
    parts.extend(flags)
    if e.get("dev"):
        parts.append(f"dev {e['dev']}")
    return " ".join(parts)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("endpoint", help="local addresses of the running stack (ip mptcp endpoint)")
    cmds = p.add_subparsers(dest="command", metavar="COMMAND")
    show = cmds.add_parser("show", aliases=["list"], help="show endpoints")
    add_socket_option(show)
    show.set_defaults(func=show_endpoints)
    p.set_defaults(func=show_endpoints, socket=None)


def show_endpoints(args: argparse.Namespace) -> int:
    eps = client(args).request("endpoints")
    emit(args, eps, "\n".join(format_endpoint(e) for e in eps) if eps else "no endpoints")
    return 0
