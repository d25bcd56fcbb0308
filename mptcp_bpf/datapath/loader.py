"""Load, attach, pin and drive the XDP fast path (bpf/mptcp_xdp.bpf.c).

    fp = FastPath.load(["veth0"])            # load the cached object, pin, attach
    fp.add_listener(socket.AF_INET, None, 80)
    fp.add_subflow(socket.AF_INET, b"\\x0a\\0\\0\\1", 80, b"\\x0a\\0\\0\\2", 40000,
                   subflow_id=1, token=0xdeadbeef)
    fp.set_xsk(ifindex, queue, xsk.fd)       # frames of owned segments go to that socket
    fp.counters(); fp.subflow_stats()
    fp.claim("veth0", os.getpid())           # one stack per device; release() when done
    fp.unload(["veth0"])

Pins live in /run/mptcp-bpf/<netns inode>/ (see pins.py) so that `FastPath.open_pinned()`
works from any process of the namespace, including under `ip netns exec`. The program is
compiled once per machine by clang (build.py: cached by content under /run/mptcp-bpf-cache)
and loaded with libbpf; its `sysctl` map is the namespace's pinned one, so the object does
not depend on the namespace. Loading it costs the verifier's time only (~0.2 s).

Owned segments arrive on the XSK with a struct mpb_meta in front (structs.Meta.parse).
Ownership: a subflow's 4-tuple, or a SYN (without ACK) to a listener. Add the subflow's
entry before answering a listener's SYN so the rest of the handshake is owned too.
If a device/queue has no XSK, owned frames are dropped (so the kernel sends no RST),
unless the entry was added with pass_no_xsk=True (then they go to the kernel).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import warnings
from typing import Iterable

from mptcp_bpf.errors import HintedError
from mptcp_bpf.datapath import bpfsys, build, pins
from mptcp_bpf.datapath import structs as S

log = logging.getLogger(__name__)

BPF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))), "bpf")
XDP_SOURCE = os.path.join(BPF_DIR, "mptcp_xdp.bpf.c")

XDP_FLAGS_UPDATE_IF_NOEXIST = 1
XDP_FLAGS_SKB_MODE = 2
XDP_FLAGS_DRV_MODE = 4


def _require_root() -> None:
    if os.geteuid() != 0:
        raise HintedError("loading the fast path needs root (BPF, XDP, bpffs)",
                          "run it with sudo, or as root")


def load_object(path: str, source: str | None = None) -> bpfsys.BpfObject:
    """Load the compiled fast path (build.object_for: cached per machine) with libbpf,
    its `sysctl` map replaced by the pinned one of `path`. HintedError with the
    verifier's log on rejection."""
    sysctl_fd = bpfsys.obj_get(os.path.join(path, "sysctl"))
    try:
        for attempt in (1, 2):
            elf_path = build.object_for(source or XDP_SOURCE)
            with open(elf_path, "rb") as f:
                elf = f.read()
            with bpfsys.libbpf_messages() as err:
                try:
                    obj = bpfsys.BpfObject(elf, reuse={"sysctl": sysctl_fd})
                except OSError as exc:
                    failure: OSError | None = exc
                else:
                    failure = None
            if failure is None or "open_mem" not in str(failure) or attempt == 2:
                break
            with contextlib.suppress(FileNotFoundError):   # damaged cache: build it again
                os.unlink(elf_path)
    finally:
        os.close(sysctl_fd)
    if failure is not None:
        logtext = "".join(err).strip()
        tail = "\n".join(logtext.splitlines()[-80:])
        raise HintedError(f"the fast path failed to load: {failure}\n{tail}",
                          "the verifier's log is above; check bpf/mptcp_xdp.bpf.c")
    return obj


def _attach(ifname: str, fd: int, flags: int) -> int:
    return bpfsys.xdp_attach(_ifindex(ifname), fd, flags)


def _xdp_state(ifindex: int) -> tuple[int, int]:
    """(attached prog id, mode) of a device: mode 1 native, 2 generic, 0 none."""
    from pyroute2 import IPRoute  # noqa: PLC0415
    with IPRoute() as ipr:
        links = ipr.get_links(ifindex)
    if not links:
        return 0, 0
    xdp = links[0].get_attr("IFLA_XDP")
    if not xdp:
        return 0, 0
    mode = xdp.get_attr("IFLA_XDP_ATTACHED") or 0  # pyroute2 may name it: xdp, xdpgeneric
    mode = {"xdp": 1, "xdpgeneric": 2, "xdpoffload": 3, "multi": 4}.get(mode, mode)
    return int(xdp.get_attr("IFLA_XDP_PROG_ID") or 0), int(mode)


