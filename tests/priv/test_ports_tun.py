"""TunPort speaks the port protocol: packets from the kernel in, ours out."""

from __future__ import annotations

import select
import socket
import subprocess
import uuid

import pytest

from mptcp_bpf.datapath.ports import PacketPort, TunPort
from mptcp_bpf.datapath.tun import run_in_netns
from test_tun import answer  # same directory (rootdir-relative import)

pytestmark = pytest.mark.priv


@pytest.fixture
def ns():
    name = f"mpbx-pt-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], timeout=30)


def test_tun_port_round_trip(ns):
    with TunPort.open("mpbxport0", ns, addrs=["10.88.0.1/24"]) as port:
        assert isinstance(port, PacketPort)

        def send_udp() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(b"hello", ("10.88.0.2", 7777))

        run_in_netns(ns, send_udp)
        got = []
        for _ in range(50):
            select.select([port], [], [], 0.2)
            got += port.recv_batch(16)
            if any(p[0] >> 4 == 4 and p[9] == 17 for p, _ in got):
                break
        udp = [(p, m) for p, m in got if p[0] >> 4 == 4 and p[9] == 17]
        assert udp and udp[0][1] is None and bytes(udp[0][0][-5:]) == b"hello"
        # an answer we write (RST to a SYN) reaches the kernel: connect is refused

        def connect() -> None:
            with socket.socket() as s:
                s.settimeout(20)
                s.connect(("10.88.0.2", 80))

        import threading
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                if select.select([port], [], [], 0.1)[0]:
                    port.send_batch([a for a in (answer(bytes(p)) for p, _ in
                                                 port.recv_batch(16)) if a])

        t = threading.Thread(target=loop, daemon=True)
        t.start()
        try:
            with pytest.raises(ConnectionRefusedError):
                run_in_netns(ns, connect)
        finally:
            stop.set()
            t.join(5)
        assert port.stats()["tx_packets"] >= 1
