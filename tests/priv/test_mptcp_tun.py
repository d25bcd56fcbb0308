"""Interop of our MPTCP host with the kernel's MPTCP over two TUN devices (no XDP).

The kernel side lives in a namespace `mpbm-<id>` with two tun devices (two paths):
tun A carries 10.71.1.0/24 (kernel 10.71.1.1, us 10.71.1.2), tun B 10.71.2.0/24 (kernel
10.71.2.1, us 10.71.2.2). Our Host runs in this process and reads/writes both devices.
The kernel side is a Python socket with IPPROTO_MPTCP created inside the namespace.
Each run sends data both ways and compares sha256; the kernel's MPTcpExt counters
(/proc/net/netstat of the namespace) must show the handshake, a join and ADD_ADDR, and
no checksum error, fallback or HMAC failure.
"""

from __future__ import annotations

import hashlib
import ipaddress
import random
import socket
import threading
import time
import uuid

import pytest

from mptcp_bpf.mptcp.host import Host, HostConfig
from tests.priv.kernel_tun import IPPROTO_MPTCP, KernelTunLab, read_available, sh

pytestmark = pytest.mark.priv

K1, K2, U1, U2 = "10.71.1.1", "10.71.2.1", "10.71.1.2", "10.71.2.2"
K61, K62, U61, U62 = "fd71:1::1", "fd71:2::1", "fd71:1::2", "fd71:2::2"
BAD_COUNTERS = ("DataCsumErr", "MPCapableFallbackACK", "MPCapableFallbackSYNACK",
                "MPJoinSynAckHMacFailure", "MPJoinAckHMacFailure", "DSSCorruptionFallback",
                "DssFallback", "InfiniteMapRx", "MPFailRx")


class TunLab(KernelTunLab):
    """Namespace + two tun devices + our Host driven from the calling thread; `loss` and
    `down` drop packets on the way, both directions."""

    def __init__(self) -> None:
        self.loss = 0.0            # drop probability per packet, both directions
        self.down: set = set()     # tun devices whose path is cut (both directions)
        self.rng = random.Random(7)
        self.dropped = 0
        super().__init__(f"mpbm-{uuid.uuid4().hex[:6]}", [("mpbmA", [f"{K1}/24", f"{K61}/64"]),
                                                         ("mpbmB", [f"{K2}/24", f"{K62}/64"])])
        self.paths = {bytes([10, 71, 1]): 0, bytes([10, 71, 2]): 1,
                      ipaddress.ip_address(K61).packed[:4]: 0,
                      ipaddress.ip_address(K62).packed[:4]: 1}

    def setup(self) -> None:
        sh("ip", "-n", self.ns, "mptcp", "limits", "set", "subflow", "8", "add_addr_accepted", "8")

    def make_host(self, v6: bool = False, **cfg) -> Host:
        host = self.new_host(HostConfig(**cfg))
        for a in (U1, U2) + ((U61, U62) if v6 else ()):
            host.add_address(a)

        def source_for(raddr):
            if raddr.version == 4:
                return ipaddress.ip_address(U1 if raddr.packed[2] == 1 else U2)
            return ipaddress.ip_address(U61 if raddr.packed[3] == 1 else U62)

        host.source_for = source_for
        return host

    def kernel_checksum(self, on: bool) -> None:
        self.sysctl(f"net.mptcp.checksum_enabled={int(on)}")

    def endpoint(self, *args: str) -> None:
        sh("ip", "-n", self.ns, "mptcp", "endpoint", "flush")
        if args:
            sh("ip", "-n", self.ns, "mptcp", "endpoint", "add", *args)

    def route(self, p: bytes) -> int:
        return self.paths.get(p[16:19] if p[0] >> 4 == 4 else p[24:28], 0)

    def egress(self, i: int, p: bytes) -> bytes | None:
        return None if (self.down or self.loss) and self._lose(self.tuns[i]) else p

    ingress = egress

    def _lose(self, t) -> bool:
        if t in self.down or (self.loss and self.rng.random() < self.loss):
            self.dropped += 1
            return True
        return False


@pytest.fixture
def lab():
    lab = TunLab()
    try:
        yield lab
    finally:
        lab.close()


def kernel_peer(sock: socket.socket, payload: bytes, result: dict, server: bool) -> None:
    """Kernel side: read until EOF (hash it), then send `payload` and close."""
    try:
        conn = sock
        if server:
            conn, _ = sock.accept()  # the listener stays open: joins go through it
        conn.settimeout(120)
        time.sleep(0.5)  # let the path managers add subflows even for tiny transfers
        h = hashlib.sha256()
        n = 0
        if not server:
            conn.sendall(payload)
            conn.shutdown(socket.SHUT_WR)
        while True:
            b = conn.recv(1 << 16)
            if not b:
                break
            h.update(b)
            n += len(b)
        if server:
            conn.sendall(payload)
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(30)
            try:
                conn.recv(1)
            except OSError:
                pass
        result["sha"] = h.hexdigest()
        result["n"] = n
        conn.close()
        if server:
            sock.close()
    except BaseException as e:  # reported by the test
        result["error"] = repr(e)


