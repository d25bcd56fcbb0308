"""Our MPTCP Host against the kernel's MPTCP over TUN devices: the namespace and the packet
loop that test_mptcp_tun.py and the selftest replay (selftest_harness.py) share.

The kernel side lives in one namespace holding the TUN devices; our Host runs in this
process and reads/writes their fds from the calling thread. A subclass says which device
carries each of our packets (`route`) and may drop or change packets on the way
(`egress`, `ingress`): test_mptcp_tun drops (loss, a cut path), the replay tampers.
"""

from __future__ import annotations

import random
import select
import socket
import subprocess
import time
from typing import Any, Callable, Optional, Sequence

from mptcp_bpf.datapath.tun import open_tun, run_in_netns
from mptcp_bpf.mptcp.host import Host, HostConfig
from mptcp_bpf.timers import TimerWheel

IPPROTO_MPTCP = 262


def sh(*args: str, check: bool = True, timeout: float = 30) -> str:
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def mib(ns: str) -> dict[str, int]:
    """MPTcpExt counters of a namespace (/proc/net/netstat, what `nstat -az` shows)."""
    lines = sh("ip", "netns", "exec", ns, "cat", "/proc/net/netstat").splitlines()
    out: dict[str, int] = {}
    for head, vals in zip(lines[::2], lines[1::2]):
        if head.startswith("MPTcpExt:"):
            out.update(zip(head.split()[1:], map(int, vals.split()[1:])))
    return out


def read_available(conn: Any, got: bytearray) -> None:
    """Append what our connection has received to `got`, until it would block or EOF."""
    try:
        while True:
            b = conn.recv(1 << 18)
            if not b:
                break
            got.extend(b)
    except BlockingIOError:
        pass


class KernelTunLab:
    """Namespace `ns` with MPTCP on and one TUN device per link (name, its kernel
    addresses); `setup()` adds what a subclass needs, and anything half made is removed
    if a step fails."""

    def __init__(self, ns: str, links: Sequence[tuple[str, list[str]]],
                 sysctls: Sequence[str] = ()) -> None:
        self.ns = ns
        self.tuns: list[Any] = []
        self.host: Any = None
        sh("ip", "netns", "add", ns)
        try:
            self.sysctl("net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
                        "net.mptcp.enabled=1", *sysctls)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            for name, addrs in links:
                self.tuns.append(open_tun(name, ns, addrs=addrs))
                self.sysctl(f"net.ipv4.conf.{name}.rp_filter=0")
            self.setup()
        except BaseException:
            self.close()
            raise

    def setup(self) -> None:
        """More kernel configuration, run once the devices exist."""

    def sysctl(self, *kv: str) -> None:
        for x in kv:
            sh("ip", "netns", "exec", self.ns, "sysctl", "-qw", x)

    def mib(self) -> dict[str, int]:
        return mib(self.ns)

    def new_host(self, cfg: HostConfig) -> Host:
        """Our Host, its timers and its output queue (sent by `flush`)."""
        self.timers = TimerWheel()
        self.outq: list[bytes] = []
        self.host = Host(cfg, self.timers, self.outq.append, random.Random())
        return self.host

    # ------------------------------------------------------------------- the hooks
    def route(self, p: bytes) -> int:
        """Index in `tuns` of the device that carries our packet `p`."""
        return 0

    def egress(self, i: int, p: bytes) -> Optional[bytes]:
        """Our packet `p` as it leaves on device `i`: changed, or None to drop it."""
        return p

    def ingress(self, i: int, p: bytes) -> Optional[bytes]:
        """The kernel's packet `p` read from device `i`: changed, or None to drop it."""
        return p

    # -------------------------------------------------------------------- the loop
    def flush(self) -> None:
        """Write what our Host sent, in its order, each packet through `egress`."""
        q = self.outq
        if not q:
            return
        by: dict[int, list[bytes]] = {}
        for p in q:
            i = self.route(p)
            p2 = self.egress(i, p)
            if p2 is not None:
                by.setdefault(i, []).append(p2)
        q.clear()
        for i, pkts in by.items():
            self.tuns[i].write_batch(pkts)

    def run_until(self, pred: Callable[[], bool], timeout: float) -> bool:
        """Move packets and timers until `pred()` holds (True) or `timeout` s pass (False)."""
        end = time.monotonic() + timeout
        fds = [t.fileno() for t in self.tuns]
        host = self.host
        while True:
            now = time.monotonic()
            host.advance(now)
            self.flush()
            if pred():
                self.flush()
                return True
            if now > end:
                return False
            nd = self.timers.next_deadline()
            wait = 0.02 if nd is None else max(0.0, min(0.02, nd - now))
            select.select(fds, [], [], wait)
            now = time.monotonic()
            for i, t in enumerate(self.tuns):
                for p in t.read_batch(256):
                    p2 = self.ingress(i, p)
                    if p2 is not None:
                        host.input(p2, now)
            self.flush()

    def sleep(self, secs: float) -> None:
        self.run_until(lambda: False, secs)

    def ksocket(self, family: int = socket.AF_INET, proto: int = IPPROTO_MPTCP) -> socket.socket:
        """A stream socket of the kernel's namespace."""
        return run_in_netns(self.ns, lambda: socket.socket(family, socket.SOCK_STREAM, proto))

    def close(self) -> None:
        for t in self.tuns:
            try:
                t.close()
            except OSError:
                pass
        self.tuns = []
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, timeout=30)
