"""`mptcp-bpf plugin show [KIND]` and `mptcp-bpf plugin set KIND.NAME.PARAM=VALUE`.

The equivalent of /sys/module/mptcp_*/parameters: with a stack running in this network
namespace both act on the stack (through its control socket); `show --local` lists this
process's registry (built-in and entry-point plug-ins with their defaults).
"""

from __future__ import annotations

import argparse
from typing import Any

from mptcp_bpf import plugins
from mptcp_bpf.cli.commands.conn import add_socket_option, client
from mptcp_bpf.cli.common import emit
from mptcp_bpf.control import plugin_table
from mptcp_bpf.errors import HintedError


def parse_setting(text: str) -> tuple[str, str, str, str]:
    """KIND.NAME.PARAM=VALUE or NAME.PARAM=VALUE (kind found from the name)."""
    lhs, sep, value = text.partition("=")
    parts = lhs.strip().split(".")
    if not sep or len(parts) not in (2, 3) or not all(parts):
        raise HintedError(f"bad setting {text!r}",
                          "use KIND.NAME.PARAM=VALUE, e.g. sched.roundrobin.num_segments=2")
    if len(parts) == 3:
        kind, name, param = parts
        if kind not in plugins.KINDS:
            raise HintedError(f"no plug-in kind {kind!r}", f"kinds: {', '.join(plugins.KINDS)}")
        return kind, name, param, value
    name, param = parts
    kinds = [k for k in plugins.KINDS if name in plugins.names(k)]
    if not kinds:
        known = ", ".join(f"{k}.{n}" for k in plugins.KINDS for n in plugins.names(k))
        raise HintedError(f"no plug-in named {name!r}", f"plug-ins: {known}")
    if len(kinds) > 1:
        raise HintedError(f"{name!r} names a plug-in of several kinds ({', '.join(kinds)})",
                          f"say which: e.g. {kinds[0]}.{name}.{param}={value}")
    return kinds[0], name, param, value


def format_table(table: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines = []
    for kind, entries in table.items():
        for name, info in entries.items():
            params = " ".join(f"{k}={_fmt(v)}" for k, v in info.get("params", {}).items())
            lines.append(f"{kind:<6} {name:<12} {params or '-'}")
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    return str(int(v)) if isinstance(v, bool) else str(v)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plugin", help="path managers, schedulers, congestion controls")
    cmds = p.add_subparsers(dest="command", metavar="COMMAND")
    show = cmds.add_parser("show", aliases=["list"], help="plug-ins and their parameters")
    show.add_argument("kind", nargs="?", choices=plugins.KINDS, help="only this kind")
    show.add_argument("--local", action="store_true",
                      help="this process's registry, not the running stack's")
    add_socket_option(show)
    show.set_defaults(func=show_plugins)
    st = cmds.add_parser("set", help="set a parameter of the running stack")
    st.add_argument("setting", nargs="+", metavar="KIND.NAME.PARAM=VALUE")
    add_socket_option(st)
    st.set_defaults(func=set_plugin)
    p.set_defaults(func=show_plugins, kind=None, local=False, socket=None)


def show_plugins(args: argparse.Namespace) -> int:
    table = None
    source = "local"
    if not args.local:
        try:
            table = client(args).request("plugin-get", **({"kind": args.kind} if args.kind else {}))
            source = "stack"
        except HintedError as exc:
            if "no mptcp-bpf stack" not in str(exc):
                raise
    if table is None:
        table = plugin_table()
        if args.kind:
            table = {args.kind: table[args.kind]}
    text = format_table(table)
    if source == "local" and not args.local:
        text += "\n(no stack runs in this namespace: registry defaults shown)"
    emit(args, table, text)
    return 0


def set_plugin(args: argparse.Namespace) -> int:
    parsed = [parse_setting(s) for s in args.setting]
    ctl = client(args)
    results = []
    for kind, name, param, value in parsed:
        plugins.get(kind, name)  # unknown plug-in: error with the list before asking the stack
        try:
            results.append(ctl.request("plugin-set", kind=kind, name=name, param=param,
                                       value=value))
        except HintedError as exc:
            if "no mptcp-bpf stack" in str(exc):
                raise HintedError(str(exc), "parameters live in the stack's process: start it "
                                  f"with `--set {name}.{param}={value}` (nc, perf), or run "
                                  "this command in the stack's namespace") from None
            raise
    emit(args, results, "\n".join(f"{r['kind']}.{r['name']}.{r['param']}={_fmt(r['value'])}"
                                  for r in results))
    return 0
