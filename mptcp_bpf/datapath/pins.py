"""Where the fast path's objects are pinned, and the objects that exist without it.

One directory per network namespace, /run/mptcp-bpf/<netns inode>/, in a bpffs mounted in
the root mount namespace, because `ip netns exec` remounts /sys and hides /sys/fs/bpf.
Beside the program's maps it holds two maps made here without compiling anything:
`sysctl`/`sysctl_str` (net.mptcp.* values, created with their defaults; the XDP program
opens the same pinned `sysctl`), and `owners` (ifindex -> pid of the stack that owns the
device; bpffs holds no regular files, and a map update with BPF_NOEXIST makes a claim atomic).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
import struct
from typing import Iterator

from mptcp_bpf.errors import HintedError
from mptcp_bpf.datapath import bpfsys
from mptcp_bpf.datapath import structs as S

ROOT = os.environ.get("MPTCP_BPF_PIN_ROOT", "/run/mptcp-bpf")
PROG_PIN = "prog_xdp"
# Pinned by the loader, in this order (the program pin last: it marks a complete load).
MAP_NAMES = ("subflows", "listeners", "xsks", "devices", "counters", "subflow_stats")
SHARED_MAPS = ("sysctl", "sysctl_str", "owners")

# Default raw values of the sysctl slots (REFERENCE.md §2; ours: version 1, fullmesh).
SYSCTL_INT_DEFAULTS = {S.MPB_SYS_ENABLED: 1, S.MPB_SYS_CHECKSUM: 1, S.MPB_SYS_SYN_RETRIES: 3,
                       S.MPB_SYS_VERSION: 1, S.MPB_SYS_DEBUG: 0}
SYSCTL_STR_DEFAULTS = {S.MPB_SYS_PATH_MANAGER: "fullmesh", S.MPB_SYS_SCHEDULER: "default"}

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def _netns_path(netns: str | None) -> str:
    if netns is None:
        return "/proc/thread-self/ns/net"
    if "/" in netns:
        return netns
    return f"/run/netns/{netns}"


def netns_id(netns: str | None = None) -> int:
    """Inode of a network namespace (None: ours; a name from `ip netns`; or a path)."""
    path = _netns_path(netns)
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        raise HintedError(f"no network namespace {netns!r}", "list them with: ip netns list") from None


def pin_dir(netns: str | None = None, root: str | None = None) -> str:
    return os.path.join(root or ROOT, str(netns_id(netns)))


@contextlib.contextmanager
def in_netns(netns: str | None) -> Iterator[None]:
    """Run the block in network namespace `netns` (this thread only), then come back."""
    if netns is None:
        yield
        return
    path = _netns_path(netns)
    if not os.path.exists(path):
        raise HintedError(f"no network namespace {netns!r}", "list them with: ip netns list")
    back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
        try:
            yield
        finally:
            _libc.setns(back, CLONE_NEWNET)
    finally:
        os.close(target)
        os.close(back)


def netns_cookie() -> int:
    """SO_NETNS_COOKIE of this thread's network namespace: unique for the boot, so a pin
    directory left by a deleted namespace whose inode was reused can be recognised."""
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        return struct.unpack("<Q", s.getsockopt(socket.SOL_SOCKET, 71, 8))[0]


def stored_cookie(path: str) -> int | None:
    """The cookie stamped in a pin directory's `sysctl` map (None: none yet)."""
    try:
        ints = bpfsys.Map.pinned(os.path.join(path, "sysctl"))
    except (FileNotFoundError, NotADirectoryError):
        return None
    with ints:
        lo = ints.lookup(struct.pack("<I", S.MPB_SYS_COOKIE_LO))
        hi = ints.lookup(struct.pack("<I", S.MPB_SYS_COOKIE_HI))
    value = (struct.unpack("<I", hi)[0] << 32 | struct.unpack("<I", lo)[0]) if lo and hi else 0
    return value or None


def is_stale(path: str, cookie: int) -> bool:
    """True if `path` was made for another (deleted) namespace with the same inode."""
    stored = stored_cookie(path)
    return stored is not None and stored != cookie


def drop_if_stale(path: str, cookie: int) -> bool:
    """Remove a stale directory (leftovers of a deleted namespace); True if removed."""
    if os.path.isdir(path) and is_stale(path, cookie):
        remove_dir(path)
        return True
    return False


def bpffs_mounted(root: str | None = None) -> bool:
    root = os.path.realpath(root or ROOT)
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] == "bpf" and os.path.realpath(parts[1]) == root:
                    return True
    except OSError:
        pass
    return False


def check_bpffs(root: str | None = None) -> None:
    root = root or ROOT
    if not bpffs_mounted(root):
        raise HintedError(f"no bpffs mounted at {root}",
                          f"mount one (as root): mkdir -p {root} && mount -t bpf bpf {root}"
                          " (./tools/bootstrap does it)")


def ensure_dir(path: str) -> str:
    check_bpffs(os.path.dirname(path.rstrip("/")))
    try:
        os.mkdir(path)
    except FileExistsError:
        pass
    except PermissionError:
        raise HintedError(f"cannot create {path}: permission denied",
                          "pinning BPF objects needs root: run with sudo") from None
    return path