def exchange(lab: TunLab, conn, out: bytes, server: bool, timeout: float) -> tuple[bytes, bool]:
    """Our side: send `out` (then shutdown) and collect what the kernel sends, until EOF.
    As the server we answer only after the client's EOF (the mirror of kernel_peer)."""
    got = bytearray()
    state = {"sent": 0, "shut": False}

    def pump() -> bool:
        c = conn()
        if c is None:
            return False
        if c.error is not None:
            return True
        if server and not c.eof:
            pass
        elif c.connected and state["sent"] < len(out):
            state["sent"] += c.send(out[state["sent"]:state["sent"] + (1 << 18)])
        if c.connected and state["sent"] >= len(out) and not state["shut"] and (c.eof or not server):
            c.shutdown()
            state["shut"] = True
        read_available(c, got)
        return (c.eof and state["shut"] and (c._fin_acked or c.fallback and c.closed)
                or c.error is not None)

    ok = lab.run_until(pump, timeout)
    return bytes(got), ok


def run_transfer(lab: TunLab, role: str, size: int, ours_csum: bool, kernel_csum: bool,
                 version: int = 1, family: str = "4", signal: str = K2,
                 kproto: int = IPPROTO_MPTCP) -> dict:
    """family "4", "6", or "46" (start on IPv4, the kernel server announces IPv6)."""
    lab.kernel_checksum(kernel_csum)
    host = lab.make_host(v6=family != "4", checksum=ours_csum, version=version)
    kaddr, uaddr = (K1, U1) if family != "6" else (K61, U61)
    rng = random.Random(size)
    ours_data = rng.randbytes(size)
    kern_data = rng.randbytes(size + 7)
    res: dict = {}
    before = lab.mib()
    port = 5000 + random.randrange(1000)
    if role == "kernel_server":
        lab.endpoint(signal, "dev", "mpbmB", "signal")
        ks = lab.ksocket(socket.AF_INET if family == "4" else socket.AF_INET6, kproto)
        if family != "4":
            ks.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        ks.bind(("0.0.0.0" if family == "4" else "::", port))  # joins come to announced addresses
        ks.listen(4)
        th = threading.Thread(target=kernel_peer, args=(ks, kern_data, res, True), daemon=True)
        th.start()
        c = host.connect((kaddr, port), (uaddr, 0), now=time.monotonic())
        got, ok = exchange(lab, lambda: c, ours_data, False, 60 + size / 200_000)
        conn = c
    else:
        lab.endpoint(signal, "dev", "mpbmB", "subflow")
        lst = host.listen(None, port)
        ks = lab.ksocket(socket.AF_INET if family == "4" else socket.AF_INET6, kproto)
        ks.settimeout(30)
        box: dict = {}

        def client() -> None:
            try:
                ks.connect((uaddr, port))
            except BaseException as e:
                res["error"] = repr(e)
                return
            kernel_peer(ks, kern_data, res, False)

        th = threading.Thread(target=client, daemon=True)
        th.start()

        def accepted():
            if "c" not in box:
                c = lst.accept()
                if c is not None:
                    box["c"] = c
            return box.get("c")

        got, ok = exchange(lab, accepted, ours_data, True, 60 + size / 200_000)
        conn = box.get("c")
    # let the kernel side finish reading
    lab.run_until(lambda: not th.is_alive(), 30)
    th.join(5)
    lab.run_until(lambda: False, 0.3)
    after = lab.mib()
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    return {"ok": ok, "got": got, "kern": res, "ours_data": ours_data, "kern_data": kern_data,
            "mib": delta, "conn": conn, "stats": dict(host.stats)}


def check(r: dict, role: str, want_join: bool = True) -> None:
    conn = r["conn"]
    assert conn is not None, f"no connection; stats {r['stats']}"
    assert "error" not in r["kern"], r["kern"]
    assert r["ok"], f"transfer incomplete: {conn.info()} {r['stats']} {r['mib']}"
    assert hashlib.sha256(r["got"]).hexdigest() == hashlib.sha256(r["kern_data"]).hexdigest()
    assert r["kern"]["sha"] == hashlib.sha256(r["ours_data"]).hexdigest()
    m = r["mib"]
    assert not conn.fallback, conn.fallback_reason
    if role == "kernel_server":
        assert m.get("MPCapableSYNRX", 0) >= 1, m
        assert m.get("AddAddrTx", 0) >= 1 and m.get("EchoAdd", 0) >= 1, m  # we echoed it
    else:
        assert m.get("MPCapableSYNACKRX", 0) >= 1, m
        assert m.get("AddAddr", 0) >= 1, m  # our server announced its second address
        assert m.get("EchoAddTx", 0) >= 1, m  # and its HMAC verified
    if want_join:
        assert m.get("MPJoinSynRx", 0) + m.get("MPJoinSynAckRx", 0) >= 1, m
    bad = {k: m.get(k, 0) for k in BAD_COUNTERS if m.get(k, 0)}
    assert not bad, bad


