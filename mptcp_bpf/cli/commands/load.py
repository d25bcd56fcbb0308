"""`mptcp-bpf load DEV...` / `mptcp-bpf unload DEV...`: attach or detach the XDP fast path
on devices of this network namespace, pinned under /run/mptcp-bpf/<netns inode>/."""

from __future__ import annotations

import argparse
import sys
import warnings

from mptcp_bpf.cli.common import emit


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("load", help="attach the XDP fast path to devices and pin it")
    p.add_argument("devices", nargs="+", metavar="DEV")
    p.add_argument("--generic", action="store_true", help="use generic (skb) XDP")
    p.set_defaults(func=load)
    u = sub.add_parser("unload", help="detach the fast path; unpin all when no device is left")
    u.add_argument("devices", nargs="+", metavar="DEV")
    u.add_argument("--force", action="store_true", help="even if a running stack owns a device")
    u.set_defaults(func=unload)


def load(args: argparse.Namespace) -> int:
    from mptcp_bpf.datapath.loader import FastPath
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fp = FastPath.load(args.devices, generic=args.generic)
    try:
        for w in caught:
            if not issubclass(w.category, RuntimeWarning):
                continue   # other libraries' deprecation noise
            print(f"mptcp-bpf: warning: {w.message}", file=sys.stderr)
        modes = fp.device_modes()
        data = {"prog_id": fp.prog_id, "pin_dir": fp.path,
                "devices": [{"ifindex": i, "name": n, "mode": modes.get(n, "?")}
                            for i, n in sorted(fp.devices().items())]}
    finally:
        fp.close()
    names = ", ".join(f"{d['name']} ({d['mode']})" for d in data["devices"])
    emit(args, data, f"fast path (prog id {data['prog_id']}) on {names}; pinned in {data['pin_dir']}")
    return 0


def unload(args: argparse.Namespace) -> int:
    from mptcp_bpf.datapath.loader import FastPath
    fp = FastPath.open_pinned()
    try:
        gone = fp.unload(args.devices, force=args.force)
        left = [] if gone else sorted(fp.devices().values())
    finally:
        fp.close()
    data = {"unloaded": args.devices, "remaining": left, "unpinned": gone}
    text = f"detached from {', '.join(args.devices)}"
    text += "; nothing left, pins removed" if gone else f"; still on {', '.join(left)}"
    emit(args, data, text)
    return 0
