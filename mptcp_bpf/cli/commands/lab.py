"""`mptcp-bpf lab`: build multipath test labs, impair their links, configure kernel MPTCP."""

from __future__ import annotations

import argparse
import json
import os
import sys

from mptcp_bpf.cli.common import emit
from mptcp_bpf.errors import HintedError
from mptcp_bpf.lab import Lab
from mptcp_bpf.lab import impair


def _get(name: str) -> Lab:
    lab = Lab.find(name)
    if lab is None:
        known = Lab.names()
        raise HintedError(f"no lab called {name!r}",
                          f"known labs: {', '.join(known)}" if known else f"build it with `mptcp-bpf lab up {name}`")
    return lab


def cmd_up(args: argparse.Namespace) -> int:
    lab = Lab.up(args.name, paths=args.paths, router=args.router, ipv6=args.ipv6)
    info = lab.show()
    emit(args, info, _text(info))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    found = Lab.remove(args.name)
    if not found:
        raise HintedError(f"no lab called {args.name!r} (nothing removed)", "see `mptcp-bpf lab show`")
    emit(args, {"removed": args.name}, f"lab {args.name} removed")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    if args.name:
        info = _get(args.name).show()
        emit(args, info, _text(info))
        return 0
    infos = [Lab(lab.state).show() for lab in (Lab.find(n) for n in Lab.names()) if lab]
    emit(args, infos, "\n\n".join(_text(i) for i in infos) if infos else "no labs")
    return 0


def _text(info: dict) -> str:
    shape = "router" if info["router"] else "direct"
    lines = [f"lab {info['name']}: {info['paths']} path(s), {shape}{', ipv6' if info['ipv6'] else ''}"
             f"{'' if info['alive'] else ' (INCOMPLETE: run lab down)'}"]
    for node, ns in info["namespaces"].items():
        addrs = info["addresses"][node]
        lines.append(f"  {node:7} netns {ns}  dev {' '.join(info['devices'][node])}  "
                     f"addr {' '.join(addrs['4'] + addrs['6'])}")
    for path, dirs in info["links"].items():
        for d, s in dirs.items():
            if s:
                lines.append(f"  path {path} {d:4}: " + " ".join(f"{k}={v}" for k, v in sorted(s.items())))
    if info.get("delay_line_pid"):
        lines.append(f"  delay line pid {info['delay_line_pid']}")
    return "\n".join(lines)


def cmd_exec(args: argparse.Namespace) -> int:
    lab = _get(args.name)
    argv = list(args.cmd)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise HintedError("no command given", f"e.g. `mptcp-bpf lab exec {args.name} client -- ping 10.0.1.2`")
    ns = lab.ns(args.node)
    sys.stdout.flush()
    os.execvp("ip", ["ip", "netns", "exec", ns, *argv])
    return 127  # not reached


def cmd_link(args: argparse.Namespace) -> int:
    lab = _get(args.name)
    settings = {k: getattr(args, k) for k in ("rate", "limit", "delay", "jitter", "loss", "dup",
                                              "reorder", "corrupt", "seed")}
    settings["drop_subtype"] = args.drop_subtype
    if args.strip_mptcp_syn is not None:
        settings["strip_mptcp_syn"] = args.strip_mptcp_syn
    for flag in ("down", "up", "clear"):
        if getattr(args, flag):
            settings[flag] = True
    if args.stats:
        data = lab.link_stats(args.path)
        emit(args, data, json.dumps(data, indent=2))
        return 0
    result = lab.link(args.path, dir=args.dir, **settings)
    text = "\n".join(f"path {args.path} {d:4}: " + (" ".join(f"{k}={v}" for k, v in sorted(s.items())) or "clean")
                     for d, s in result.items())
    emit(args, result, text)
    return 0


def cmd_mptcp(args: argparse.Namespace) -> int:
    lab = _get(args.name)
    limits = {}
    if args.subflows is not None:
        limits["subflows"] = args.subflows
    if args.add_addr_accepted is not None:
        limits["add_addr_accepted"] = args.add_addr_accepted
    sysctls = {}
    for item in args.sysctl or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise HintedError(f"bad --sysctl {item!r}", "write NAME=VALUE, e.g. add_addr_timeout=1")
        sysctls[key] = value
    checksum = None if args.checksum is None else args.checksum == "on"
    changed = limits or args.endpoint is not None or sysctls or checksum is not None
    if changed:
        info = lab.mptcp(args.node, limits=limits or None, endpoints=args.endpoint,
                         checksum=checksum, sysctls=sysctls)
    else:
        info = lab.mptcp_show(args.node)
    text = [f"limits: subflows {info['limits'].get('subflows')} add_addr_accepted {info['limits'].get('add_addr_accepted')}"]
    for ep in info["endpoints"]:
        text.append(f"endpoint {ep['addr']} id {ep['id']} {' '.join(ep['flags'])}"
                    + (f" port {ep['port']}" if ep.get("port") else ""))
    text.append("sysctls: " + " ".join(f"{k}={v}" for k, v in info["sysctls"].items()))
    emit(args, info, "\n".join(text))
    return 0


