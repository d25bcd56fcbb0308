"""Our subflow as plain TCP against a kernel TCP socket, through a TUN device, both roles.

The kernel lives in namespace mpbt-<id> with 10.79.0.1 / fd79::1 on the tun device and a
route to our side (10.79.1.0/24, fd79:1::/64) into it; our PlainHost reads and writes the
whole IP packets of that device on real time. 1 MiB goes each way at once; sha256 equal.
With `loss`, the loop drops a seeded share of packets both ways (SACK recovery on both
ends, each against the other's SACK blocks).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import random
import select
import socket
import subprocess
import time
import uuid

import pytest

from mptcp_bpf.datapath.tun import open_tun, run_in_netns
from mptcp_bpf.tcp.plain import PlainConn, PlainHost
from mptcp_bpf.tcp.subflow import SubflowConfig
from mptcp_bpf.timers import TimerWheel

pytestmark = pytest.mark.priv

SIZE = 1 << 20
FAMILIES = {
    4: dict(kaddr="10.79.0.1", kcidr="10.79.0.1/24", our="10.79.1.2", route="10.79.1.0/24",
            mss=1460),
    6: dict(kaddr="fd79::1", kcidr="fd79::1/64", our="fd79:1::2", route="fd79:1::/64",
            mss=1440),
}


@pytest.fixture
def lab():
    ns = f"mpbt-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=30)
    tun = None
    socks: list[socket.socket] = []
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True, timeout=30)
        tun = open_tun("mpbt0", ns, mtu=1500,
                       addrs=[FAMILIES[4]["kcidr"], FAMILIES[6]["kcidr"]],
                       routes=[FAMILIES[4]["route"], FAMILIES[6]["route"]])
        yield ns, tun, socks
    finally:
        for s in socks:
            s.close()
        if tun is not None:
            tun.close()
        subprocess.run(["ip", "netns", "del", ns], timeout=30)


class Loop:
    """A small real-time loop: tun <-> PlainHost, plus one kernel socket pumped by select."""

    def __init__(self, tun, fam: int, loss: float = 0.0) -> None:
        self.tun = tun
        self.loss = loss                 # drop this share of packets in each direction
        self.rng = random.Random(11)
        self.dropped = 0
        self.timers = TimerWheel()
        self.out: list[bytes] = []
        cfg = SubflowConfig(mss=FAMILIES[fam]["mss"])
        self.host = PlainHost([ipaddress.ip_address(FAMILIES[fam]["our"]).packed], self.timers,
                              self.out.append, cfg, random.Random(7))
        self.ksock: socket.socket | None = None
        self.k_tx = b""
        self.k_tx_off = 0
        self.k_rx = bytearray()
        self.k_eof = False
        self.k_shut = False

    def _keep(self, pkt: bytes) -> bool:
        if self.loss and self.rng.random() < self.loss:
            self.dropped += 1
            return False
        return True

    def flush(self) -> None:
        if self.out:
            self.tun.write_batch([p for p in self.out if self._keep(p)])
            self.out.clear()

    def pump_kernel(self) -> None:
        k = self.ksock
        if k is None:
            return
        if not self.k_eof:
            try:
                while True:
                    d = k.recv(262144)
                    if not d:
                        self.k_eof = True
                        break
                    self.k_rx += d
            except BlockingIOError:
                pass
        if self.k_tx_off < len(self.k_tx):
            try:
                self.k_tx_off += k.send(memoryview(self.k_tx)[self.k_tx_off:])
            except BlockingIOError:
                pass
        if self.k_tx_off >= len(self.k_tx) and not self.k_shut:
            k.shutdown(socket.SHUT_WR)
            self.k_shut = True

    def run(self, done, timeout: float) -> None:
        end = time.monotonic() + timeout
        while not done():
            now = time.monotonic()
            if now > end:
                raise TimeoutError("transfer did not finish")
            nd = self.timers.next_deadline()
            wait = 0.005 if nd is None else min(0.005, max(0.0, nd - now))
            rl = [self.tun.fd] + ([self.ksock] if self.ksock is not None else [])
            wl = [self.ksock] if self.ksock is not None and self.k_tx_off < len(self.k_tx) else []
            select.select(rl, wl, [], wait)
            for pkt in self.tun.read_batch(256):
                if self._keep(pkt):
                    self.host.input(pkt, time.monotonic())
            self.timers.run_due(time.monotonic())
            self.flush()
            self.pump_kernel()


def kernel_connect(lab, fam: int, port: int, rcvbuf: int = 0) -> socket.socket:
    """A non-blocking kernel socket of the lab's namespace, connecting to our `port`."""
    ns, _, socks = lab

    def mk() -> socket.socket:
        s = socket.socket(socket.AF_INET if fam == 4 else socket.AF_INET6, socket.SOCK_STREAM)
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        return s
    k = run_in_netns(ns, mk)
    socks.append(k)
    k.setblocking(False)
    try:
        k.connect((FAMILIES[fam]["our"], port))
    except BlockingIOError:
        pass
    return k


def _pump_ours(loop: Loop, conn: PlainConn, data: bytes, state: dict) -> None:
    """Feed our side in 64 KiB chunks (a bounded send queue) and drain what arrived."""
    now = time.monotonic()
    while state["off"] < len(data) and conn.sf.unsent_bytes < 256 * 1024:
        conn.send(data[state["off"]:state["off"] + 65536], now)
        state["off"] += 65536
    if state["off"] >= len(data) and not state["closed"]:
        conn.close(now)
        state["closed"] = True
    state["rx"] += conn.recv(1 << 30, now)
    loop.flush()


