"""TUN devices (IFF_TUN|IFF_NO_PI) opened in a chosen network namespace.

Why: before XDP is wired in, the protocol core interoperates with the kernel through TUN:
kernel MPTCP in namespace X sends to addresses routed into a tun device, we read the whole
IP packets and write ours back. The device is created in a short-lived thread that switches
its own network namespace (setns affects only the calling thread), so the caller's
namespace never changes and the fd keeps working from any thread afterwards.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from mptcp_bpf.errors import HintedError

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000
NETNS_DIRS = ("/run/netns", "/var/run/netns")
IFNAMSIZ = 16

_libc = ctypes.CDLL(None, use_errno=True)
_T = TypeVar("_T")


def netns_path(netns: str) -> str:
    """Path of a named namespace made by `ip netns add` (or a path given as is)."""
    if "/" in netns:
        return netns
    for d in NETNS_DIRS:
        p = os.path.join(d, netns)
        if os.path.exists(p):
            return p
    raise HintedError(f"network namespace {netns!r} not found",
                      f"create it with: ip netns add {netns}")


def run_in_netns(netns: str | None, fn: Callable[[], _T]) -> _T:
    """Run `fn` in a thread that has joined `netns` (None: run it here, unchanged).

    Sockets and fds made by `fn` stay bound to that namespace after the thread ends.
    """
    if netns is None:
        return fn()
    path = netns_path(netns)
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    e = ctypes.get_errno()
                    raise OSError(e, f"setns({path}): {os.strerror(e)}")
            finally:
                os.close(fd)
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    t = threading.Thread(target=body, name=f"netns-{netns}", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class TunDevice:
    """An open TUN device: whole IP packets in and out, non-blocking, batched.

    `read_batch` and `write_batch` loop over os.read / os.write (TUN has no multi-packet
    syscall without vnet headers); the loop is the only per-packet Python work.
    """

    def __init__(self, fd: int, name: str, netns: str | None, mtu: int) -> None:
        self.fd = fd
        self.name = name
        self.netns = netns
        self.mtu = mtu
        self.rx_packets = 0
        self.tx_packets = 0
        self.tx_dropped = 0  # writes refused (queue full, device down, bad packet)
        self._read = os.read
        self._write = os.write
        self._bufsize = max(mtu, 1500) + 64

    def fileno(self) -> int:
        return self.fd

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def read_batch(self, max_n: int = 64) -> list[bytes]:
        """Up to `max_n` waiting packets; [] when none is waiting (never blocks)."""
        out: list[bytes] = []
        read, fd, size = self._read, self.fd, self._bufsize
        append = out.append
        try:
            for _ in range(max_n):
                append(read(fd, size))
        except BlockingIOError:
            pass
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EINTR):
                raise
        self.rx_packets += len(out)
        return out

    def write_batch(self, packets: Iterable[bytes | bytearray | memoryview]) -> int:
        """Write each packet; returns how many were accepted (the rest are counted dropped)."""
        write, fd = self._write, self.fd
        sent = dropped = 0
        for p in packets:
            try:
                write(fd, p)
                sent += 1
            except OSError as e:
                # EAGAIN: queue full; EINVAL/EIO: malformed or device down. Count, go on.
                if e.errno not in (errno.EAGAIN, errno.EINVAL, errno.EIO, errno.EFAULT,
                                   errno.EMSGSIZE, errno.ENOBUFS):
                    raise
                dropped += 1
        self.tx_packets += sent
        self.tx_dropped += dropped
        return sent

    def close(self) -> None:
        """Close the fd; the kernel removes a non-persistent device with it."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __enter__(self) -> TunDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TunDevice({self.name!r}, netns={self.netns!r}, fd={self.fd})"


def _open_tun_here(name: str) -> tuple[int, str]:
    if len(name.encode()) >= IFNAMSIZ:
        raise HintedError(f"interface name {name!r} is too long",
                          f"use at most {IFNAMSIZ - 1} characters")
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise HintedError("/dev/net/tun is missing",
                          "load the tun module: modprobe tun") from None
    except PermissionError:
        raise HintedError("cannot open /dev/net/tun", "run as root") from None
    try:
        ifr = struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI)
        res = fcntl.ioctl(fd, TUNSETIFF, ifr)
    except OSError as e:
        os.close(fd)
        if e.errno == errno.EPERM:
            raise HintedError(f"TUNSETIFF {name}: not permitted", "run as root") from None
        if e.errno == errno.EBUSY:
            raise HintedError(f"tun device {name} is already open by another process",
                              "pick another name or close the other user") from None
        if e.errno == errno.EINVAL:
            raise HintedError(f"{name} exists and is not a tun device",
                              f"delete it: ip link del {name}") from None
        raise
    real = res[:16].split(b"\0", 1)[0].decode()
    return fd, real


def _configure_here(name: str, mtu: int, addrs: Sequence[str],
                    routes: Sequence[str | tuple[str, str]], txqlen: int) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=name)[0]
        # the kernel queues packets for us up to txqlen, then drops: a bulk sender in the
        # kernel outruns a Python reader in bursts, so give it more than the default 500
        ipr.link("set", index=idx, mtu=mtu, txqlen=txqlen)
        for a in addrs:
            addr, _, plen = a.partition("/")
            fam = 10 if ":" in addr else 2
            if fam == 10:
                # no DAD: the address is usable at once (there is nothing to collide with)
                ipr.addr("add", index=idx, address=addr,
                         prefixlen=int(plen or 128), family=fam, flags=0x02)
            else:
                ipr.addr("add", index=idx, address=addr, prefixlen=int(plen or 32),
                         family=fam)
        ipr.link("set", index=idx, state="up")
        for r in routes:
            dst, src = (r, None) if isinstance(r, str) else r
            fam = 10 if ":" in dst else 2
            kw: dict[str, Any] = {"dst": dst, "oif": idx, "family": fam}
            if src:
                kw["prefsrc"] = src
            ipr.route("replace", **kw)


def open_tun(name: str, netns: str | None = None, *, mtu: int = 1500,
             addrs: Sequence[str] = (), routes: Sequence[str | tuple[str, str]] = (),
             up: bool = True, txqlen: int = 4096) -> TunDevice:
    """Create (or attach to) TUN device `name` in namespace `netns` and configure it.

    addrs: "10.1.0.1/24" or "fd00::1/64" put on the device; routes: "10.2.0.0/24" (or
    (dst, preferred_src)) sent into it; txqlen: packets the kernel queues for us before
    dropping. With up=False nothing is configured at all.
    """

    def work() -> tuple[int, str]:
        fd, real = _open_tun_here(name)
        if up:
            try:
                _configure_here(real, mtu, addrs, routes, txqlen)
            except BaseException:
                os.close(fd)
                raise
        return fd, real

    fd, real = run_in_netns(netns, work)
    return TunDevice(fd, real, netns, mtu)