@pytest.mark.parametrize("role", ["kernel_server", "kernel_client"])
@pytest.mark.parametrize("size", [1024, 1 << 20])
@pytest.mark.parametrize("ours_csum,kernel_csum", [(False, False), (True, False), (False, True),
                                                   (True, True)])
def test_interop(lab, role, size, ours_csum, kernel_csum):
    r = run_transfer(lab, role, size, ours_csum, kernel_csum)
    check(r, role)
    if ours_csum or kernel_csum:
        assert r["conn"].csum


@pytest.mark.parametrize("role", ["kernel_server", "kernel_client"])
def test_interop_16mib(lab, role):
    r = run_transfer(lab, role, 16 << 20, False, False)
    check(r, role)
    c = r["conn"]
    sfs = c.info()["subflows"] + c.past_subflows
    used = [s for s in sfs if s["bytes_sent"] or s["bytes_received"]]
    assert len(used) >= 2, sfs


@pytest.mark.parametrize("role", ["kernel_server", "kernel_client"])
def test_interop_ipv6(lab, role):
    r = run_transfer(lab, role, 1 << 20, False, False, family="6", signal=K62)
    check(r, role)
    c = r["conn"]
    assert c.local_ip.version == 6   # the connection itself runs over IPv6
    v6 = [s for s in c.info()["subflows"] + c.past_subflows if s["family"] == 6 and s["bytes_sent"]]
    assert v6


def test_interop_ipv4_start_ipv6_join(lab):
    """A connection over IPv4 joins the IPv6 address the kernel server announces."""
    r = run_transfer(lab, "kernel_server", 1 << 20, False, False, family="46", signal=K62)
    check(r, "kernel_server")
    c = r["conn"]
    fams = {s["family"] for s in c.info()["subflows"] + c.past_subflows
            if s["bytes_sent"] or s["bytes_received"]}
    assert fams == {4, 6}, c.past_subflows


@pytest.mark.parametrize("role", ["kernel_server", "kernel_client"])
def test_interop_fallback_plain_tcp_kernel(lab, role):
    """8684 §3.7: against a plain TCP kernel socket our side falls back and delivers."""
    r = run_transfer(lab, role, 1 << 20, False, False, kproto=socket.IPPROTO_TCP)
    conn = r["conn"]
    assert conn is not None and r["ok"], (r["stats"], r["kern"])
    assert "error" not in r["kern"], r["kern"]
    assert conn.fallback
    assert hashlib.sha256(r["got"]).hexdigest() == hashlib.sha256(r["kern_data"]).hexdigest()
    assert r["kern"]["sha"] == hashlib.sha256(r["ours_data"]).hexdigest()


def test_interop_loss_and_path_down(lab):
    """1% loss both ways on both paths, then path B cut mid-transfer: data arrives intact
    (our re-injection towards the kernel, the kernel's towards us)."""
    lab.loss = 0.01
    state = {}
    orig = lab.run_until

    def run_until(pred, timeout):
        def wrapped():
            c = next(iter(lab.host.conns.values()), None)
            if c is not None and not state and c.snd_una > 1 << 20:
                lab.down.add(lab.tuns[1])
                state["cut_at"] = c.snd_una
            return pred()
        return orig(wrapped, timeout)

    lab.run_until = run_until
    r = run_transfer(lab, "kernel_server", 4 << 20, False, False)
    assert state, "the path was never cut"
    assert lab.dropped > 0
    check(r, "kernel_server")


def test_interop_no_join_to_initial_address(lab):
    """8684 §3.1 C flag: the kernel server (allow_join_initial_addr_port=0) is only joined
    on the address it announced."""
    sh("ip", "netns", "exec", lab.ns, "sysctl", "-qw", "net.mptcp.allow_join_initial_addr_port=0")
    r = run_transfer(lab, "kernel_server", 1 << 20, False, False)
    check(r, "kernel_server")
    c = r["conn"]
    assert c.no_initial_join
    sfs = c.info()["subflows"] + c.past_subflows
    to_initial = [s for s in sfs if s["join"] and s["remote"].startswith(K1 + ":")]
    assert not to_initial, sfs
