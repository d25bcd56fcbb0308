"""Small traffic tools for lab tests and the reference benchmark, run inside a node with
`python -m mptcp_bpf.lab.traffic COMMAND ...` (each prints one JSON line on stdout).

  udp-recv --port P [--idle S] [--max-time S]     count datagrams, bytes, reordering, dups
  udp-send DST --port P --count N [--rate BPS] [--size B]   paced in 1 ms batches
  serve --port P --size N [--send M] [--tcp] [--bind A] [--cc C] [--join-wait] [--hold]
                                 accept one connection, send M (default N) bytes while reading to EOF
  connect DST --port P --size N [--send M] [...]   the same from the client

Both ends report `elapsed`, timed as the selftests' mptcp_connect -T does: from the
established socket (after connect() / accept()) until both directions are done.
--join-wait is mptcp_connect -j: the first write is at most 100 bytes, then 200 ms of sleep
so the MP_JOIN completes before the bulk data (simult_flows.sh allows 400 ms for it).
--hold makes the same first write, prints {"held": true} and waits for a line (or EOF) on
stdin before the rest: a test keeps the connection ESTABLISHED until it saw what it waits
for (the kernel's PM creates its subflows only while the connection is established, so a
transfer that ends in a few ms may leave no MP_JOIN at all).

Datagrams start with an 8-byte sequence number. MPTCP sockets use IPPROTO_MPTCP (262).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import struct
import sys
import time

IPPROTO_MPTCP = 262
CHUNK = 64 * 1024


def udp_recv(port: int, idle: float, max_time: float, bind: str = "") -> dict:
    fam = socket.AF_INET6 if ":" in bind else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind((bind, port))
    print(json.dumps({"ready": True}), flush=True)
    count = nbytes = reordered = dups = 0
    highest = -1
    seen: set[int] = set()
    first = last = 0.0
    start = time.monotonic()
    while time.monotonic() - start < max_time:
        wait = idle if count else max_time
        r, _, _ = select.select([s], [], [], wait)
        if not r:
            break
        data = s.recv(65536)
        now = time.monotonic()
        if not count:
            first = now
        last = now
        count += 1
        nbytes += len(data)
        if len(data) >= 8:
            seq = struct.unpack_from("!Q", data)[0]
            if seq in seen:
                dups += 1
            else:
                seen.add(seq)
                if seq < highest:
                    reordered += 1
                highest = max(highest, seq)
    return {"count": count, "unique": len(seen), "bytes": nbytes, "reordered": reordered,
            "dups": dups, "duration": last - first}


def udp_send(dst: str, port: int, count: int, rate: float, size: int) -> dict:
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    payload = bytearray(max(size, 8))
    per_sec = rate / 8 / (size + 28) if rate else 0.0
    start = time.monotonic()
    sent = errors = 0
    while sent < count:
        if per_sec:
            due = int((time.monotonic() - start) * per_sec) + 1
            if sent >= due:
                time.sleep(min(0.001, (sent + 1 - due) / per_sec + 0.0002))
                continue
            burst = min(count, due) - sent
        else:
            burst = min(64, count - sent)
        for _ in range(burst):
            struct.pack_into("!Q", payload, 0, sent)
            try:
                s.sendto(payload, (dst, port))
            except (BlockingIOError, OSError):
                errors += 1
            sent += 1
    return {"sent": sent, "errors": errors, "duration": time.monotonic() - start}


def _stream_socket(dst_or_bind: str, tcp: bool, cc: str = "") -> socket.socket:
    fam = socket.AF_INET6 if ":" in dst_or_bind else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM, 0 if tcp else IPPROTO_MPTCP)
    if cc:
        # per socket: a namespace's default may only be an allowed (non-restricted) one
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())
    return s


def _exchange(sock: socket.socket, size: int, timeout: float = 120.0,
              join_wait: bool = False, hold: bool = False) -> tuple[int, float, float]:
    """Send `size` bytes (then SHUT_WR) while reading until EOF, in one poll loop as the
    selftests' mptcp_connect does (no threads, no per-read allocation).
    Returns (received, t_sent, t_recv) in seconds from the start."""
    t0 = time.monotonic()
    left = size
    if (join_wait or hold) and size:
        # mptcp_connect -j: a small first write (the peer's DSS ack makes the connection
        # fully established), then let the join handshake complete
        sock.sendall(bytes(min(100, size)))
        left -= min(100, size)
    if hold:
        print(json.dumps({"held": True}), flush=True)
        sys.stdin.readline()
    elif join_wait and size:
        time.sleep(0.2)
    sock.setblocking(False)
    out = memoryview(bytes(CHUNK))
    inbuf = bytearray(256 * 1024)
    got = 0
    t_send = t_recv = 0.0
    eof = False
    if left == 0:
        sock.shutdown(socket.SHUT_WR)
    poller = select.poll()
    deadline = t0 + timeout
    while not eof or left:
        mask = (select.POLLIN if not eof else 0) | (select.POLLOUT if left else 0)
        poller.register(sock, mask)
        if not poller.poll(1000):
            if time.monotonic() > deadline:
                raise TimeoutError(f"transfer stalled: sent {size - left}/{size}, received {got}")
            continue
        if not eof:
            try:
                while True:
                    n = sock.recv_into(inbuf)
                    if n == 0:
                        eof = True
                        t_recv = time.monotonic() - t0
                        break
                    got += n
            except BlockingIOError:
                pass
        if left:
            try:
                while left:
                    n = sock.send(out[:min(CHUNK, left)])
                    left -= n
            except BlockingIOError:
                pass
            if not left:
                sock.shutdown(socket.SHUT_WR)
                t_send = time.monotonic() - t0
    return got, t_send, t_recv


def serve(port: int, size: int, tcp: bool, bind: str, timeout: float, cc: str = "",
          join_wait: bool = False, hold: bool = False) -> dict:
    ls = _stream_socket(bind, tcp, cc)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((bind, port))
    ls.listen(4)
    ls.settimeout(timeout)
    print(json.dumps({"ready": True}), flush=True)
    conn, peer = ls.accept()
    if cc:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())
    t0 = time.monotonic()
    got, t_send, t_recv = _exchange(conn, size, timeout, join_wait, hold)
    elapsed = time.monotonic() - t0
    conn.close()
    ls.close()
    return {"received": got, "sent": size, "elapsed": elapsed, "send_time": t_send,
            "recv_time": t_recv, "peer": peer[0]}


def connect(dst: str, port: int, size: int, tcp: bool, bind: str, timeout: float, cc: str = "",
            join_wait: bool = False, hold: bool = False) -> dict:
    s = _stream_socket(dst, tcp, cc)
    if bind:
        s.bind((bind, 0))
    s.settimeout(timeout)
    t_conn = time.monotonic()
    s.connect((dst, port))
    t0 = time.monotonic()
    got, t_send, t_recv = _exchange(s, size, timeout, join_wait, hold)
    elapsed = time.monotonic() - t0
    s.close()
    return {"received": got, "sent": size, "elapsed": elapsed, "connect_time": t0 - t_conn,
            "send_time": t_send, "recv_time": t_recv}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mptcp_bpf.lab.traffic", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("udp-recv")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--bind", default="")
    r.add_argument("--idle", type=float, default=1.0)
    r.add_argument("--max-time", type=float, default=60.0)
    s = sub.add_parser("udp-send")
    s.add_argument("dst")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--count", type=int, default=1000)
    s.add_argument("--rate", type=float, default=0.0, help="bit/s on the wire at IP level; 0 = flat out")
    s.add_argument("--size", type=int, default=1000)
    for name in ("serve", "connect"):
        c = sub.add_parser(name)
        if name == "connect":
            c.add_argument("dst")
        c.add_argument("--port", type=int, required=True)
        c.add_argument("--size", type=int, required=True)
        c.add_argument("--send", type=int, help="bytes to send (default --size); reads to EOF")
        c.add_argument("--join-wait", action="store_true",
                       help="as mptcp_connect -j: 100 bytes first, then 200 ms for the MP_JOIN")
        c.add_argument("--hold", action="store_true",
                       help="100 bytes first, print {\"held\": true}, wait for a line on stdin")
        c.add_argument("--tcp", action="store_true", help="plain TCP instead of MPTCP")
        c.add_argument("--bind", default="")
        c.add_argument("--timeout", type=float, default=120.0)
        c.add_argument("--cc", default="", help="congestion control of the socket, e.g. cubic")
        c.add_argument("--rt", action="store_true",
                       help="real-time priority, so a loaded machine does not starve the transfer")
    a = p.parse_args(argv)
    if getattr(a, "rt", False):
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(5))
        except OSError:
            pass
    if a.cmd == "udp-recv":
        out = udp_recv(a.port, a.idle, a.max_time, a.bind)
    elif a.cmd == "udp-send":
        out = udp_send(a.dst, a.port, a.count, a.rate, a.size)
    elif a.cmd == "serve":
        send = a.size if a.send is None else a.send
        out = serve(a.port, send, a.tcp, a.bind, a.timeout, a.cc, a.join_wait, a.hold)
    else:
        send = a.size if a.send is None else a.send
        out = connect(a.dst, a.port, send, a.tcp, a.bind, a.timeout, a.cc, a.join_wait, a.hold)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
