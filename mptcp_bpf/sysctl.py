"""net.mptcp.* settings, kept in pinned BPF maps so every process of a network namespace
and the XDP fast path see one value (issue 6 §Sysctls).

Integers live in the `sysctl` array map (u32 per slot), names of plug-ins in `sysctl_str`
(16-byte strings), both in the namespace's pin directory (datapath.pins). The slots are
fixed in bpf/mptcp_common.h (MPB_SYS_*). Defaults: REFERENCE.md §2, except mptcp_version 1
(the Linux peer speaks only RFC 8684) and mptcp_path_manager fullmesh (multipath out of
the box).

    sc = Sysctl.open()            # creates the maps with their defaults if needed
    sc.get("mptcp_checksum")      # 1
    sc.set("net.mptcp.mptcp_scheduler", "roundrobin")
    sc.all()                      # {"mptcp_enabled": 1, ...}
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from mptcp_bpf import plugins
from mptcp_bpf.datapath import bpfsys, pins
from mptcp_bpf.datapath import structs as S
from mptcp_bpf.errors import HintedError

PREFIX = "net.mptcp."
# Accepted until the plug-in registries list their own names.
FALLBACK_NAMES = {"pm": ("default", "fullmesh", "ndiffports"),
                  "sched": ("default", "roundrobin", "redundant")}


@dataclass(frozen=True)
class Spec:
    name: str
    slot: int
    default: int | str
    lo: int = 0
    hi: int = 0
    kind: str = ""          # "pm"/"sched" for plug-in names, "" for integers
    doc: str = ""


SPECS: dict[str, Spec] = {s.name: s for s in (
    Spec("mptcp_enabled", S.MPB_SYS_ENABLED, pins.SYSCTL_INT_DEFAULTS[S.MPB_SYS_ENABLED], 0, 2,
         doc="0 off; 1 every socket; 2 only sockets that set MPTCP_ENABLED"),
    Spec("mptcp_checksum", S.MPB_SYS_CHECKSUM, pins.SYSCTL_INT_DEFAULTS[S.MPB_SYS_CHECKSUM], 0, 1,
         doc="1: use DSS checksums (also used when the peer asks)"),
    Spec("mptcp_syn_retries", S.MPB_SYS_SYN_RETRIES,
         pins.SYSCTL_INT_DEFAULTS[S.MPB_SYS_SYN_RETRIES], 0, 127,
         doc="SYN retransmissions with MP_CAPABLE before falling back to TCP"),
    Spec("mptcp_version", S.MPB_SYS_VERSION, pins.SYSCTL_INT_DEFAULTS[S.MPB_SYS_VERSION], 0, 1,
         doc="0 RFC 6824, 1 RFC 8684 (a server answers in the client's version)"),
    Spec("mptcp_debug", S.MPB_SYS_DEBUG, pins.SYSCTL_INT_DEFAULTS[S.MPB_SYS_DEBUG], 0, 2,
         doc="1 debug log of connection events; 2 also a fast-path trace line per segment"),
    Spec("mptcp_path_manager", S.MPB_SYS_PATH_MANAGER,
         pins.SYSCTL_STR_DEFAULTS[S.MPB_SYS_PATH_MANAGER], kind="pm",
         doc="default, fullmesh, ndiffports or a registered path manager"),
    Spec("mptcp_scheduler", S.MPB_SYS_SCHEDULER, pins.SYSCTL_STR_DEFAULTS[S.MPB_SYS_SCHEDULER],
         kind="sched", doc="default, roundrobin, redundant or a registered scheduler"),
)}
NAMES = list(SPECS)
DEFAULTS: dict[str, int | str] = {n: s.default for n, s in SPECS.items()}


def canonical(name: str) -> str:
    """`net.mptcp.mptcp_x`, `mptcp_x` (or `net/mptcp/mptcp_x`) -> `mptcp_x`; HintedError if unknown."""
    bare = name.strip().replace("/", ".")
    bare = bare.removeprefix(PREFIX)
    if bare in SPECS:
        return bare
    if f"mptcp_{bare}" in SPECS:
        return f"mptcp_{bare}"
    raise HintedError(f"unknown sysctl {name!r}",
                      "known: " + ", ".join(PREFIX + n for n in NAMES))


def plugin_names(kind: str) -> list[str]:
    """Names a plug-in sysctl accepts: the registry's, else the seed's built-in ones."""
    try:
        found = plugins.names(kind)
    except Exception:   # a broken plug-in must not make sysctls unusable
        found = []
    return found or list(FALLBACK_NAMES[kind])


def validate(name: str, value: int | str) -> int | str:
    """The stored form of `value` for sysctl `name`; HintedError saying why it is refused."""
    spec = SPECS[canonical(name)]
    full = PREFIX + spec.name
    if spec.kind:
        text = str(value).strip()
        allowed = plugin_names(spec.kind)
        if text not in allowed:
            raise HintedError(f"{full}: no {'path manager' if spec.kind == 'pm' else 'scheduler'}"
                              f" named {text!r}", "choose one of: " + ", ".join(allowed))
        if len(text.encode()) > S.MPB_SYSCTL_STR_LEN - 1:
            raise HintedError(f"{full}: name {text!r} is longer than 15 bytes", "")
        return text
    try:
        num = int(str(value).strip(), 0) if isinstance(value, str) else int(value)
    except ValueError:
        raise HintedError(f"{full} takes an integer, not {value!r}",
                          f"use a value from {spec.lo} to {spec.hi}") from None
    if not spec.lo <= num <= spec.hi:
        raise HintedError(f"{full}={num} is out of range",
                          f"use a value from {spec.lo} to {spec.hi} ({spec.doc})")
    return num


class Sysctl:
    """The net.mptcp.* values of one network namespace (its pinned maps)."""

    def __init__(self, ints: bpfsys.Map, strs: bpfsys.Map, path: str) -> None:
        self._ints, self._strs, self.path = ints, strs, path

    @classmethod
    def open(cls, create: bool = True, netns: str | None = None,
             pin_dir: str | None = None) -> "Sysctl":
        """Open (create=True: create with the defaults if missing) the namespace's maps."""
        with pins.in_netns(netns):
            path = pin_dir or pins.pin_dir(None)
            cookie = pins.netns_cookie()
        pins.check_bpffs(os.path.dirname(path.rstrip("/")))
        try:
            if pins.is_stale(path, cookie):
                if not create:
                    raise FileNotFoundError(path)
                pins.remove_dir(path)   # left by a deleted namespace with the same inode
            ints, strs = pins.sysctl_maps(path, create=create, cookie=cookie)
        except FileNotFoundError:
            raise HintedError("no net.mptcp sysctls in this network namespace yet",
                              "they are created by `mptcp-bpf sysctl`, `mptcp-bpf load` "
                              "or a running stack") from None
        except PermissionError:
            raise HintedError("reading the pinned sysctls needs root",
                              "run with sudo") from None
        return cls(ints, strs, path)

    def close(self) -> None:
        self._ints.close()
        self._strs.close()

    def __enter__(self) -> "Sysctl":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, name: str) -> int | str:
        spec = SPECS[canonical(name)]
        key = struct.pack("<I", spec.slot)
        if spec.kind:
            raw = self._strs.lookup(key)
            text = bytes(raw or b"").split(b"\0", 1)[0].decode(errors="replace")
            return text or spec.default
        raw = self._ints.lookup(key)
        return struct.unpack("<I", raw)[0] if raw else spec.default

    def set(self, name: str, value: int | str) -> int | str:
        """Validate and store; returns the stored value."""
        spec = SPECS[canonical(name)]
        stored = validate(spec.name, value)
        key = struct.pack("<I", spec.slot)
        if spec.kind:
            self._strs.update(key, str(stored).encode().ljust(S.MPB_SYSCTL_STR_LEN, b"\0"))
        else:
            self._ints.update(key, struct.pack("<I", int(stored)))
        return stored

    def all(self) -> dict[str, int | str]:
        return {n: self.get(n) for n in NAMES}

    def reset(self) -> None:
        """Back to the defaults."""
        pins.write_sysctl_defaults(self._ints, self._strs)