def _ifindex(dev: str) -> int:
    try:
        return socket.if_nametoindex(dev)
    except OSError:
        raise HintedError(f"no such device {dev!r} in this network namespace",
                          "list devices with: ip link show") from None


class FastPath:
    """Handle on the pinned fast path of one network namespace (see module docstring)."""

    def __init__(self, path: str, netns: str | None = None) -> None:
        self.path = path
        self.netns = netns
        self.prog_fd = bpfsys.obj_get(os.path.join(path, pins.PROG_PIN))
        self.maps: dict[str, bpfsys.Map] = {}
        for name in pins.MAP_NAMES:
            self.maps[name] = bpfsys.Map.pinned(os.path.join(path, name))

    # -- construction -------------------------------------------------------------------

    @classmethod
    def load(cls, devices: Iterable[str] = (), netns: str | None = None,
             pin_dir: str | None = None, generic: bool = False) -> "FastPath":
        """Pin the fast path of the namespace (compiled once per machine) and attach it
        to `devices` (native XDP; generic with a warning if the driver refuses, or always
        with generic=True). Loading again, or on an attached device, is harmless."""
        _require_root()
        devices = list(devices)
        with pins.in_netns(netns):
            path = pin_dir or pins.pin_dir(None)
            cookie = pins.netns_cookie()
            for dev in devices:       # a typo must not cost a load
                _ifindex(dev)
            pins.ensure_dir(path)
            with pins.locked(path):
                if pins.drop_if_stale(path, cookie):   # a deleted namespace's leftovers
                    pins.ensure_dir(path)
                cls._ensure_pinned(path, cookie)
                fp = cls(path, netns)
                for dev in devices:
                    fp._attach_device(dev, generic)
        return fp

    @classmethod
    def _ensure_pinned(cls, path: str, cookie: int | None = None) -> None:
        if os.path.exists(os.path.join(path, pins.PROG_PIN)):
            return
        ints, strs = pins.sysctl_maps(path, cookie=cookie)   # the program uses this `sysctl`
        ints.close()
        strs.close()
        pins.owners_map(path).close()
        with load_object(path) as obj:   # pins keep maps and program alive after close
            for name in pins.MAP_NAMES:
                target = os.path.join(path, name)
                if os.path.exists(target):
                    os.unlink(target)   # leftovers of an interrupted load
                bpfsys.obj_pin(obj.map_fd(name), target)
            bpfsys.obj_pin(obj.prog_fd("xdp_main"), os.path.join(path, pins.PROG_PIN))

    @classmethod
    def open_pinned(cls, netns: str | None = None, pin_dir: str | None = None) -> "FastPath":
        """The fast path pinned by another process (CLI, a second process of the stack)."""
        with pins.in_netns(netns):
            path = pin_dir or pins.pin_dir(None)
            cookie = pins.netns_cookie()
        if not os.path.exists(os.path.join(path, pins.PROG_PIN)) or pins.is_stale(path, cookie):
            if not pins.bpffs_mounted(os.path.dirname(path)):
                pins.check_bpffs(os.path.dirname(path))
            raise HintedError("the fast path is not loaded in this network namespace",
                              "load it with: mptcp-bpf load DEV...")
        try:
            return cls(path, netns)
        except PermissionError:
            raise HintedError("cannot open the pinned fast path: permission denied",
                              "run as root") from None
        except FileNotFoundError as exc:
            raise HintedError(f"the pinned fast path in {path} is incomplete ({exc})",
                              "load it again: mptcp-bpf load DEV...") from None

    def close(self) -> None:
        for m in self.maps.values():
            m.close()
        self.maps.clear()
        if self.prog_fd >= 0:
            os.close(self.prog_fd)
            self.prog_fd = -1

    def __enter__(self) -> "FastPath":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- devices ------------------------------------------------------------------------

    @property
    def prog_id(self) -> int:
        return bpfsys.prog_info(self.prog_fd)["id"]

    def devices(self) -> dict[int, str]:
        """ifindex -> device name of the devices the fast path is attached to."""
        out: dict[int, str] = {}
        with pins.in_netns(self.netns):
            for k in self.maps["devices"].keys():
                idx = struct.unpack("<I", k)[0]
                try:
                    out[idx] = socket.if_indextoname(idx)
                except OSError:
                    out[idx] = f"if{idx}"
        return out

    def device_modes(self) -> dict[str, str]:
        """device name -> "native", "generic" or "detached" (as netlink reports it)."""
        names = {1: "native", 2: "generic", 3: "offload"}
        out = {}
        with pins.in_netns(self.netns):
            for idx, name in self.devices().items():
                prog, mode = _xdp_state(idx)
                out[name] = names.get(mode, "?") if prog == self.prog_id else "detached"
        return out

    def device_slots(self) -> dict[int, int]:
        return {struct.unpack("<I", k)[0]: struct.unpack("<I", v)[0]
                for k, v in self.maps["devices"].items()}

    def _attach_device(self, dev: str, generic: bool) -> None:
        idx = _ifindex(dev)
        my_id = self.prog_id
        cur, mode = _xdp_state(idx)
        if cur and cur != my_id:
            raise HintedError(f"device {dev} already has another XDP program (id {cur})",
                              f"remove it first: ip link set dev {dev} xdp off")
        if not cur:
            ret = -1
            if not generic:
                ret = _attach(dev, self.prog_fd, XDP_FLAGS_DRV_MODE | XDP_FLAGS_UPDATE_IF_NOEXIST)
            if ret < 0:
                if not generic:
                    warnings.warn(f"{dev}: native XDP refused, using generic XDP (slower)",
                                  RuntimeWarning, stacklevel=3)
                ret = _attach(dev, self.prog_fd, XDP_FLAGS_SKB_MODE | XDP_FLAGS_UPDATE_IF_NOEXIST)
            if ret < 0:
                raise HintedError(f"could not attach XDP to {dev} (error {ret})",
                                  f"check `ip link show dev {dev}` and dmesg")
        slots = self.device_slots()
        if idx not in slots:
            used = set(slots.values())
            free = [s for s in range(S.MPB_MAX_DEVICES) if s not in used]
            if not free:
                raise HintedError(f"the fast path serves at most {S.MPB_MAX_DEVICES} devices",
                                  "unload some with: mptcp-bpf unload DEV")
            self.maps["devices"].update(struct.pack("<I", idx), struct.pack("<I", free[0]))

    def attach(self, devices: Iterable[str], generic: bool = False) -> None:
        """Attach the pinned program to more devices (idempotent)."""
        _require_root()
        with pins.in_netns(self.netns), pins.locked(self.path):
            for dev in devices:
                self._attach_device(dev, generic)

    def unload(self, devices: Iterable[str], force: bool = False) -> bool:
        """Detach from `devices`; when none remains, unpin everything (the namespace's
        directory, sysctls included). Returns True if everything was removed. A device
        owned by a live stack is refused unless force=True."""
        _require_root()
        with pins.in_netns(self.netns), pins.locked(self.path):
            slots = self.device_slots()
            for dev in devices:
                idx = _ifindex(dev)
                owner = pins.owner_of(self.path, idx)
                if owner is not None and owner != os.getpid() and not force:
                    raise HintedError(f"device {dev} is used by a running stack: pid {owner} "
                                      f"({pins.pid_name(owner)})",
                                      f"stop it first (kill {owner})")
                cur, mode = _xdp_state(idx)
                if cur and cur == self.prog_id:
                    _attach(dev, -1, XDP_FLAGS_SKB_MODE if mode == 2 else XDP_FLAGS_DRV_MODE)
                if idx in slots:
                    base = slots[idx] * S.MPB_MAX_QUEUES
                    for q in range(S.MPB_MAX_QUEUES):
                        self.maps["xsks"].delete(struct.pack("<I", base + q))
                    self.maps["devices"].delete(struct.pack("<I", idx))
                    del slots[idx]
                pins.release(self.path, idx)
            if slots:
                return False
            self.close()
            pins.remove_dir(self.path)
            return True

    # -- ownership ----------------------------------------------------------------------

    def claim(self, device: str, pid: int | None = None) -> None:
        """Mark `device` as used by stack `pid` (default: this process); HintedError
        naming the owner if another live stack has it."""
        with pins.in_netns(self.netns):
            idx = _ifindex(device)
        pins.claim(self.path, idx, device, pid or os.getpid())

    def release(self, device: str, pid: int | None = None) -> None:
        with pins.in_netns(self.netns):
            idx = _ifindex(device)
        pins.release(self.path, idx, pid or os.getpid())

    def owner(self, device: str) -> int | None:
        with pins.in_netns(self.netns):
            idx = _ifindex(device)
        return pins.owner_of(self.path, idx)

    # -- classification tables ----------------------------------------------------------

    def add_subflow(self, family: int, local_ip: bytes | str, local_port: int,
                    remote_ip: bytes | str, remote_port: int, subflow_id: int, token: int,
                    pass_no_xsk: bool = False) -> None:
        """Own the segments of this 4-tuple; metadata carries subflow_id (non-zero) and token."""
        if not 0 < subflow_id < 2**32:
            raise ValueError("subflow_id must be in 1..2**32-1 (0 means 'listener SYN')")
        key = S.subflow_key(family, local_ip, local_port, remote_ip, remote_port)
        val = S.subflow_val(subflow_id, token & 0xFFFFFFFF, S.VF_PASS_NO_XSK if pass_no_xsk else 0)
        self.maps["subflows"].update(key, val)

    def remove_subflow(self, family: int, local_ip: bytes | str, local_port: int,
                       remote_ip: bytes | str, remote_port: int) -> bool:
        """Stop owning the 4-tuple (its per-subflow stats go too); False if absent."""
        key = S.subflow_key(family, local_ip, local_port, remote_ip, remote_port)
        raw = self.maps["subflows"].lookup(key)
        if raw is None:
            return False
        sf_id = S.MpbSubflowVal.from_buffer_copy(raw).subflow_id
        self.maps["subflow_stats"].delete(struct.pack("<I", sf_id))
        return self.maps["subflows"].delete(key)

    def subflows(self) -> list[dict]:
        out = []
        for k, v in self.maps["subflows"].items():
            val = S.MpbSubflowVal.from_buffer_copy(v)
            out.append({**S.decode_subflow_key(k), "subflow_id": val.subflow_id,
                        "token": val.token, "flags": val.flags})
        return out

    def add_listener(self, family: int, ip: bytes | str | None, port: int,
                     listener_id: int = 0, pass_no_xsk: bool = False) -> None:
        """Own SYNs to ip:port (ip None: any local address)."""
        val = bytes(S.MpbListenerVal(listener_id, S.VF_PASS_NO_XSK if pass_no_xsk else 0))
        self.maps["listeners"].update(S.listener_key(family, ip, port), val)

    def remove_listener(self, family: int, ip: bytes | str | None, port: int) -> bool:
        return self.maps["listeners"].delete(S.listener_key(family, ip, port))

    def listeners(self) -> list[dict]:
        out = []
        for k, v in self.maps["listeners"].items():
            val = S.MpbListenerVal.from_buffer_copy(v)
            out.append({**S.decode_listener_key(k), "id": val.id, "flags": val.flags})
        return out

    def set_xsk(self, ifindex: int, queue: int, xsk_fd: int | None) -> None:
        """Send owned frames of (device, rx queue) to AF_XDP socket `xsk_fd` (None: clear)."""
        slot = self.device_slots().get(ifindex)
        if slot is None:
            raise HintedError(f"the fast path is not attached to ifindex {ifindex}",
                              "attach it first: FastPath.load([dev]) or mptcp-bpf load DEV")
        if not 0 <= queue < S.MPB_MAX_QUEUES:
            raise ValueError(f"queue {queue} out of range 0..{S.MPB_MAX_QUEUES - 1}")
        key = struct.pack("<I", slot * S.MPB_MAX_QUEUES + queue)
        if xsk_fd is None:
            self.maps["xsks"].delete(key)
        else:
            self.maps["xsks"].update(key, struct.pack("<I", xsk_fd))

    # -- counters -----------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """Per-CPU counters summed, by name (structs.COUNTER_NAMES)."""
        vals = self.maps["counters"].lookup(struct.pack("<I", 0)) or []
        total = [0] * S.MPB_C_MAX
        for raw in vals:
            for i, v in enumerate(S.MpbCounters.from_buffer_copy(raw).v):
                total[i] += v
        return {name: total[i] for i, name in sorted(S.COUNTER_NAMES.items())}

    def reset_counters(self) -> None:
        self.maps["counters"].update(struct.pack("<I", 0), bytes(S.MPB_C_MAX * 8))

    def subflow_stats(self) -> dict[int, dict[str, int]]:
        """subflow id -> {"packets", "bytes"} summed over CPUs."""
        out: dict[int, dict[str, int]] = {}
        for k, vals in self.maps["subflow_stats"].items():
            pk = by = 0
            for raw in vals:
                st = S.MpbSubflowStats.from_buffer_copy(raw)
                pk += st.packets
                by += st.bytes
            out[struct.unpack("<I", k)[0]] = {"packets": pk, "bytes": by}
        return out

    def test_run(self, frame: bytes, repeat: int = 1) -> tuple[int, S.Meta | None, bytes, int]:
        """BPF_PROG_TEST_RUN on one frame: (XDP action, metadata or None, frame, ns/run)."""
        ret, meta, out, ns = bpfsys.test_run_xdp(self.prog_fd, frame, repeat)
        return ret, S.Meta.parse(meta) if meta else None, out, ns
