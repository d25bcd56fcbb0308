"""`mptcp-bpf prog show`: the pinned fast-path program, like `bpftool prog show`."""

from __future__ import annotations

import argparse

from mptcp_bpf.cli.common import emit


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prog", help="the pinned XDP program (bpftool prog)")
    cmds = p.add_subparsers(dest="command", metavar="COMMAND")
    show = cmds.add_parser("show", aliases=["list"], help="show the program")
    show.set_defaults(func=show_prog)
    p.set_defaults(func=show_prog)


def prog_data() -> dict:
    from mptcp_bpf.datapath import bpfsys
    from mptcp_bpf.datapath.loader import FastPath
    with FastPath.open_pinned() as fp:
        info = bpfsys.prog_info(fp.prog_fd)
        info["pinned"] = f"{fp.path}/prog_xdp"
        modes = fp.device_modes()
        info["devices"] = [{"ifindex": i, "name": n, "mode": modes.get(n, "?")}
                           for i, n in sorted(fp.devices().items())]
    return info


def show_prog(args: argparse.Namespace) -> int:
    info = prog_data()
    devs = " ".join(f"{d['name']}({d['ifindex']}, {d['mode']})" for d in info["devices"]) or "-"
    text = (f"{info['id']}: {info['type']}  name {info['name']}  tag {info['tag']}\n"
            f"\txlated {info['xlated_len']}B  jited {info['jited_len']}B  "
            f"verified_insns {info['verified_insns']}  map_ids "
            f"{','.join(map(str, info['map_ids']))}\n"
            f"\trun_cnt {info['run_cnt']}  run_time_ns {info['run_time_ns']}\n"
            f"\tpinned {info['pinned']}\n\tattached {devs}")
    emit(args, [info], text)
    return 0


