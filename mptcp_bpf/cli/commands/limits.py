"""`mptcp-bpf limits show`: the running stack's limits, like `ip mptcp limits`."""

from __future__ import annotations

import argparse

from mptcp_bpf.cli.commands.conn import add_socket_option, client
from mptcp_bpf.cli.common import emit


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("limits", help="limits of the running stack (ip mptcp limits)")
    cmds = p.add_subparsers(dest="command", metavar="COMMAND")
    show = cmds.add_parser("show", help="show limits")
    add_socket_option(show)
    show.set_defaults(func=show_limits)
    p.set_defaults(func=show_limits, socket=None)


def show_limits(args: argparse.Namespace) -> int:
    lim = client(args).request("limits") or {}
    emit(args, lim, " ".join(f"{k} {v}" for k, v in lim.items()) or "no limits")
    return 0
