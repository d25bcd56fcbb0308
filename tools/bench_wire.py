#!/usr/bin/env python3
"""Per-packet cost of the wire hot path: parse_ip_packet, DSS parse/emit, build_tcp_packet,
TcpBuilder, payload checksum. Prints microseconds of thread CPU time per operation (best of
many short runs: on a busy machine wall-clock timings swing 2-3x, CPU time far less).
MPTCP_BPF_SRC=dir runs the same cases against another source tree (before/after)."""

from __future__ import annotations

import argparse
import os
import sys
import time
import timeit

sys.path.insert(0, os.environ.get("MPTCP_BPF_SRC")
                or os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mptcp_bpf.wire import mptcp as m  # noqa: E402
from mptcp_bpf.wire.checksum import csum_partial  # noqa: E402
from mptcp_bpf.wire import packet as _packet  # noqa: E402
from mptcp_bpf.wire.packet import build_tcp_packet, parse_ip_packet, tcp_checksum_ok  # noqa: E402
from mptcp_bpf.wire.tcp import emit_tcp_options, parse_tcp_options  # noqa: E402


def best_us(fn, n: int, r: int) -> float:
    """Best of r runs of n calls, in microseconds of this thread's CPU time."""
    return min(timeit.Timer(fn, timer=time.thread_time).repeat(number=n, repeat=r)) / n * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=300, help="operations per run")
    ap.add_argument("-r", type=int, default=40, help="runs (the best is shown)")
    ap.add_argument("--payload", type=int, default=1400)
    a = ap.parse_args()
    payload = os.urandom(a.payload)
    dss = m.Dss(data_ack=1 << 40, dsn=1 << 41, ssn=1, data_len=a.payload, checksum=0x1234)
    opts = emit_tcp_options(ts=(1, 2), extra=m.emit(dss))
    results = {}
    for fam, src, dst in (("v4", bytes(4), b"\x0a\x00\x00\x02"), ("v6", bytes(16), b"\xfe" * 16)):
        pkt = build_tcp_packet(src, dst, 1, 2, 3, 4, 0x18, 500, opts, payload)
        cases = {
            f"{fam} build_tcp_packet": lambda: build_tcp_packet(src, dst, 1, 2, 3, 4, 0x18, 500, opts, payload),
            f"{fam} parse_ip_packet": lambda: parse_ip_packet(pkt),
            f"{fam} parse + tcp_checksum_ok": lambda: tcp_checksum_ok(parse_ip_packet(pkt)),
        }
        if hasattr(_packet, "TcpBuilder"):
            tb = _packet.TcpBuilder(src, dst, 1, 2)
            cases[f"{fam} TcpBuilder.build"] = lambda: tb.build(3, 4, 0x18, 500, opts, payload)
            cases[f"{fam} TcpBuilder.build nocsum"] = \
                lambda: tb.build(3, 4, 0x18, 500, opts, payload, False)
            cases[f"{fam} TcpBuilder.build partial"] = \
                lambda: tb.build(3, 4, 0x18, 500, opts, payload, _packet.TX_CSUM_PARTIAL)
        for name, fn in cases.items():
            results[name] = best_us(fn, a.n, a.r)
    raw = m.emit(dss)
    more = {
        "emit DSS (ack+map+csum)": lambda: m.emit(dss),
        "parse_mptcp DSS": lambda: m.parse_mptcp(raw),
        "emit_tcp_options ts+DSS": lambda: emit_tcp_options(ts=(1, 2), extra=raw),
        "parse_tcp_options ts+DSS": lambda: parse_tcp_options(opts),
        f"csum_partial {a.payload} B": lambda: csum_partial(payload),
    }
    for name, fn in more.items():
        results[name] = best_us(fn, a.n, a.r)
    for name, us in results.items():
        print(f"{name:32s} {us:7.2f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
