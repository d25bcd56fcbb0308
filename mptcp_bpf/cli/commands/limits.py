"""`mptcp-bpf limits show|set`: the running stack's limits, with the words of
`ip mptcp limits` (subflows 0..32, add_addr_accepted 0..8)."""

from __future__ import annotations

import argparse
from typing import Any

from mptcp_bpf.cli.commands.conn import add_socket_option, client
from mptcp_bpf.cli.common import emit
from mptcp_bpf.control import check_limits
from mptcp_bpf.errors import HintedError

USAGE = "limits set [subflows N] [add_addr_accepted N]"
NAMES = {"subflows": "subflows", "subflow": "subflows", "add_addr_accepted": "add_addr_accepted"}


def parse_set(words: list[str]) -> dict[str, Any]:
    """ip's words (`subflow` or `subflows`) -> the limits-set request, checked."""
    req: dict[str, Any] = {}
    if len(words) % 2:
        raise HintedError(f"{words[-1]} needs a value", f"usage: mptcp-bpf {USAGE}")
    for key, value in zip(words[::2], words[1::2]):
        if key not in NAMES:
            raise HintedError(f"unknown limit {key!r}", f"usage: mptcp-bpf {USAGE}")
        req[NAMES[key]] = value
    return check_limits(req)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("limits", help="limits of the running stack (ip mptcp limits)")
    cmds = p.add_subparsers(dest="command", metavar="COMMAND")
    show = cmds.add_parser("show", help="show limits")
    add_socket_option(show)
    show.set_defaults(func=show_limits)
    st = cmds.add_parser("set", help=USAGE.removeprefix("limits "),
                         usage=f"mptcp-bpf [-j|-p] {USAGE} [--socket PATH]")
    st.add_argument("words", nargs="*", metavar="WORD")
    add_socket_option(st)
    st.set_defaults(func=set_limits)
    p.set_defaults(func=show_limits, socket=None)


def _text(lim: dict[str, Any]) -> str:
    return " ".join(f"{k} {v}" for k, v in lim.items()) or "no limits"


def show_limits(args: argparse.Namespace) -> int:
    lim = client(args).request("limits") or {}
    emit(args, lim, _text(lim))
    return 0


def set_limits(args: argparse.Namespace) -> int:
    lim = client(args).request("limits-set", **parse_set(args.words)) or {}
    emit(args, lim, _text(lim))
    return 0