@contextlib.contextmanager
def locked(path: str) -> Iterator[None]:
    """Exclusive flock on the pin directory: one loader at a time per namespace."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def remove_dir(path: str) -> None:
    """Unpin everything under `path` and remove it (missing is fine)."""
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)


def _open_or_create(path: str, map_type: int, key_size: int, value_size: int,
                    max_entries: int) -> tuple[bpfsys.Map, bool]:
    try:
        return bpfsys.Map.pinned(path), False
    except FileNotFoundError:
        pass
    fd = bpfsys.map_create(map_type, os.path.basename(path), key_size, value_size, max_entries)
    try:
        bpfsys.obj_pin(fd, path)
    except OSError as exc:
        os.close(fd)
        if exc.errno == errno.EEXIST:   # another process won the race: use its map
            return bpfsys.Map.pinned(path), False
        raise
    return bpfsys.Map(fd, os.path.basename(path)), True


def sysctl_maps(path: str, create: bool = True,
                cookie: int | None = None) -> tuple[bpfsys.Map, bpfsys.Map]:
    """The `sysctl` (u32) and `sysctl_str` (16-byte names) maps of a pin directory.

    Created with their defaults when missing (create=True), else FileNotFoundError.
    `cookie` (netns_cookie() of the directory's namespace) is stamped on creation."""
    ipath, spath = os.path.join(path, "sysctl"), os.path.join(path, "sysctl_str")
    if not create:
        return bpfsys.Map.pinned(ipath), bpfsys.Map.pinned(spath)
    ensure_dir(path)
    ints, _ = _open_or_create(ipath, bpfsys.MAP_TYPE_ARRAY, 4, 4, S.MPB_SYSCTL_MAX)
    strs, _ = _open_or_create(spath, bpfsys.MAP_TYPE_ARRAY, 4, S.MPB_SYSCTL_STR_LEN,
                              S.MPB_SYSCTL_MAX)
    init_key = struct.pack("<I", S.MPB_SYS_INIT)
    if ints.lookup(init_key) != struct.pack("<I", S.MPB_SYS_INIT_MAGIC):
        write_sysctl_defaults(ints, strs)
    if cookie and stored_cookie(path) is None:
        ints.update(struct.pack("<I", S.MPB_SYS_COOKIE_LO), struct.pack("<I", cookie & 0xFFFFFFFF))
        ints.update(struct.pack("<I", S.MPB_SYS_COOKIE_HI), struct.pack("<I", cookie >> 32))
    return ints, strs


def write_sysctl_defaults(ints: bpfsys.Map, strs: bpfsys.Map) -> None:
    for slot, value in SYSCTL_INT_DEFAULTS.items():
        ints.update(struct.pack("<I", slot), struct.pack("<I", value))
    for slot, name in SYSCTL_STR_DEFAULTS.items():
        strs.update(struct.pack("<I", slot), name.encode().ljust(S.MPB_SYSCTL_STR_LEN, b"\0"))
    ints.update(struct.pack("<I", S.MPB_SYS_INIT), struct.pack("<I", S.MPB_SYS_INIT_MAGIC))


def owners_map(path: str, create: bool = True) -> bpfsys.Map:
    opath = os.path.join(path, "owners")
    if not create:
        return bpfsys.Map.pinned(opath)
    ensure_dir(path)
    m, _ = _open_or_create(opath, bpfsys.MAP_TYPE_HASH, 4, 4, S.MPB_OWNERS_MAX)
    return m


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pid_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def claim(path: str, ifindex: int, device: str, pid: int) -> None:
    """Record `pid` as the owner of `ifindex`; HintedError naming a live other owner."""
    owners = owners_map(path)
    key, val = struct.pack("<I", ifindex), struct.pack("<I", pid)
    try:
        for _ in range(3):
            try:
                owners.update(key, val, bpfsys.BPF_NOEXIST)
                return
            except OSError as exc:
                if exc.errno != errno.EEXIST:
                    raise
            cur = owners.lookup(key)
            if cur is None:
                continue
            other = struct.unpack("<I", cur)[0]
            if other == pid:
                return
            if pid_alive(other):
                raise HintedError(
                    f"device {device} is already used by another stack: pid {other} "
                    f"({pid_name(other)})",
                    f"stop that process first (kill {other}), or use another device")
            owners.delete(key)   # stale claim of a dead process
        raise HintedError(f"could not claim device {device}", "try again")
    finally:
        owners.close()


def release(path: str, ifindex: int, pid: int | None = None) -> None:
    """Drop the claim on `ifindex` (only if held by `pid`, when given)."""
    try:
        owners = owners_map(path, create=False)
    except FileNotFoundError:
        return
    with owners:
        key = struct.pack("<I", ifindex)
        cur = owners.lookup(key)
        if cur is not None and (pid is None or struct.unpack("<I", cur)[0] == pid):
            owners.delete(key)


def owner_of(path: str, ifindex: int) -> int | None:
    """pid of the live stack that owns `ifindex`, or None."""
    try:
        owners = owners_map(path, create=False)
    except FileNotFoundError:
        return None
    with owners:
        cur = owners.lookup(struct.pack("<I", ifindex))
    if cur is None:
        return None
    pid = struct.unpack("<I", cur)[0]
    return pid if pid_alive(pid) else None
