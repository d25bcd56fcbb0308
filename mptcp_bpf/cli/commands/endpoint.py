"""`mptcp-bpf endpoint add|delete|change|flush|show`: the running stack's endpoints, with the
words of `ip mptcp endpoint` (ip-mptcp(8)); changes reach live connections at once."""

from __future__ import annotations

import argparse
from typing import Any, Iterable

from mptcp_bpf.cli.commands.conn import add_socket_option, client
from mptcp_bpf.cli.common import emit
from mptcp_bpf.control import check_address, check_endpoint
from mptcp_bpf.mptcp.api import ENDPOINT_FLAGS
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


def _parse_words(words: list[str], usage: str, numbers: tuple[str, ...] = (),
                 texts: tuple[str, ...] = (), flags: Iterable[str] = ()) -> tuple[dict, list]:
    """ip's word syntax: `KEY VALUE` for the keys in `numbers` and `texts`, flag words,
    and one address; -> (request, flag words in order). Anything else is refused."""
    req: dict[str, Any] = {}
    seen: list[str] = []
    i = 0
    while i < len(words):
        w = words[i]
        if w in numbers or w in texts:
            v = _value(words, i, w, usage)
            req[w] = _number(v, w, usage) if w in numbers else v
            i += 2
            continue
        if w in flags:
            seen.append(w)
        elif "address" not in req:
            req["address"] = w
        else:
            raise HintedError(f"unknown word {w!r}", f"usage: mptcp-bpf {usage}")
        i += 1
    return req, seen


def parse_add(words: list[str]) -> dict[str, Any]:
    """ip's words -> the endpoint-add request (checked as the stack will check it)."""
    req, flags = _parse_words(words, ADD_USAGE, ("port", "id"), ("dev",),
                              (*ENDPOINT_FLAGS, "implicit"))
    return check_endpoint({**req, "flags": flags})


def parse_delete(words: list[str]) -> dict[str, Any]:
    usage = "endpoint delete id ID [ADDRESS]"
    req, _ = _parse_words(words, usage, ("id",))
    if "address" in req:
        req["address"] = check_address(req["address"])
    if "id" not in req:
        raise HintedError("endpoint delete needs an id", f"usage: mptcp-bpf {usage}")
    return req


def parse_change(words: list[str]) -> dict[str, Any]:
    usage = "endpoint change [id ID] [ADDRESS] [port PORT] backup|nobackup|fullmesh|nofullmesh"
    req, seen = _parse_words(words, usage, ("id", "port"), flags=CHANGE_FLAGS)
    req.update(CHANGE_FLAGS[w] for w in seen)
    if "address" in req:
        req["address"] = check_address(req["address"])
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
