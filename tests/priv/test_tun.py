"""TUN round trips with the kernel: our code answers pings and refuses a TCP connect."""

from __future__ import annotations

import os
import select
import socket
import struct
import subprocess
import threading
import uuid

import pytest

from mptcp_bpf.datapath.tun import open_tun, run_in_netns

pytestmark = pytest.mark.priv


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def answer(pkt: bytes) -> bytes | None:
    """Echo reply for an ICMP/ICMPv6 echo request, RST for a TCP SYN; None otherwise."""
    ver = pkt[0] >> 4
    if ver == 4:
        ihl = (pkt[0] & 15) * 4
        proto, src, dst = pkt[9], pkt[12:16], pkt[16:20]
        l4 = pkt[ihl:]
        if proto == 1 and l4[0] == 8:
            icmp = bytearray(b"\0\0\0\0" + l4[4:])
            struct.pack_into("!H", icmp, 2, csum(bytes(icmp)))
            return ip4(dst, src, 1, bytes(icmp))
        if proto == 6:
            return tcp_rst(l4, src, dst, 4)
        return None
    if ver == 6:
        nh, src, dst, l4 = pkt[6], pkt[8:24], pkt[24:40], pkt[40:]
        if nh == 58 and l4[0] == 128:
            icmp = bytearray(b"\x81\0\0\0" + l4[4:])
            ph = dst + src + struct.pack("!I3xB", len(icmp), 58)
            struct.pack_into("!H", icmp, 2, csum(ph + bytes(icmp)))
            return ip6(dst, src, 58, bytes(icmp))
        if nh == 6:
            return tcp_rst(l4, src, dst, 6)
    return None


def ip4(src: bytes, dst: bytes, proto: int, payload: bytes) -> bytes:
    h = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0x4000, 64,
                              proto, 0, src, dst))
    struct.pack_into("!H", h, 10, csum(bytes(h)))
    return bytes(h) + payload


def ip6(src: bytes, dst: bytes, nh: int, payload: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), nh, 64, src, dst) + payload


def tcp_rst(seg: bytes, src: bytes, dst: bytes, ver: int) -> bytes | None:
    sport, dport, seq, _ack, _off, flags = struct.unpack("!HHIIBB", seg[:14])
    if not flags & 0x02:  # only SYNs
        return None
    t = bytearray(struct.pack("!HHIIBBHHH", dport, sport, 0, (seq + 1) & 0xFFFFFFFF, 5 << 4,
                              0x14, 0, 0, 0))
    if ver == 4:
        ph = dst + src + struct.pack("!BBH", 0, 6, len(t))
        struct.pack_into("!H", t, 16, csum(ph + bytes(t)))
        return ip4(dst, src, 6, bytes(t))
    ph = dst + src + struct.pack("!I3xB", len(t), 6)
    struct.pack_into("!H", t, 16, csum(ph + bytes(t)))
    return ip6(dst, src, 6, bytes(t))


@pytest.fixture
def ns():
    name = f"mpbx-tun-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=30)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], timeout=30)


@pytest.fixture
def responder(ns):
    """A tun in `ns` (10.77.0.1/24, fd77::1/64) whose far side is answered by `answer`."""
    tun = open_tun("mpbxtun0", ns, addrs=["10.77.0.1/24", "fd77::1/64"],
                   routes=["10.99.0.0/24", ("fd99::/64", "fd77::1")])
    stop = threading.Event()
    seen: list[bytes] = []

    def loop() -> None:
        while not stop.is_set():
            r, _, _ = select.select([tun], [], [], 0.1)
            if not r:
                continue
            pkts = tun.read_batch(32)
            seen.extend(pkts)
            replies = [a for a in map(answer, pkts) if a is not None]
            tun.write_batch(replies)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield tun, seen
    finally:
        stop.set()
        t.join(5)
        tun.close()


def test_device_lives_in_namespace(ns, responder):
    tun, _ = responder
    out = subprocess.run(["ip", "-n", ns, "-br", "addr", "show", "dev", tun.name],
                         capture_output=True, text=True, timeout=30).stdout
    assert "10.77.0.1/24" in out and "fd77::1/64" in out
    link = subprocess.run(["ip", "-n", ns, "link", "show", "dev", tun.name],
                          capture_output=True, text=True, timeout=30).stdout
    assert "qlen 4096" in link and "mtu 1500" in link
    # and not in ours
    assert tun.name not in subprocess.run(["ip", "-br", "link"], capture_output=True,
                                          text=True, timeout=30).stdout


@pytest.mark.parametrize("dst", ["10.77.0.2", "fd77::2", "10.99.0.5", "fd99::5"])
def test_ping_answered_by_us(ns, responder, dst):
    _, seen = responder
    r = subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", "3", "-i", "0.2", "-W", "5",
                        dst], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 received" in r.stdout
    assert len(seen) >= 3


@pytest.mark.parametrize("family,dst", [(socket.AF_INET, "10.77.0.2"),
                                        (socket.AF_INET6, "fd77::2")])
def test_kernel_syn_gets_our_rst(ns, responder, family, dst):
    _, seen = responder

    def connect() -> None:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(20)
            s.connect((dst, 4242))

    with pytest.raises(ConnectionRefusedError):
        run_in_netns(ns, connect)
    syns = [p for p in seen if (p[9] if p[0] >> 4 == 4 else p[6]) == 6]
    assert syns, "the kernel's SYN did not come through the tun"


def test_close_removes_device(ns):
    tun = open_tun("mpbxtun1", ns, addrs=["10.78.0.1/24"])
    assert os.fstat(tun.fileno())
    tun.close()
    tun.close()  # idempotent
    out = subprocess.run(["ip", "-n", ns, "link"], capture_output=True, text=True,
                         timeout=30).stdout
    assert "mpbxtun1" not in out
    assert tun.closed


def test_garbage_write_is_counted_not_raised(ns):
    with open_tun("mpbxtun3", ns, addrs=["10.79.0.1/24"]) as tun:
        # UDP to a closed port (checksum 0: none): the kernel answers port unreachable
        good = ip4(bytes([10, 79, 0, 2]), bytes([10, 79, 0, 1]), 17,
                   struct.pack("!HHHH", 5555, 9, 8, 0))
        n = tun.write_batch([b"\x00garbage", good])
        assert n == 1 and tun.tx_dropped == 1 and tun.tx_packets == 1
        unreach = []
        for _ in range(50):
            select.select([tun], [], [], 0.2)
            unreach += [p for p in tun.read_batch(8) if p[0] >> 4 == 4 and p[9] == 1]
            if unreach:
                break
        assert unreach and unreach[0][20] == 3  # ICMP destination unreachable


def test_missing_namespace_is_a_hinted_error():
    from mptcp_bpf.errors import HintedError

    with pytest.raises(HintedError) as ei:
        open_tun("mpbxtun2", "mpbx-no-such-ns")
    assert "ip netns add" in ei.value.hint
