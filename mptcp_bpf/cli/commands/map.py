"""`mptcp-bpf map show` / `mptcp-bpf map dump NAME`: the fast path's pinned maps, like
`bpftool map`, decoded with the structs of bpf/mptcp_common.h."""

from __future__ import annotations

import argparse
import os
import struct

from mptcp_bpf.cli.common import emit
from mptcp_bpf.errors import HintedError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("map", help="the pinned maps (bpftool map)")
    cmds = p.add_subparsers(dest="command", metavar="COMMAND")
    show = cmds.add_parser("show", aliases=["list"], help="list the maps")
    show.set_defaults(func=show_maps)
    dump = cmds.add_parser("dump", help="print the entries of one map")
    dump.add_argument("name", metavar="NAME")
    dump.set_defaults(func=dump_map)
    p.set_defaults(func=show_maps)


def _pin_dir() -> str:
    from mptcp_bpf.datapath import pins
    path = pins.pin_dir()
    pins.check_bpffs(os.path.dirname(path))
    if not os.path.isdir(path) or not os.listdir(path):
        raise HintedError("nothing is pinned for this network namespace",
                          "load the fast path with: mptcp-bpf load DEV...")
    return path


def _names(path: str) -> list[str]:
    from mptcp_bpf.datapath import pins
    order = list(pins.MAP_NAMES) + list(pins.SHARED_MAPS)
    found = [n for n in os.listdir(path) if n != pins.PROG_PIN]
    return sorted(found, key=lambda n: (order.index(n) if n in order else 99, n))


def show_maps(args: argparse.Namespace) -> int:
    from mptcp_bpf.datapath import bpfsys
    path = _pin_dir()
    rows = []
    for name in _names(path):
        with bpfsys.Map.pinned(os.path.join(path, name)) as m:
            info = dict(m.info)
        info["pinned"] = os.path.join(path, name)
        info.pop("type_id", None)
        rows.append(info)
    text = "\n".join(f"{r['id']}: {r['type']}  name {r['name']}  key {r['key_size']}B  "
                     f"value {r['value_size']}B  max_entries {r['max_entries']}\n"
                     f"\tpinned {r['pinned']}" for r in rows)
    emit(args, rows, text)
    return 0


def _u32(raw: bytes) -> int:
    return struct.unpack("<I", raw[:4])[0]


def decode(name: str, key: bytes, value: bytes | list[bytes]) -> dict:
    """One entry as plain data (per-CPU values summed where they are counters)."""
    from mptcp_bpf.datapath import structs as S
    if name == "subflows":
        v = S.MpbSubflowVal.from_buffer_copy(value)
        return {"key": S.decode_subflow_key(key),
                "value": {"subflow_id": v.subflow_id, "token": f"0x{v.token:08x}",
                          "flags": v.flags}}
    if name == "listeners":
        v = S.MpbListenerVal.from_buffer_copy(value)
        return {"key": S.decode_listener_key(key), "value": {"id": v.id, "flags": v.flags}}
    if name == "counters":
        tot = [0] * S.MPB_C_MAX
        for raw in value:
            for i, x in enumerate(S.MpbCounters.from_buffer_copy(raw).v):
                tot[i] += x
        return {"key": _u32(key), "value": {n: tot[i] for i, n in sorted(S.COUNTER_NAMES.items())}}
    if name == "subflow_stats":
        pk = sum(S.MpbSubflowStats.from_buffer_copy(r).packets for r in value)
        by = sum(S.MpbSubflowStats.from_buffer_copy(r).bytes for r in value)
        return {"key": {"subflow_id": _u32(key)}, "value": {"packets": pk, "bytes": by}}
    if name == "sysctl_str":
        return {"key": _u32(key), "value": bytes(value).split(b"\0", 1)[0].decode(errors="replace")}
    if name in ("devices", "sysctl", "owners"):
        return {"key": _u32(key), "value": _u32(value)}
    if isinstance(value, list):
        return {"key": key.hex(), "values": [v.hex() for v in value]}
    return {"key": key.hex(), "value": bytes(value).hex()}


def dump_map(args: argparse.Namespace) -> int:
    from mptcp_bpf.datapath import bpfsys
    path = _pin_dir()
    names = _names(path)
    if args.name not in names:
        raise HintedError(f"no map named {args.name!r}", "maps: " + ", ".join(names))
    rows = []
    with bpfsys.Map.pinned(os.path.join(path, args.name)) as m:
        if m.info["type"] == "xskmap":
            raise HintedError("the kernel does not let user space read an XSKMAP's sockets",
                              "see which devices have the fast path with: mptcp-bpf prog show")
        else:
            for k, v in m.items():
                rows.append(decode(args.name, k, v))
            if args.name in ("sysctl", "sysctl_str"):
                rows = [r for r in rows if r["value"] not in (0, "")]
    text = "\n".join(f"key: {r['key']}" + (f"  value: {r['value']}" if "value" in r else "")
                     for r in rows) or "(empty)"
    emit(args, rows, text + f"\nFound {len(rows)} element{'s' if len(rows) != 1 else ''}")
    return 0