@pytest.mark.parametrize("fam,loss,bare", [(4, 0.0, False), (6, 0.0, False), (4, 0.02, False),
                                           (4, 0.02, True)])
def test_our_client_kernel_server(lab, fam, loss, bare):
    """bare: the kernel has SACK, timestamps and window scaling off (NewReno path)."""
    ns, tun, socks = lab
    f = FAMILIES[fam]
    af = socket.AF_INET if fam == 4 else socket.AF_INET6
    if bare:
        for key in ("tcp_sack", "tcp_timestamps", "tcp_window_scaling"):
            subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv4.{key}=0"],
                           check=True, timeout=30)

    def mk() -> socket.socket:
        s = socket.socket(af, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((f["kaddr"], 5001))
        s.listen(1)
        return s
    lsock = run_in_netns(ns, mk)
    socks.append(lsock)
    lsock.setblocking(False)
    loop = Loop(tun, fam, loss)
    up, down = os.urandom(SIZE), os.urandom(SIZE)
    conn = loop.host.connect(ipaddress.ip_address(f["our"]).packed,
                             (ipaddress.ip_address(f["kaddr"]).packed, 5001), time.monotonic())
    loop.flush()
    state = {"off": 0, "closed": False, "rx": bytearray()}

    def accepted() -> bool:
        if loop.ksock is None:
            try:
                k, _ = lsock.accept()
            except BlockingIOError:
                return False
            k.setblocking(False)
            socks.append(k)
            loop.ksock = k
            loop.k_tx = down
        return conn.established
    loop.run(accepted, 30)
    negotiated = (conn.sf.sack_ok, conn.sf.ts_ok, conn.sf.ws_ok)
    assert negotiated == ((False,) * 3 if bare else (True,) * 3)

    def done() -> bool:
        _pump_ours(loop, conn, up, state)
        return loop.k_eof and conn.eof and conn.sf.state in ("TIME_WAIT", "CLOSED") \
            and not conn.rbuf
    loop.run(done, 120)
    state["rx"] += conn.recv(1 << 30, time.monotonic())
    assert hashlib.sha256(bytes(loop.k_rx)).hexdigest() == hashlib.sha256(up).hexdigest()
    assert hashlib.sha256(bytes(state["rx"])).hexdigest() == hashlib.sha256(down).hexdigest()
    if loss:
        assert loop.dropped > 0 and conn.sf.total_retrans > 0


@pytest.mark.parametrize("fam,loss", [(4, 0.0), (6, 0.0), (6, 0.02)])
def test_kernel_client_our_server(lab, fam, loss):
    _, tun, _ = lab
    loop = Loop(tun, fam, loss)
    accepted: list[PlainConn] = []
    loop.host.listen(5002, accepted.append)
    loop.ksock = kernel_connect(lab, fam, 5002)
    up, down = os.urandom(SIZE), os.urandom(SIZE)   # up: kernel -> us
    loop.k_tx = up
    loop.run(lambda: bool(accepted) and accepted[0].established, 30)
    conn = accepted[0]
    state = {"off": 0, "closed": False, "rx": bytearray()}

    def done() -> bool:
        _pump_ours(loop, conn, down, state)
        return loop.k_eof and conn.eof and conn.sf.state in ("TIME_WAIT", "CLOSED", "LAST_ACK") \
            and not conn.rbuf
    loop.run(done, 120)
    loop.run(lambda: conn.sf.state == "CLOSED" or conn.sf.state == "TIME_WAIT", 30)
    state["rx"] += conn.recv(1 << 30, time.monotonic())
    assert hashlib.sha256(bytes(state["rx"])).hexdigest() == hashlib.sha256(up).hexdigest()
    assert hashlib.sha256(bytes(loop.k_rx)).hexdigest() == hashlib.sha256(down).hexdigest()
    assert conn.sf.sack_ok and conn.sf.ts_ok and conn.sf.ws_ok
    if loss:
        assert loop.dropped > 0 and conn.sf.total_retrans > 0


def test_kernel_zero_window_and_our_probes(lab):
    """A kernel receiver with a tiny buffer that stops reading: its window closes, we
    probe (seq = snd_una - 1), it reopens when the application reads again."""
    _, tun, _ = lab
    loop = Loop(tun, 4)
    accepted: list[PlainConn] = []
    loop.host.listen(5003, accepted.append)
    k = kernel_connect(lab, 4, 5003, rcvbuf=4096)
    loop.run(lambda: bool(accepted) and accepted[0].established, 30)
    conn = accepted[0]
    data = os.urandom(256 * 1024)
    conn.send(data, time.monotonic())
    conn.close(time.monotonic())
    loop.flush()
    # the kernel application does not read: its window must close and we must probe
    loop.run(lambda: conn.sf.snd_wnd == 0 and conn.sf.probes >= 2, 60)
    loop.ksock = k                       # now read everything
    loop.k_tx = b""
    loop.run(lambda: loop.k_eof, 120)
    assert hashlib.sha256(bytes(loop.k_rx)).hexdigest() == hashlib.sha256(data).hexdigest()
