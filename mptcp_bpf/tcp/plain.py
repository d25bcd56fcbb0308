"""A minimal plain-TCP host over Subflow: demux, listen, connect, RST for strays.

Why: the subflow needs an owner to be tested (netsim, TUN against the kernel), and the MPTCP
tests need a peer that speaks no MPTCP (fallback). It is the trivial owner of the
architecture contract: no extra options, data into a bounded receive buffer whose free
space is the advertised window (so zero windows and probes happen for real).

    host = PlainHost([addr], timers, output)         # output(packet_bytes)
    host.listen(80, on_accept=lambda conn: ...)
    conn = host.connect(addr, (peer_addr, 80), now)
    host.input(packet_bytes, now)
    conn.send(b"...", now); conn.recv(n, now); conn.close(now)
"""

from __future__ import annotations

import random
from typing import Any, Callable

from mptcp_bpf.timers import TimerWheel
from mptcp_bpf.wire.errors import WireError
from mptcp_bpf.wire.gro import thin_acks
from mptcp_bpf.wire.packet import InPacket, build_tcp_packet, parse_ip_packet

from .congestion import CongestionControl
from .subflow import ACK, RST, SYN, Segment, Subflow, SubflowConfig

Key = tuple[bytes, int, bytes, int]


class PlainConn:
    """One TCP connection: the Subflow's hooks plus a byte-stream API."""

    def __init__(self, host: "PlainHost") -> None:
        self.host = host
        self.sf: Subflow | None = None
        self.rbuf = bytearray()
        self.rcv_limit = host.config.rcv_buf
        self.eof = False
        self.established = False
        self.closed_reason: str | None = None
        self.on_event: Callable[[str, "PlainConn"], None] | None = None
        self.max_unsent = 1 << 20   # send-buffer bound used by writable()

    # hooks ---------------------------------------------------------------
    def syn_options(self, sf: Subflow) -> bytes:
        return b""

    def on_syn_options(self, sf: Subflow, opts: Any) -> None:
        pass

    def ack_options(self, sf: Subflow, meta: Any, length: int, flags: int) -> bytes:
        return b""

    def data_options(self, sf: Subflow) -> bytes:
        return b""  # what ack_options gives every data segment (Subflow._burst_header)

    def on_segment(self, sf: Subflow, seg: Segment) -> None:
        pass

    def on_data(self, sf: Subflow, ssn: int, data: Any) -> None:
        self.rbuf += data
        self._event("data")

    def on_established(self, sf: Subflow) -> None:
        self.established = True
        self._event("established")

    def on_fin(self, sf: Subflow) -> None:
        self.eof = True
        self._event("fin")

    def on_closed(self, sf: Subflow, reason: str) -> None:
        self.closed_reason = reason
        self.host._forget(sf)
        self._event("closed")

    def _event(self, what: str) -> None:
        if self.on_event is not None:
            self.on_event(what, self)

    # stream API -----------------------------------------------------------
    def window(self) -> int:
        return max(0, self.rcv_limit - len(self.rbuf))

    def send(self, data: bytes, now: float) -> None:
        assert self.sf is not None
        self.sf.send(data, None, now)

    def writable(self) -> bool:
        return self.sf is not None and self.sf.unsent_bytes < self.max_unsent

    def recv(self, n: int, now: float) -> bytes:
        """Up to n bytes (b"" when none or at EOF); reading reopens the window."""
        out = bytes(self.rbuf[:n])
        del self.rbuf[:n]
        if out and self.sf is not None:
            self.sf.window_update(now)
        return out

    def close(self, now: float) -> None:
        if self.sf is not None:
            self.sf.close(now)

    def abort(self, now: float) -> None:
        if self.sf is not None:
            self.sf.abort(now)


