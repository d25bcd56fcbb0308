"""`mptcp-bpf sysctl [-a] [NAME...] [-w NAME=VALUE...]`: net.mptcp.* of this namespace,
like sysctl(8); kept in pinned maps shared by every process and the fast path."""

from __future__ import annotations

import argparse

from mptcp_bpf.cli.common import emit
from mptcp_bpf.errors import HintedError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sysctl", help="net.mptcp.* settings (sysctl grammar)")
    p.add_argument("-a", "--all", action="store_true", help="show all (the default)")
    p.add_argument("-w", "--write", action="append", default=[], metavar="NAME=VALUE",
                   help="set a value, e.g. -w net.mptcp.mptcp_checksum=0 (repeatable)")
    p.add_argument("-n", "--values", action="store_true", help="print values only")
    p.add_argument("-j", "--json", action="store_true", default=argparse.SUPPRESS,
                   help="print JSON")
    p.add_argument("-p", "--pretty", action="store_true", default=argparse.SUPPRESS,
                   help="print pretty JSON")
    p.add_argument("--reset", action="store_true", help="set every value back to its default")
    p.add_argument("names", nargs="*", metavar="NAME",
                   help="names to show (NAME=VALUE sets, as with -w)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mptcp_bpf import sysctl as S
    writes = list(args.write)
    shows: list[str] = []
    for item in args.names:
        (writes if "=" in item else shows).append(item)
    parsed = []
    for item in writes:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise HintedError(f"bad assignment {item!r}",
                              "write NAME=VALUE, e.g. -w net.mptcp.mptcp_checksum=0")
        canon = S.canonical(name)
        parsed.append((canon, S.validate(canon, value.strip())))   # refuse before writing any
    shows = [S.canonical(n) for n in shows]
    with S.Sysctl.open(create=True) as sc:
        if args.reset:
            sc.reset()
        for name, value in parsed:
            sc.set(name, value)
        names = shows or ([n for n, _ in parsed] if parsed else S.NAMES)
        values = {S.PREFIX + n: sc.get(n) for n in names}
    if args.values:
        text = "\n".join(str(v) for v in values.values())
    else:
        text = "\n".join(f"{k} = {v}" for k, v in values.items())
    emit(args, values, text)
    return 0
