"""`mptcp-bpf endpoint add|delete|change|flush|show`: the running stack's endpoints, with the
words of `ip mptcp endpoint` (ip-mptcp(8)); changes reach live connections at once."""

from __future__ import annotations

import argparse
from typing import Any

from mptcp_bpf.cli.commands.conn import add_socket_option, client
from mptcp_bpf.cli.common import emit
from mptcp_bpf.control import ENDPOINT_FLAGS, check_address, check_endpoint
from mptcp_bpf.errors import HintedError

ADD_USAGE = ("endpoint add ADDRESS [port PORT] [dev IFNAME] [id ID] "
             "[signal|subflow|backup|fullmesh]...")
CHANGE_FLAGS = {"backup": ("backup", True), "nobackup": ("backup", False),
                "fullmesh": ("fullmesh", True), "nofullmesh": ("fullmesh", False)}


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


def _value(words: list[str], i: int, key: str, usage: str) -> str:
    if i + 1 >= len(words):
        raise HintedError(f"{key} needs a value", f"usage: mptcp-bpf {usage}")
    return words[i + 1]


def _number(text: str, key: str, usage: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise HintedError(f"{key} must be a number, not {text!r}",
                          f"usage: mptcp-bpf {usage}") from None


def parse_add(words: list[str]) -> dict[str, Any]:
    """ip's words -> the endpoint-add request (checked as the stack will check it)."""
    req: dict[str, Any] = {"flags": []}
    i = 0
    while i < len(words):
        w = words[i]
        if w in ("port", "id"):
            req[w] = _number(_value(words, i, w, ADD_USAGE), w, ADD_USAGE)
            i += 2
            continue
        if w == "dev":
            req["dev"] = _value(words, i, w, ADD_USAGE)
            i += 2
            continue
        if w in ENDPOINT_FLAGS or w == "implicit":
            req["flags"].append(w)
        elif "address" not in req:
            req["address"] = w
        else:
            raise HintedError(f"unknown word {w!r}", f"usage: mptcp-bpf {ADD_USAGE}")
        i += 1
    return check_endpoint(req)


def parse_delete(words: list[str]) -> dict[str, Any]:
    usage = "endpoint delete id ID [ADDRESS]"
    req: dict[str, Any] = {}
    i = 0
    while i < len(words):
        if words[i] == "id":
            req["id"] = _number(_value(words, i, "id", usage), "id", usage)
            i += 2
        elif "address" not in req:
            req["address"] = check_address(words[i])
            i += 1
        else:
            raise HintedError(f"unknown word {words[i]!r}", f"usage: mptcp-bpf {usage}")
    if "id" not in req:
        raise HintedError("endpoint delete needs an id", f"usage: mptcp-bpf {usage}")
    return req


def parse_change(words: list[str]) -> dict[str, Any]:
    usage = "endpoint change [id ID] [ADDRESS] [port PORT] backup|nobackup|fullmesh|nofullmesh"
    req: dict[str, Any] = {}
    i = 0
    while i < len(words):
        w = words[i]
        if w in ("id", "port"):
            req[w] = _number(_value(words, i, w, usage), w, usage)
            i += 2
            continue
        if w in CHANGE_FLAGS:
            name, value = CHANGE_FLAGS[w]
            req[name] = value
        elif "address" not in req:
            req["address"] = check_address(w)
        else:
            raise HintedError(f"unknown word {w!r}", f"usage: mptcp-bpf {usage}")
        i += 1
    if "id" not in req and "address" not in req:
        raise HintedError("endpoint change needs an id or an address", f"usage: mptcp-bpf {usage}")
    if "backup" not in req and "fullmesh" not in req:
        raise HintedError("endpoint change needs a flag to set", f"usage: mptcp-bpf {usage}")
    req.pop("port", None)   # ip's syntax has it; an address names one endpoint here
    return req


def parse_show(words: list[str]) -> dict[str, Any]:
    usage = "endpoint show [id ID]"
    if not words:
        return {}
    if len(words) == 2 and words[0] == "id":
        return {"id": _number(words[1], "id", usage)}
    raise HintedError(f"unknown word {words[0]!r}", f"usage: mptcp-bpf {usage}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("endpoint", help="endpoints of the running stack (ip mptcp endpoint)")
    cmds = p.add_subparsers(dest="command", metavar="COMMAND")
    for names, fn, text in ((["show", "list"], show_endpoints, "endpoint show [id ID]"),
                            (["add"], add_endpoint, ADD_USAGE),
                            (["delete", "del"], delete_endpoint, "endpoint delete id ID [ADDRESS]"),
                            (["change", "set"], change_endpoint, "endpoint change [id ID] "
                             "[ADDRESS] backup|nobackup|fullmesh|nofullmesh"),
                            (["flush"], flush_endpoints, "endpoint flush")):
        c = cmds.add_parser(names[0], aliases=names[1:], help=text.removeprefix("endpoint "),
                            usage=f"mptcp-bpf [-j|-p] {text} [--socket PATH]")
        c.add_argument("words", nargs="*", metavar="WORD")
        add_socket_option(c)
        c.set_defaults(func=fn)
    p.set_defaults(func=show_endpoints, socket=None, words=[])


def _print(args: argparse.Namespace, eps: list[dict[str, Any]] | dict[str, Any]) -> int:
    rows = eps if isinstance(eps, list) else [eps]
    emit(args, eps, "\n".join(format_endpoint(e) for e in rows) if rows else "no endpoints")
    return 0


def show_endpoints(args: argparse.Namespace) -> int:
    return _print(args, client(args).request("endpoints", **parse_show(args.words)))


def add_endpoint(args: argparse.Namespace) -> int:
    return _print(args, client(args).request("endpoint-add", **parse_add(args.words)))


def delete_endpoint(args: argparse.Namespace) -> int:
    return _print(args, client(args).request("endpoint-delete", **parse_delete(args.words)))


def change_endpoint(args: argparse.Namespace) -> int:
    return _print(args, client(args).request("endpoint-change", **parse_change(args.words)))


def flush_endpoints(args: argparse.Namespace) -> int:
    if args.words:
        raise HintedError(f"unknown word {args.words[0]!r}", "usage: mptcp-bpf endpoint flush")
    return _print(args, client(args).request("endpoint-flush"))