def cmd_nstat(args: argparse.Namespace) -> int:
    lab = _get(args.name)
    data = lab.nstat(args.node, args.prefix)
    if not args.zeros:
        data = {k: v for k, v in data.items() if v}
    emit(args, data, "\n".join(f"{args.prefix}{k:30} {v}" for k, v in data.items()) or "(all zero)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("lab", help="multipath test labs in network namespaces",
                              description=__doc__)
    sub = p.add_subparsers(dest="lab_cmd", metavar="COMMAND")

    up = sub.add_parser("up", help="build a lab: client and server joined by N paths")
    up.add_argument("name")
    up.add_argument("--paths", type=int, default=2, help="number of paths (default 2)")
    up.add_argument("--router", action="store_true", help="go through a router namespace")
    up.add_argument("--ipv6", action="store_true", help="add IPv6 addresses too")
    up.set_defaults(func=cmd_up)

    down = sub.add_parser("down", help="remove a lab and everything it made")
    down.add_argument("name")
    down.set_defaults(func=cmd_down)

    show = sub.add_parser("show", help="list labs or show one")
    show.add_argument("name", nargs="?")
    show.set_defaults(func=cmd_show)

    ex = sub.add_parser("exec", help="run a command in a node: lab exec NAME NODE -- CMD...")
    ex.add_argument("name")
    ex.add_argument("node", choices=["client", "server", "router", "wire"])
    ex.add_argument("cmd", nargs=argparse.REMAINDER)
    ex.set_defaults(func=cmd_exec)

    ln = sub.add_parser("link", help="impair a path (settings change while traffic runs)")
    ln.add_argument("name")
    ln.add_argument("path", type=int, help="path number, from 1")
    ln.add_argument("--dir", choices=["up", "down", "both"], default="both",
                    help="up = client to server, down = server to client (default both)")
    ln.add_argument("--rate", help="e.g. 20mbit (TBF); 0 removes")
    ln.add_argument("--limit", type=int, help="rate queue in bytes (default 100 ms of the rate)")
    ln.add_argument("--delay", help="one-way delay, e.g. 25ms")
    ln.add_argument("--jitter", help="uniform +- jitter, e.g. 2ms")
    ln.add_argument("--loss", help="percent of frames dropped")
    ln.add_argument("--dup", help="percent of frames duplicated")
    ln.add_argument("--reorder", help="percent of frames sent ahead of the delayed ones")
    ln.add_argument("--corrupt", help="percent of TCP segments with a flipped payload byte (checksum fixed)")
    ln.add_argument("--strip-mptcp-syn", dest="strip_mptcp_syn", action="store_true", default=None,
                    help="remove the MPTCP option from SYNs")
    ln.add_argument("--no-strip-mptcp-syn", dest="strip_mptcp_syn", action="store_false")
    ln.add_argument("--drop-subtype", help="drop segments with these MPTCP subtypes (e.g. mp_join,dss); '' clears")
    ln.add_argument("--down", action="store_true", help="take the link down")
    ln.add_argument("--up", action="store_true", help="bring the link back up")
    ln.add_argument("--clear", action="store_true", help="remove every impairment first")
    ln.add_argument("--seed", type=int, help="seed for repeatable random choices")
    ln.add_argument("--stats", action="store_true", help="show the path's counters instead")
    ln.set_defaults(func=cmd_link)

    mp = sub.add_parser("mptcp", help="kernel MPTCP of a node: limits, endpoints, sysctls")
    mp.add_argument("name")
    mp.add_argument("node", choices=["client", "server", "router"])
    mp.add_argument("--subflows", type=int, help="limit: subflows per connection")
    mp.add_argument("--add-addr-accepted", type=int, help="limit: ADD_ADDRs accepted")
    mp.add_argument("--endpoint", action="append",
                    help="'ADDR [signal] [subflow] [backup] [fullmesh] [port N] [dev IF]'; repeat; "
                         "replaces the node's endpoints")
    mp.add_argument("--checksum", choices=["on", "off"], help="net.mptcp.checksum_enabled")
    mp.add_argument("--sysctl", action="append", help="NAME=VALUE under net.mptcp; repeat")
    mp.set_defaults(func=cmd_mptcp)

    ns = sub.add_parser("nstat", help="MIB counters of a node (default MPTcpExt, non-zero)")
    ns.add_argument("name")
    ns.add_argument("node", choices=["client", "server", "router"])
    ns.add_argument("--prefix", default="MPTcpExt")
    ns.add_argument("-z", "--zeros", action="store_true", help="also zero counters")
    ns.set_defaults(func=cmd_nstat)

    def usage(args: argparse.Namespace) -> int:
        p.print_help()
        return 2
    p.set_defaults(func=usage)
