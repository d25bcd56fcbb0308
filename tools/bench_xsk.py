#!/usr/bin/env python3
"""Measure AF_XDP receive and transmit packets/s of mptcp_bpf.datapath.xsk on a veth pair.

    tools/bench_xsk.py [--seconds 3] [--size 18] [--batch 64] [--port] [-j]

Builds two namespaces (mpbx-bench-*) joined by a veth pair, attaches a minimal redirect
program on one end and binds an XskSocket there (copy mode), then
  RX: a sendmmsg() UDP blaster in the other namespace sends as fast as it can; we count
      what recv_batch() returns and the kernel's AF_XDP drop counters;
  TX: send_batch() sends UDP frames to the peer; we count what the peer's veth received.
With --port the same runs through datapath.ports.XdpPort (Ethernet stripped on RX,
added from the neighbour cache on TX). Everything is removed at the end. Also: `bench_xsk.py blast DST PORT ...` is the blaster
(used by the tests).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import select
import socket
import struct
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


# --- the blaster: UDP datagrams in batches of one sendmmsg() each -----------------------
class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint),
                ("iov", ctypes.POINTER(_Iovec)), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", _Msghdr), ("len", ctypes.c_uint)]


def blast(dst: str, port: int, count: int, rate: float, size: int, batch: int = 64,
          seconds: float = 0.0) -> dict[str, float]:
    """Send `count` datagrams (or for `seconds`) of `size` payload bytes at `rate`/s
    (0: as fast as possible). Each payload starts with its sequence number (u32)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    s.connect((dst, port))
    bufs = [ctypes.create_string_buffer(max(size, 4)) for _ in range(batch)]
    iovs = (_Iovec * batch)()
    msgs = (_Mmsghdr * batch)()
    for i in range(batch):
        iovs[i].base = ctypes.addressof(bufs[i])
        iovs[i].len = max(size, 4)
        msgs[i].hdr.iov = ctypes.pointer(iovs[i])
        msgs[i].hdr.iovlen = 1
    sent = 0
    t0 = time.monotonic()
    end = t0 + seconds if seconds else float("inf")
    limit = count if count else 1 << 62
    errors = 0
    while sent < limit:
        n = min(batch, limit - sent)
        for i in range(n):
            struct.pack_into("!I", bufs[i], 0, (sent + i) & 0xFFFFFFFF)
        r = libc.sendmmsg(s.fileno(), msgs, n, 0)
        if r < 0:
            errors += 1
            time.sleep(0.001)
            continue
        sent += r
        now = time.monotonic()
        if now >= end:
            break
        if rate:
            ahead = t0 + sent / rate - now
            if ahead > 0:
                time.sleep(ahead)
    el = time.monotonic() - t0
    s.close()
    return {"sent": sent, "seconds": el, "pps": sent / el if el else 0.0, "errors": errors}


# --- the lab ------------------------------------------------------------------------------
def sh(*args: str) -> None:
    subprocess.run(args, check=True, timeout=30, capture_output=True)