class PlainHost:
    """Plain TCP endpoints on a set of local addresses (bytes)."""

    def __init__(self, addrs: list[bytes], timers: TimerWheel, output: Callable[[bytes], None],
                 config: SubflowConfig | None = None, rng: random.Random | None = None,
                 cc_factory: Callable[[], CongestionControl] = CongestionControl) -> None:
        self.addrs = [bytes(a) for a in addrs]
        self.timers = timers
        self.output = output
        self.config = config or SubflowConfig()
        self.rng = rng or random.Random()
        self.cc_factory = cc_factory
        self.conns: dict[Key, PlainConn] = {}
        self.listeners: dict[int, Callable[[PlainConn], None]] = {}
        self.dropped = 0
        self.acks_thinned = 0   # pure ACKs dropped by input_batch (wire.gro.thin_acks)
        self.rsts_sent = 0
        self._next_port = 40000 + self.rng.randrange(20000)
        self._batch: list[Subflow] | None = None

    def listen(self, port: int, on_accept: Callable[[PlainConn], None]) -> None:
        self.listeners[port] = on_accept

    def connect(self, local: bytes, remote: tuple[bytes, int], now: float,
                local_port: int = 0) -> PlainConn:
        port = local_port or self._alloc_port()
        conn = PlainConn(self)
        sf = Subflow((bytes(local), port), (bytes(remote[0]), remote[1]), conn, self.timers,
                     self.output, self.cc_factory(), self.config, self.rng)
        sf.rcv_window_fn = conn.window
        sf.defer_ack = self._defer
        conn.sf = sf
        self.conns[(bytes(local), port, bytes(remote[0]), remote[1])] = conn
        sf.connect(now)
        return conn

    def _alloc_port(self) -> int:
        self._next_port = 40000 + (self._next_port - 40000 + 1) % 20000
        return self._next_port

    def _forget(self, sf: Subflow) -> None:
        self.conns.pop((sf.local[0], sf.local[1], sf.remote[0], sf.remote[1]), None)

    def input_batch(self, packets: Any, now: float) -> None:
        """Packets that arrived together: in-order data is ACKed once per subflow at the
        end of the batch (Subflow.defer_ack) instead of every second segment, and pure
        ACKs a later one supersedes are dropped first (wire.gro.thin_acks, counted in
        `acks_thinned`)."""
        due: list[Subflow] = []
        self._batch = due
        pkts, thinned = thin_acks(packets if type(packets) is list else list(packets))
        self.acks_thinned += thinned
        try:
            for pkt in pkts:
                self.input(pkt, now)
        finally:
            self._batch = None
        for sf in due:
            sf.flush_ack(now)

    def _defer(self, sf: Subflow) -> bool:
        b = self._batch
        if b is None:
            return False
        b.append(sf)
        return True

    def input(self, packet: bytes | memoryview, now: float) -> None:
        try:
            p = parse_ip_packet(packet)
        except WireError:
            self.dropped += 1
            return
        self.input_parsed(p, now)

    def input_parsed(self, p: InPacket, now: float) -> None:
        conn = self.conns.get((p.dst, p.dport, p.src, p.sport))
        if conn is not None and conn.sf is not None:
            conn.sf.input(p, now)
            return
        if p.flags & SYN and not p.flags & ACK and p.dport in self.listeners \
                and (not self.addrs or p.dst in self.addrs):
            conn = PlainConn(self)
            try:
                sf = Subflow.from_syn(p, now, (p.dst, p.dport), (p.src, p.sport), conn,
                                      self.timers, self.output, self.cc_factory(), self.config,
                                      self.rng)
            except WireError:
                self.dropped += 1
                return
            sf.rcv_window_fn = conn.window
            sf.defer_ack = self._defer
            conn.sf = sf
            self.conns[(p.dst, p.dport, p.src, p.sport)] = conn
            self.listeners[p.dport](conn)
            return
        self._reset(p)

    def _reset(self, p: InPacket) -> None:
        """RFC 9293 §3.10.7.1: answer a segment to nothing with RST (never a RST)."""
        if p.flags & RST:
            self.dropped += 1
            return
        self.rsts_sent += 1
        if p.flags & ACK:
            seq, ack, flags = p.ack, 0, RST
        else:
            ln = len(p.payload) + (1 if p.flags & SYN else 0) + (p.flags & 1)
            seq, ack, flags = 0, (p.seq + ln) & 0xFFFFFFFF, RST | ACK
        self.output(build_tcp_packet(p.dst, p.src, p.dport, p.sport, seq, ack, flags, 0, b"",
                                     b""))
