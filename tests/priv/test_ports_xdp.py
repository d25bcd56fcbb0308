"""XdpPort over the real fast path: the kernel's SYN to a listener arrives Ethernet-free
with its metadata, and the RST we send (next hop resolved through the kernel) reaches it."""

from __future__ import annotations

import select
import socket
import subprocess
import threading
import time
import warnings

import pytest

from mptcp_bpf.datapath import structs as S
from mptcp_bpf.datapath.tun import run_in_netns
from test_tun import answer  # same directory (rootdir-relative import)
from test_xsk import bench  # tools/bench_xsk.py: its VethLab

pytestmark = pytest.mark.priv

PORT = 5555


class StandIn:
    """The fast path's set_xsk contract over the minimal redirect program (TCP to PORT,
    struct mpb_meta in front): tests XdpPort whether or not the full fast path loads."""

    def __init__(self, lab) -> None:
        from mptcp_bpf.datapath.xsk import RedirectProgram

        self.prog = RedirectProgram("xb", PORT, netns=lab.b, udp=False, tcp=True,
                                    mpb_meta=True)
        self.ifindex = lab.ifindex_b

    def set_xsk(self, ifindex: int, queue: int, fd: int | None) -> None:
        assert ifindex == self.ifindex
        self.prog.set_xsk(queue, fd)

    def close(self) -> None:
        self.prog.close()


@pytest.fixture(scope="module", params=["stand-in", "fastpath"])
def env(request):
    """A veth lab with either the stand-in or the real fast path on xb (once per module:
    compiling with bcc is slow)."""
    from mptcp_bpf.datapath import pins

    with bench.VethLab("mpbx-p") as lab:
        if request.param == "stand-in":
            fp = StandIn(lab)
            cleanup = fp.close
        else:
            from mptcp_bpf.datapath.loader import FastPath

            pin = pins.pin_dir(lab.b)
            try:
                fp = FastPath.load(["xb"], netns=lab.b)
            except BaseException:
                pins.remove_dir(pin)  # whatever a failed load left pinned
                raise
            fp.add_listener(socket.AF_INET, None, PORT)
            fp.add_listener(socket.AF_INET6, None, PORT)

            def cleanup() -> None:
                try:
                    fp.unload(["xb"], force=True)
                except Exception as exc:  # the loader's own tests cover unload
                    warnings.warn(f"FastPath.unload failed: {exc!r}")
                finally:
                    fp.close()
                    pins.remove_dir(pin)  # the namespace's deletion detaches XDP
        try:
            yield lab, fp
        finally:
            cleanup()


@pytest.fixture
def port(env):
    from mptcp_bpf.datapath.ports import XdpPort

    lab, fp = env
    # no neighbours on our side: the port must resolve them through the kernel
    subprocess.run(["ip", "-n", lab.b, "neigh", "flush", "dev", "xb", "nud", "all"], timeout=30)
    p = XdpPort("xb", fp, netns=lab.b)
    try:
        yield lab, fp, p
    finally:
        p.close()


def serve(p, seen, stop):
    """Answer every SYN with a RST until stopped (what a closed port does)."""
    while not stop.is_set():
        if not select.select([p], [], [], 0.05)[0]:
            continue
        batch = p.recv_batch(64)
        seen.extend(batch)
        replies = [a for a in (answer(bytes(pkt)) for pkt, _ in batch) if a]
        if replies:
            p.send_batch(replies)


@pytest.mark.parametrize("family,dst", [(socket.AF_INET, "10.9.0.2"),
                                        (socket.AF_INET6, "fd09::2")])
def test_syn_in_rst_out(port, family, dst):
    lab, fp, p = port
    seen: list = []
    stop = threading.Event()
    t = threading.Thread(target=serve, args=(p, seen, stop), daemon=True)
    t.start()

    def connect() -> None:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(30)
            s.connect((dst, PORT))

    try:
        with pytest.raises(ConnectionRefusedError):
            run_in_netns(lab.a, connect)
    finally:
        stop.set()
        t.join(5)
    assert seen, "no SYN reached the port"
    pkt, meta = seen[0]
    assert pkt[0] >> 4 == (4 if family == socket.AF_INET else 6)  # Ethernet stripped
    m = S.Meta.parse(meta)
    assert m is not None and m.flags & S.MPB_F_LISTENER
    assert m.l3_off == 14
    st = p.stats()
    assert st["tx_packets"] >= 1
    assert st["rx_dropped"] == st["rx_ring_full"] == 0
    assert p.neigh.resolutions >= 1  # the peer's MAC came from the kernel


def test_not_owned_traffic_stays_with_kernel(port):
    lab, fp, p = port
    r = subprocess.run(["ip", "netns", "exec", lab.a, "ping", "-c", "2", "-i", "0.2", "-W", "5",
                        "10.9.0.2"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert p.recv_batch(64) == []


def test_one_socket_per_rx_queue():
    """Two real RX queues: two sockets behind one fileno(), both deliver."""
    from mptcp_bpf.datapath.ports import XdpPort

    with bench.VethLab("mpbx-q") as lab:
        for ns, dev in ((lab.a, "xa"), (lab.b, "xb")):
            r = subprocess.run(["ip", "netns", "exec", ns, "ethtool", "-L", dev, "rx", "2",
                                "tx", "2"], capture_output=True, text=True, timeout=30)
            if r.returncode != 0:
                pytest.skip(f"veth channels cannot be set: {r.stderr.strip()}")
        fp = StandIn(lab)
        try:
            with XdpPort("xb", fp, netns=lab.b) as p:
                assert len(p.socks) == 2

                def send() -> None:
                    # a new socket per datagram: the source port, hence the queue, varies
                    for i in range(200):
                        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                            s.setblocking(False)
                            try:
                                s.connect(("10.9.0.2", PORT))  # a SYN each
                            except BlockingIOError:
                                pass

                run_in_netns(lab.a, send)
                got: list = []
                end = time.monotonic() + 20
                while len(got) < 200 and time.monotonic() < end:
                    select.select([p], [], [], 0.1)
                    got += p.recv_batch(64)
                assert len(got) >= 200  # (the kernel may retransmit a SYN: >=)
                assert all(s.rx_packets > 0 for s in p.socks)
        finally:
            fp.close()