def link_mac(ns: str, dev: str) -> str:
    out = subprocess.run(["ip", "-n", ns, "-j", "link", "show", dev], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    return json.loads(out)[0]["address"]


def rx_packets(ns: str, dev: str) -> int:
    out = subprocess.run(["ip", "-n", ns, "-j", "-s", "link", "show", dev],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return int(json.loads(out)[0]["stats64"]["rx"]["packets"])


class VethLab:
    """Namespaces A and B joined by veth xa (10.9.0.1) <-> xb (10.9.0.2); static neighbours."""

    def __init__(self, prefix: str = "mpbx-bench") -> None:
        tag = uuid.uuid4().hex[:6]
        self.a, self.b = f"{prefix}-a-{tag}", f"{prefix}-b-{tag}"
        self.made: list[str] = []

    def __enter__(self) -> VethLab:
        try:
            for n in (self.a, self.b):
                sh("ip", "netns", "add", n)
                self.made.append(n)
            sh("ip", "link", "add", "xa", "netns", self.a, "type", "veth", "peer", "xb",
               "netns", self.b)
            for ns, dev, ip4, ip6 in ((self.a, "xa", "10.9.0.1/24", "fd09::1/64"),
                                      (self.b, "xb", "10.9.0.2/24", "fd09::2/64")):
                sh("ip", "-n", ns, "addr", "add", ip4, "dev", dev)
                sh("ip", "-n", ns, "addr", "add", ip6, "dev", dev, "nodad")
                sh("ip", "-n", ns, "link", "set", dev, "up")
                sh("ip", "-n", ns, "link", "set", "lo", "up")
            self.mac_a, self.mac_b = link_mac(self.a, "xa"), link_mac(self.b, "xb")
            for ns, dev, ip4, ip6, mac in ((self.a, "xa", "10.9.0.2", "fd09::2", self.mac_b),
                                           (self.b, "xb", "10.9.0.1", "fd09::1", self.mac_a)):
                sh("ip", "-n", ns, "neigh", "replace", ip4, "lladdr", mac, "dev", dev)
                sh("ip", "-n", ns, "neigh", "replace", ip6, "lladdr", mac, "dev", dev)
            from mptcp_bpf.datapath.tun import run_in_netns

            self.ifindex_b = run_in_netns(self.b, lambda: socket.if_nametoindex("xb"))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for n in self.made:
            subprocess.run(["ip", "netns", "del", n], timeout=30, capture_output=True)
        self.made.clear()

    def blaster(self, port: int, count: int = 0, rate: float = 0, size: int = 18,
                seconds: float = 0, dst: str = "10.9.0.2") -> subprocess.Popen[str]:
        """Start the blaster in namespace A (its JSON result comes on stdout)."""
        return subprocess.Popen(
            ["ip", "netns", "exec", self.a, sys.executable, os.path.abspath(__file__),
             "blast", dst, str(port), "--count", str(count), "--rate", str(rate),
             "--size", str(size), "--seconds", str(seconds)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def udp_frame(src_mac: str, dst_mac: str, payload: bytes, sport: int = 4000,
              dport: int = 9) -> bytes:
    """Ethernet + IPv4 10.9.0.2 -> 10.9.0.1 + UDP (checksum 0: none)."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                               bytes([10, 9, 0, 2]), bytes([10, 9, 0, 1])))
    s = sum(struct.unpack("!10H", ip))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    struct.pack_into("!H", ip, 10, ~s & 0xFFFF)
    eth = bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", ""))
    return eth + b"\x08\x00" + bytes(ip) + udp


class StandInFastPath:
    """FastPath.set_xsk over the minimal redirect program (for --port)."""

    def __init__(self, prog: object) -> None:
        self.prog = prog

    def set_xsk(self, ifindex: int, queue: int, fd: int | None) -> None:
        self.prog.set_xsk(queue, fd)  # type: ignore[attr-defined]


def bench(seconds: float, size: int, batch: int, through_port: bool = False
          ) -> dict[str, object]:
    from mptcp_bpf.datapath.xsk import RedirectProgram, XskConfig, XskSocket

    port = 9999
    res: dict[str, object] = {"seconds": seconds, "payload": size, "batch": batch,
                              "through": "XdpPort" if through_port else "XskSocket"}
    with VethLab() as lab:
        prog = RedirectProgram("xb", port, netns=lab.b, mpb_meta=through_port)
        cfg = XskConfig(rx_size=8192, tx_size=4096, meta_len=RedirectProgram.META_LEN)
        if through_port:
            from mptcp_bpf.datapath.ports import XdpPort

            xp = XdpPort("xb", StandInFastPath(prog), netns=lab.b, config=cfg)
            xsk = xp.tx
            recv, send, closer = xp.recv_batch, xp.send_batch, xp.close
            strip = 14
        else:
            xsk = XskSocket(lab.ifindex_b, 0, cfg, netns=lab.b)
            prog.set_xsk(0, xsk.fd)
            recv, send, closer = xsk.recv_batch, xsk.send_batch, xsk.close
            xp = xsk
            strip = 0
        try:
            # RX
            p = lab.blaster(port, seconds=seconds, size=size)
            got = 0
            t0 = time.monotonic()
            c0 = time.thread_time()
            deadline = t0 + seconds + 30
            while time.monotonic() < deadline:
                select.select([xp], [], [], 0.05)
                got += len(recv(batch))
                if p.poll() is not None and xsk.rx_pending() == 0:
                    break
            rx_cpu = time.thread_time() - c0
            out, err = p.communicate(timeout=30)
            sender = json.loads(out) if out.strip() else {"error": err}
            el = float(sender.get("seconds", time.monotonic() - t0))
            st = xsk.statistics()
            res["rx"] = {"received": got, "pps": round(got / el), "sender": sender,
                         "redirected": prog.hits(),
                         "drops": st["rx_dropped"] + st["rx_ring_full"],
                         "fill_ring_empty": st["rx_fill_ring_empty_descs"],
                         "cpu_us_per_packet": round(rx_cpu / max(got, 1) * 1e6, 3)}
            # TX
            frame = udp_frame(lab.mac_b, lab.mac_a, bytes(size))[strip:]
            frames = [frame] * batch
            before = rx_packets(lab.a, "xa")
            t0 = time.monotonic()
            c0 = time.thread_time()
            end = t0 + seconds
            queued = 0
            while time.monotonic() < end:
                queued += send(frames)
                if xsk.tx_free() < batch:
                    xsk.reap()
            while xsk.tx_pending() and time.monotonic() < end + 5:
                xsk.kick()
            el = time.monotonic() - t0
            tx_cpu = time.thread_time() - c0
            time.sleep(0.2)
            arrived = rx_packets(lab.a, "xa") - before
            res["tx"] = {"queued": queued, "arrived": arrived, "pps": round(arrived / el),
                         "kicks": xsk.kicks, "tx_csum_offload": xsk.tx_csum,
                         "cpu_us_per_packet": round(tx_cpu / max(queued, 1) * 1e6, 3)}
        finally:
            closer()
            prog.close()
    return res


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["blast"]:
        ap = argparse.ArgumentParser(prog="bench_xsk.py blast")
        ap.add_argument("dst")
        ap.add_argument("port", type=int)
        ap.add_argument("--count", type=int, default=0)
        ap.add_argument("--rate", type=float, default=0)
        ap.add_argument("--size", type=int, default=18)
        ap.add_argument("--seconds", type=float, default=0)
        a = ap.parse_args(argv[1:])
        if not a.count and not a.seconds:
            ap.error("give --count or --seconds")
        print(json.dumps(blast(a.dst, a.port, a.count, a.rate, a.size, seconds=a.seconds)))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--size", type=int, default=18, help="UDP payload bytes (18: 64-byte frames)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--port", action="store_true",
                    help="go through datapath.ports.XdpPort (L2 strip/add, neighbours)")
    ap.add_argument("-j", "--json", action="store_true")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_xsk.py: needs root (namespaces, XDP, AF_XDP)", file=sys.stderr)
        return 1
    r = bench(a.seconds, a.size, a.batch, a.port)
    if a.json:
        print(json.dumps(r))
    else:
        rx, tx = r["rx"], r["tx"]  # type: ignore[index]
        print(f"RX: {rx['pps']:>9} packets/s  (received {rx['received']}, "  # type: ignore[index]
              f"redirected {rx['redirected']}, drops {rx['drops']}, "  # type: ignore[index]
              f"sender {rx['sender'].get('pps', 0):.0f}/s, "  # type: ignore[index]
              f"{rx['cpu_us_per_packet']} us CPU/packet here)")  # type: ignore[index]
        print(f"TX: {tx['pps']:>9} packets/s  (queued {tx['queued']}, "  # type: ignore[index]
              f"arrived {tx['arrived']}, kicks {tx['kicks']}, "  # type: ignore[index]
              f"{tx['cpu_us_per_packet']} us CPU/packet incl. the kernel's copy-mode xmit)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
