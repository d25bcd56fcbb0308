"""One TCP endpoint (a subflow): handshake, RTT/RTO, retransmission, loss recovery, windows.

I/O-free and clock-free: every entry point takes `now` (seconds), timers go on the shared
`TimerWheel`, and finished IP packets (IPv4/IPv6 + TCP, checksums filled) are handed to
`output(packet_bytes)`. The subflow builds the packet itself with `self.build` (default
`wire.packet.build_tcp_packet`) because it knows every header field at transmit time and
an extra call layer per segment costs more than it buys; an owner that wants the fields
instead can replace `build`.

Sequence numbers are kept relative and unbounded inside (`snd_una`, `snd_nxt`, `rcv_nxt`:
0 is the SYN, data starts at 1) and converted to 32-bit wire values only at the edges.
An "ssn" given to the owner (on_data, Segment.ssn, tx_ssn) is relative to ISN + 1, so the
first data byte has ssn 0 (the RFC 8684 relative subflow sequence number is ssn + 1).

Sending: `send(data, meta)` queues one chunk (any size); segments are cut from it at most
one MSS long and never mix two chunks. A segment keeps its boundaries for its whole life,
so a retransmission resends exactly the same bytes. Segments live in a list with a head
index (O(1) pop, bisect by sequence number for SACK), and the SACK scoreboard is a list of
merged ranges so each ACK only touches the newly SACKed segments.

Loss recovery: SACK-based (RFC 6675) when both sides offered SACK-permitted, NewReno
(RFC 6582) otherwise; both share the pipe estimate in_flight = outstanding - sacked - lost
+ retransmitted (the Linux formulation; without SACK each duplicate ACK counts one MSS as
"sacked", RFC 3042 limited transmit falls out of it).
"""

from __future__ import annotations

import random
import struct
from collections import deque
from typing import Any, Callable

from mptcp_bpf.timers import Timer, TimerWheel
from mptcp_bpf.wire.errors import WireError
from mptcp_bpf.wire.packet import TcpBuilder, build_tcp_packet
from mptcp_bpf.wire.tcp import TcpOptions, parse_tcp_options

from .common import (ACK, CLOSE_WAIT, CLOSED, CLOSING, ESTABLISHED, FIN, FIN_WAIT1, FIN_WAIT2,
                     LAST_ACK, PSH, R_ABORTED, R_CLOSED, R_REFUSED, R_RESET, R_TIMEOUT, RST,
                     STATE_NUMBERS, SYN, SYN_RECV, SYN_SENT, TIME_WAIT, _CAN_RECV, _CAN_SEND,
                     _M32, _SYNCHRONIZED, _TS_FAST, Seg, Segment, SubflowConfig, _default_wscale,
                     _fast_opts, _NoHooks, _pack_II, _pack_ts)
from .congestion import CongestionControl
from .inspect import InspectMixin
from .receive import ReceiveMixin
from .recovery import RecoveryMixin
from .rtt import RttMixin

_CAN_QUEUE = _CAN_SEND | {SYN_SENT, SYN_RECV}

__all__ = ["Subflow", "SubflowConfig", "Segment", "Seg", "FIN", "SYN", "RST", "PSH", "ACK",
           "CLOSED", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "CLOSING",
           "TIME_WAIT", "CLOSE_WAIT", "LAST_ACK", "STATE_NUMBERS", "R_CLOSED", "R_RESET",
           "R_REFUSED", "R_TIMEOUT", "R_ABORTED"]


def _same_owner(cls: type, name: str, base: str) -> bool:
    """`name` is defined on the class that defines `base`, or on a subclass of it."""
    def where(attr: str) -> type | None:
        return next((k for k in cls.__mro__ if attr in k.__dict__), None)
    n, b = where(name), where(base)
    return n is not None and b is not None and issubclass(n, b)


class Subflow(RecoveryMixin, RttMixin, ReceiveMixin, InspectMixin):
    """A TCP endpoint. See the module docstring and docs/ARCHITECTURE.md for the hooks.

    Attributes an owner may read: state, srtt, rttvar, rto, min_rtt, cwnd, ssthresh,
    in_flight, flight_size, cwnd_limited, in_recovery, mss, snd_wnd, bytes_sent,
    bytes_acked, bytes_received, retransmits, syn_retransmits, unsent_bytes,
    snd_una/snd_nxt/rcv_nxt (relative). Owners may set: rcv_window_fn (a callable
    returning the window in bytes to advertise, e.g. the connection-level free buffer),
    syn_retries_max, tos, tx_csum, build (called as build(src, dst, sport, dport, seq,
    ack, flags, window, options, payload, tos, ttl, csum) -> packet bytes).
    """

    def __init__(self, local: tuple[bytes, int], remote: tuple[bytes, int], hooks: Any,
                 timers: TimerWheel, output: Callable[[bytes], None],
                 cc: CongestionControl | None = None, config: SubflowConfig | None = None,
                 rng: random.Random | None = None) -> None:
        self.local = local
        self.remote = remote
        self.hooks = hooks if hooks is not None else _NoHooks()
        self.timers = timers
        self.output = output
        self.config = cfg = config or SubflowConfig()
        self.cc = cc or CongestionControl()
        self.build = build_tcp_packet
        self.burst = True   # TSO-like loop for the segments of a chunk (_burst); False: off
        self._tb: TcpBuilder | None = None   # per-4-tuple header template (default build)
        self.tos = cfg.tos
        self._ttl = cfg.ttl
        self.nodelay = True  # there is no Nagle: segments leave as chunks are queued
        # False: leave the TCP checksum 0 for a fast path that fills it (tc egress, NIC);
        # wire.packet.TX_CSUM_PARTIAL: the pseudo-header sum, for AF_XDP/NIC checksum offload
        self.tx_csum = True
        self.rng = rng or random.Random()
        self.state = CLOSED
        self.error: str | None = None
        self.rcv_window_fn: Callable[[], int] | None = None
        self.syn_retries_max = cfg.syn_retries
        # sequence spaces
        self.iss = cfg.isn if cfg.isn is not None else self.rng.getrandbits(32)
        self.irs = 0
        self.snd_una = 0
        self.snd_nxt = 0
        self.rcv_nxt = 0
        self.snd_wnd = 0xFFFF
        self.max_snd_wnd = 0xFFFF
        self._snd_wl1 = 0
        self._snd_wl2 = 0
        # negotiated
        self.adv_mss = cfg.mss
        self.peer_mss = 536
        self.mss = 536 - cfg.opt_reserve
        self.rcv_wscale = cfg.wscale if cfg.wscale is not None else _default_wscale(cfg.rcv_buf)
        self.snd_wscale = 0
        self.sack_ok = False
        self.ts_ok = False
        self.ws_ok = False
        self._ts_offset = self.rng.getrandbits(32)
        self.ts_recent = 0
        # RTT / RTO (RFC 6298)
        self.srtt: float | None = None
        self.rttvar: float | None = None
        self.min_rtt: float | None = None
        self.rto = cfg.initial_rto
        self.backoff = 0
        self._rto_timer: Timer | None = None
        self._rto_deadline = 0.0
        # congestion state
        self.cwnd = 0
        self.ssthresh = 0
        self.cwnd_limited = False
        self.in_recovery = False
        self.in_loss = False          # after an RTO, until snd_una reaches _recover
        self._recover = 0
        self._prr_delivered = 0       # RFC 6937 state while in_recovery
        self._prr_out = 0
        self._recover_fs = 1
        self.dupacks = 0
        self.sacked_out = 0
        self.lost_out = 0
        self.retrans_out = 0
        # retransmit queue and scoreboard
        self._q: list[Seg] = []
        self._head = 0
        self._lost_ptr = 0            # index: unsacked segments below it are marked lost
        self._sacked_below = 0        # sacked bytes in [head, lost_ptr)
        self._rtx_ptr = 0             # index: lost segments below it were retransmitted
        self._sack_ranges: list[list[int]] = []
        self._high_sacked = 0
        # unsent chunks: [data(memoryview), meta, offset, chunk_seq or None]
        self._unsent: deque[list[Any]] = deque()
        self.unsent_bytes = 0
        self._fin_queued = False
        self._fin_sent = False
        self._persist_timer: Timer | None = None
        self.probes = 0
        # receive side
        self._ooo: list[list[Any]] = []          # sorted [seq, end, data]
        self._ooo_bytes = 0
        self._sack_blocks: list[tuple[int, int]] = []  # most recent first
        self._dsack: tuple[int, int] | None = None       # duplicate to report once (RFC 2883)
        self._fin_rcvd_seq: int | None = None
        self._rcv_adv_right = 0
        self._rcv_wnd_adv = 0
        self.rcv_mss = 536
        self._ack_pending = 0          # 1: delayed ACK due, 2: ACK now
        # receive batching: defer_ack(sf) -> True means "the owner calls sf.flush_ack(now)
        # after its current batch of packets", so in-order data is ACKed once per batch
        self.defer_ack: Callable[["Subflow"], bool] | None = None
        self._ack_deferred = False
        self._rcv_wup = 0              # rcv_nxt when we last sent an ACK
        self._delack_timer: Timer | None = None
        self._delack_deadline = 0.0
        self._tw_timer: Timer | None = None
        self._syn_timer: Timer | None = None
        # transmit context for ack_options
        self.tx_ssn = 0
        self.tx_chunk_ssn = 0
        self.tx_meta: Any = None
        # counters
        self.bytes_sent = 0
        self.bytes_retrans = 0
        self.bytes_acked = 0
        self.bytes_received = 0
        self.retransmits = 0
        self.total_retrans = 0
        self.syn_retransmits = 0
        self.rto_count = 0
        self.recoveries = 0
        self.segs_out = 0
        self.segs_in = 0
        self.data_segs_out = 0
        self.data_segs_in = 0
        self.rcv_ooopack = 0
        self.dropped = 0
        self.last_data_sent = 0.0
        self.last_data_recv = 0.0
        self.last_ack_recv = 0.0

    # ------------------------------------------------------------------ public API

    @property
    def hooks(self) -> Any:
        return self._hooks

    @hooks.setter
    def hooks(self, h: Any) -> None:
        self._hooks = h
        self._ack_options = h.ack_options
        # optional: data_options(sf) -> bytes | None, see _burst_header; ignored when a
        # subclass overrides ack_options but inherits data_options (it would not match)
        self._data_options = getattr(h, "data_options", None) \
            if _same_owner(type(h), "data_options", "ack_options") else None
        self._on_acked = getattr(h, "on_acked", None)  # optional: (sf, acked_bytes)

    @property
    def sport(self) -> int:
        return self.local[1]

    @property
    def dport(self) -> int:
        return self.remote[1]

    @property
    def flight_size(self) -> int:
        """Bytes sent and not cumulatively acked (RFC 5681 FlightSize)."""
        return self.snd_nxt - self.snd_una

    @property
    def in_flight(self) -> int:
        """Pipe estimate (RFC 6675 §4 / Linux packets_in_flight), in bytes."""
        return self.snd_nxt - self.snd_una - self.sacked_out - self.lost_out + self.retrans_out

    @property
    def synchronized(self) -> bool:
        return self.state in _SYNCHRONIZED

    def can_carry_data(self) -> bool:
        """The state allows queuing data (established, our FIN not queued)."""
        return self.state in _CAN_SEND and not self._fin_queued

    def can_send(self) -> bool:
        """TCP level: may send data and the congestion window has room for a segment."""
        return (self.state in _CAN_SEND and not self._fin_queued
                and self.in_flight + self.unsent_bytes + self.mss <= self.cwnd)

    def connect(self, now: float) -> None:
        """Active open: send the SYN (options: MSS, SACK-permitted, timestamps, WS)."""
        if self.state is not CLOSED:
            raise RuntimeError(f"connect() in state {self.state}")
        self.state = SYN_SENT
        self.snd_una = 0
        self.snd_nxt = 1
        self._send_syn(now, ack=False)
        self._arm_syn_timer(now)

    @classmethod
    def from_syn(cls, pkt: Any, now: float, local: tuple[bytes, int], remote: tuple[bytes, int],
                 hooks: Any, timers: TimerWheel, output: Callable[[bytes], None],
                 cc: CongestionControl | None = None, config: SubflowConfig | None = None,
                 rng: random.Random | None = None, opts: TcpOptions | None = None) -> "Subflow":
        """Passive open from a parsed SYN: negotiates, calls on_syn_options, sends SYN/ACK.
        Malformed SYN options raise wire.WireError (nothing is sent)."""
        sf = cls(local, remote, hooks, timers, output, cc, config, rng)
        if opts is None:
            opts = parse_tcp_options(pkt.options)
        sf.irs = pkt.seq
        sf.rcv_nxt = 1
        sf._negotiate(opts, syn_ack=False)
        sf.hooks.on_syn_options(sf, opts)
        sf.state = SYN_RECV
        sf.snd_una = 0
        sf.snd_nxt = 1
        sf._snd_wl1 = 0
        sf.snd_wnd = pkt.window  # never scaled in a SYN (RFC 7323 §2.2)
        sf.max_snd_wnd = sf.snd_wnd
        sf._send_syn(now, ack=True)
        sf._arm_syn_timer(now)
        return sf

    def send(self, data: bytes | memoryview, meta: Any = None, now: float | None = None) -> None:
        """Queue one chunk; transmitted as far as windows allow (now: transmit at once).

        The chunk is kept by reference until acked: do not mutate it afterwards."""
        if self._fin_queued or self.state not in _CAN_QUEUE:
            raise BrokenPipeError(f"send() in state {self.state}")
        n = len(data)
        if not n:
            return
        mv = data if isinstance(data, memoryview) else memoryview(data)
        self._unsent.append([mv, meta, 0, None])
        self.unsent_bytes += n
        if now is not None:
            self.push(now)

    def close(self, now: float) -> None:
        """Half-close: FIN after everything queued (further receive continues)."""
        if self.state in (SYN_SENT, CLOSED):
            self._finish(R_CLOSED, now)
            return
        if self._fin_queued:
            return
        self._fin_queued = True
        if self.state is SYN_RECV:
            return  # FIN_WAIT1 once established
        if self.state is ESTABLISHED:
            self.state = FIN_WAIT1
        elif self.state == CLOSE_WAIT:
            self.state = LAST_ACK
        self.push(now)

    def abort(self, now: float) -> None:
        """Send RST and drop everything (on_closed reason 'aborted')."""
        if self.state is SYN_RECV or (self.state in _SYNCHRONIZED and self.state is not TIME_WAIT):
            self._emit(self.snd_nxt, 0, RST | ACK, b"", None, now, opts=b"")
        self._finish(R_ABORTED, now)

    def send_ack(self, now: float) -> None:
        """A pure ACK now (the owner uses it for signals, e.g. the MPTCP 4th ACK)."""
        if self.state in _SYNCHRONIZED or self.state == SYN_RECV:
            self._send_ack(now)

    def window_update(self, now: float) -> None:
        """The owner freed receive space: advertise it when the window at least doubled
        and grew by an MSS (receiver SWS avoidance, RFC 9293 §3.8.6.2.2, as Linux does)."""
        if self.state not in _CAN_RECV:
            return
        wnd = self._rcv_space()
        cur = self._rcv_adv_right - self.rcv_nxt
        if wnd >= 2 * cur and wnd - cur >= min(self.adv_mss, self.config.rcv_buf // 2) \
                or (self._rcv_wnd_adv == 0 and wnd >= 1 << self.rcv_wscale):
            self._send_ack(now)

    def flush_ack(self, now: float) -> None:
        """End of the owner's receive batch: send the ACK deferred by `defer_ack`."""
        if self._ack_deferred:
            self._ack_deferred = False
            if self._ack_pending and self.state in _SYNCHRONIZED:
                self._send_ack(now)

    def pending_chunks(self) -> list[tuple[Any, Any]]:
        """(meta, data) of every chunk not fully acknowledged, oldest first (re-injection)."""
        out: list[tuple[Any, Any]] = []
        last = None
        q = self._q
        for i in range(self._head, len(q)):
            s = q[i]
            if s.fin or s.chunk_seq == last:
                continue
            last = s.chunk_seq
            out.append((s.meta, s.chunk))
        for c in self._unsent:
            if c[3] is not None and c[3] == last:
                continue
            out.append((c[1], c[0]))
        return out

    # -------------------------------------------------------------------- handshake

    def _negotiate(self, o: TcpOptions, syn_ack: bool) -> None:
        cfg = self.config
        self.peer_mss = o.mss if o.mss else 536
        self.sack_ok = cfg.sack and o.sack_perm
        self.ts_ok = cfg.timestamps and o.ts is not None
        if o.wscale is not None and cfg.window_scaling:
            self.ws_ok = True
            self.snd_wscale = min(o.wscale, 14)
        else:
            self.ws_ok = False
            self.snd_wscale = 0
            self.rcv_wscale = 0
        if self.ts_ok:
            self.ts_recent = o.ts[0]
        # sending is bounded by the peer's MSS and our MTU, not by what we advertise (an
        # owner may advertise less to leave room for the peer's options)
        base = min(self.peer_mss, cfg.send_mss or cfg.mss)
        self.mss = max(64, base - (12 if self.ts_ok else 0) - cfg.opt_reserve)
        self.rcv_mss = self.mss

    def _syn_opts(self, now: float, ack: bool) -> bytes:
        cfg = self.config
        out = bytearray(struct.pack("!BBH", 2, 4, self.adv_mss))
        want_ts = cfg.timestamps if not ack else self.ts_ok
        want_sack = cfg.sack if not ack else self.sack_ok
        want_ws = cfg.window_scaling if not ack else self.ws_ok
        if want_ts:
            out += struct.pack("!BBBBII", *((4, 2) if want_sack else (1, 1)), 8, 10,
                               self._tsval(now), self.ts_recent if ack else 0)
        elif want_sack:
            out += b"\x01\x01\x04\x02"
        if want_ws:
            out += struct.pack("!BBBB", 1, 3, 3, self.rcv_wscale)
        out += self._hooks.syn_options(self)
        pad = -len(out) & 3
        if pad:
            out += b"\x01" * pad
        return bytes(out)

    def _send_syn(self, now: float, ack: bool) -> None:
        self._syn_time = now
        opts = self._syn_opts(now, ack)
        # the window in a SYN is never scaled (RFC 7323 §2.2)
        wnd = min(self._rcv_space(), 0xFFFF)
        self._rcv_wnd_adv = wnd
        self._rcv_adv_right = self.rcv_nxt + wnd
        self._rcv_wup = self.rcv_nxt
        self._raw_emit(self.iss, (self.irs + self.rcv_nxt) & _M32 if ack else 0,
                       SYN | ACK if ack else SYN, wnd, opts, b"")

    def _arm_syn_timer(self, now: float) -> None:
        self._syn_timer = self.timers.schedule(now + self.rto, self._on_syn_timer)

    def _on_syn_timer(self, now: float) -> None:
        if self.state not in (SYN_SENT, SYN_RECV):
            return
        limit = self.syn_retries_max if self.state == SYN_SENT else self.config.synack_retries
        if self.syn_retransmits >= limit:
            self._finish(R_TIMEOUT, now)
            return
        self.syn_retransmits += 1
        self.total_retrans += 1
        self.backoff += 1
        self.rto = min(self.rto * 2, self.config.max_rto)
        self._send_syn(now, ack=self.state == SYN_RECV)
        self._arm_syn_timer(now)

    def _input_syn_sent(self, pkt: Any, now: float) -> None:
        flags = pkt.flags
        if flags & ACK:
            if ((pkt.ack - self.iss) & _M32) != 1:
                if not flags & RST:
                    self._raw_emit(pkt.ack, 0, RST, 0, b"", b"")
                return
            if flags & RST:
                self._finish(R_REFUSED, now)
                return
        elif flags & RST:
            return
        if not flags & SYN:
            return
        try:
            opts = parse_tcp_options(pkt.options)
        except WireError:
            self.dropped += 1
            return
        self.irs = pkt.seq
        self.rcv_nxt = 1
        if not flags & ACK:
            return  # simultaneous open: not supported (rare; RFC 9293 allows ignoring)
        self._negotiate(opts, syn_ack=True)
        self._hooks.on_syn_options(self, opts)
        self.snd_una = 1
        self.snd_wnd = pkt.window  # SYN/ACK window is not scaled
        self.max_snd_wnd = self.snd_wnd
        self._snd_wl1 = 0
        self._snd_wl2 = 1
        self._rtt_sample(None, now, opts, syn=True)
        self._established(now)
        self._send_ack(now)
        self.push(now)

    def _established(self, now: float) -> None:
        if self._syn_timer is not None:
            self._syn_timer.cancel()
            self._syn_timer = None
        self.state = ESTABLISHED if not self._fin_queued else FIN_WAIT1
        self.backoff = 0
        if self.srtt is None:
            # RFC 6298 §5.7: 3 s once the SYN timer fired and no sample exists
            self.rto = 3.0 if self.syn_retransmits else self.config.initial_rto
        else:
            self._set_rto()
        self.cc.init(self)
        if self.syn_retransmits and self.cwnd > 0:
            # RFC 6298 §5.7 / RFC 5681: lost SYN -> initial window of one segment
            self.cwnd = self.mss
        self._hooks.on_established(self)

    # ---------------------------------------------------------------------- input

    def input(self, pkt: Any, now: float) -> None:
        """One parsed packet (wire.packet.parse_ip_packet) of this 4-tuple."""
        self.segs_in += 1
        state = self.state
        if state is SYN_SENT:
            self._input_syn_sent(pkt, now)
            return
        if state is CLOSED:
            return
        flags = pkt.flags
        try:
            opts = _fast_opts(pkt.options)
        except WireError:
            self.dropped += 1
            return
        irs = self.irs
        rcv_nxt = self.rcv_nxt
        # relative sequence number of the segment, unwrapped near rcv_nxt
        d = ((pkt.seq - irs) - rcv_nxt) & _M32
        if d >= 0x80000000:
            d -= 0x100000000
        seq = rcv_nxt + d
        payload = pkt.payload
        plen = len(payload)
        if flags & RST:
            self._input_rst(seq, now)
            return
        if flags & SYN:
            if state is SYN_RECV and not flags & ACK and seq == 0:
                self._send_syn(now, ack=True)  # retransmitted SYN
            elif state is not SYN_RECV:
                self._send_ack(now)  # RFC 5961 §4 challenge ACK (or lost final ACK)
            return
        if not flags & ACK:
            self.dropped += 1
            return
        # acceptability (RFC 9293 §3.10.7.4), lenient for the owner-managed window
        if plen:
            if seq + plen <= rcv_nxt:
                self._dsack = (seq, seq + plen)
                self._ack_now(now)  # duplicate: ACK it (the peer may have missed ours)
                payload = None
                plen = 0
            elif self._rcv_wnd_adv == 0 and seq >= rcv_nxt:
                self._ack_now(now)  # zero window: keep nothing, answer the probe
                payload = None
                plen = 0
        elif seq < rcv_nxt and not flags & FIN and state is not SYN_RECV:
            # zero-length segment below the window: a keepalive or zero-window probe
            if self._process_ack(pkt, opts, seq, 0, now):
                self._ack_now(now)
            return
        if state is SYN_RECV:
            if ((pkt.ack - self.iss) & _M32) != 1:
                self._raw_emit(pkt.ack, 0, RST, 0, b"", b"")
                return
            self.snd_una = 1
            self.snd_wnd = pkt.window << self.snd_wscale
            self.max_snd_wnd = self.snd_wnd
            self._snd_wl1 = seq
            self._snd_wl2 = 1
            self._rtt_sample(None, now, opts, syn=True)
            self._established(now)
            if self.state is CLOSED:
                return
        if not self._process_ack(pkt, opts, seq, plen, now):
            return
        if self.ts_ok and opts.ts is not None and seq <= rcv_nxt:
            self.ts_recent = opts.ts[0]
        self._hooks.on_segment(self, Segment(pkt, opts, seq - 1, flags, now))
        if self.state is CLOSED:
            return
        if plen and self.state in _CAN_RECV:
            self._rcv_data(seq, payload, plen, now)
        if flags & FIN:
            fseq = seq + len(pkt.payload)
            if self.state in _CAN_RECV and fseq >= self.rcv_nxt:
                self._fin_rcvd_seq = fseq
            elif self.state in (CLOSE_WAIT, CLOSING, LAST_ACK, TIME_WAIT):
                self._ack_now(now)  # retransmitted FIN
                if self.state is TIME_WAIT:
                    self._enter_time_wait(now)
        if self._fin_rcvd_seq is not None and self._fin_rcvd_seq == self.rcv_nxt:
            self._on_fin_in_order(now)
        if self.state is CLOSED:
            return
        if self._unsent or self.lost_out > self.retrans_out or \
                (self._fin_queued and not self._fin_sent):
            self.push(now)
        if self._ack_pending:
            self._maybe_delack(now)

    def _input_rst(self, seq: int, now: float) -> None:
        # RFC 5961 §3: exact match resets, in-window earns a challenge ACK
        if seq == self.rcv_nxt:
            self._finish(R_RESET, now)
        elif self.rcv_nxt <= seq < self._rcv_adv_right:
            self._send_ack(now)

    # ------------------------------------------------------------------ ACK processing

    # -------------------------------------------------------------------- timers

    def _arm_persist(self, now: float) -> None:
        if self._persist_timer is None:
            t = min(self.rto * (1 << min(self.probes, 10)), self.config.max_rto)
            self._persist_timer = self.timers.schedule(now + t, self._on_persist)

    def _on_persist(self, now: float) -> None:
        self._persist_timer = None
        if self.state not in _CAN_SEND and self.state not in (FIN_WAIT1, LAST_ACK, CLOSING):
            return
        if self.snd_wnd > 0 or (not self._unsent and not (self._fin_queued and not self._fin_sent)):
            return
        # zero-window probe: an old sequence number makes the peer answer with its window
        self.probes += 1
        self._emit(self.snd_una - 1, 0, ACK, b"", None, now)
        self._arm_persist(now)

    def _maybe_delack(self, now: float) -> None:
        if self._ack_pending >= 2:
            self._send_ack(now)
            return
        if not self._delack_deadline:
            self._delack_deadline = now + self.config.delack_time
        if self._delack_timer is None:
            self._delack_timer = self.timers.schedule(self._delack_deadline, self._on_delack)

    def _on_delack(self, now: float) -> None:
        self._delack_timer = None
        if not self._ack_pending or self.state is CLOSED or not self._delack_deadline:
            return
        if now < self._delack_deadline - 1e-9:
            self._delack_timer = self.timers.schedule(self._delack_deadline, self._on_delack)
            return
        self._send_ack(now)

    # -------------------------------------------------------------------- receive

    def _on_fin_in_order(self, now: float) -> None:
        self._fin_rcvd_seq = None
        self.rcv_nxt += 1
        st = self.state
        if st is ESTABLISHED:
            self.state = CLOSE_WAIT
        elif st is FIN_WAIT1:
            self.state = CLOSING
        elif st is FIN_WAIT2:
            self._enter_time_wait(now)
        self._ack_now(now)
        self._hooks.on_fin(self)

    def _on_fin_acked(self, now: float) -> None:
        st = self.state
        if st is FIN_WAIT1:
            self.state = FIN_WAIT2
            t = self.config.fin_wait2_timeout
            if t is not None:
                self._tw_timer = self.timers.schedule(now + t, self._on_fin_wait2_timeout)
        elif st is CLOSING:
            self._enter_time_wait(now)
        elif st is LAST_ACK:
            self._finish(R_CLOSED, now)

    def _enter_time_wait(self, now: float) -> None:
        self.state = TIME_WAIT
        self._cancel_timers(keep_tw=True)
        if self._tw_timer is not None:
            self._tw_timer.cancel()
        self._tw_timer = self.timers.schedule(now + self.config.time_wait, self._on_tw)

    def _on_fin_wait2_timeout(self, now: float) -> None:
        self._tw_timer = None
        if self.state is FIN_WAIT2:
            self._finish(R_TIMEOUT, now)

    def _on_tw(self, now: float) -> None:
        self._tw_timer = None
        if self.state is TIME_WAIT:
            self._finish(R_CLOSED, now)

    def _cancel_timers(self, keep_tw: bool = False) -> None:
        for name in ("_rto_timer", "_delack_timer", "_persist_timer", "_syn_timer") + \
                (() if keep_tw else ("_tw_timer",)):
            t = getattr(self, name)
            if t is not None:
                t.cancel()
                setattr(self, name, None)
        self._rto_deadline = 0.0

    def _finish(self, reason: str, now: float) -> None:
        if self.state is CLOSED and self.error is not None:
            return
        self.state = CLOSED
        self.error = reason
        self._cancel_timers()
        self.cc.release(self)
        self._hooks.on_closed(self, reason)

    # ------------------------------------------------------------------- transmit

    def push(self, now: float, force_one: bool = False) -> None:
        """Send what the windows allow: lost segments first, then new data, then FIN."""
        st = self.state
        if st not in _CAN_SEND and st not in (FIN_WAIT1, LAST_ACK, CLOSING):
            return
        q = self._q
        cwnd = self.cwnd
        mss = self.mss
        blocked = False
        burst: tuple | bool | None = None  # header parts shared by this push's segments
        while True:
            inflight = (self.snd_nxt - self.snd_una - self.sacked_out - self.lost_out
                        + self.retrans_out)
            if inflight >= cwnd and not force_one:
                blocked = True
                break
            force_one = False
            # 1. lost segments (RFC 6675 NextSeg rule 1)
            if self.lost_out > self.retrans_out:
                i = self._rtx_ptr
                n = self._lost_ptr  # every lost segment lies below it
                while i < n:
                    s = q[i]
                    if s.lost and not s.retrans:
                        break
                    i += 1
                if i < n:
                    self._rtx_ptr = i + 1
                    s = q[i]
                    s.retrans = 1
                    s.rexmit = True
                    self.retrans_out += s.end - s.seq
                    self.bytes_retrans += s.end - s.seq
                    self.total_retrans += 1
                    self._xmit(s, now)
                    continue
                self._rtx_ptr = n
            # 2. new data within the peer's window
            if self._unsent:
                c = self._unsent[0]
                mv, meta, off, cseq = c
                left = len(mv) - off
                n = left if left < mss else mss
                usable = self.snd_una + self.snd_wnd - self.snd_nxt
                if usable < n:
                    if usable <= 0 or self.snd_nxt > self.snd_una:
                        if self.snd_nxt == self.snd_una:
                            self._arm_persist(now)
                        break
                    n = usable  # nothing in flight: send what fits (avoid stalling)
                seq = self.snd_nxt
                if cseq is None:
                    cseq = c[3] = seq
                end = seq + n
                data = mv[off:off + n]
                q.append(Seg(seq, end, data, meta, off, cseq, mv, False, now))
                if off + n >= len(mv):
                    self._unsent.popleft()
                    flags = ACK | PSH
                else:
                    c[2] = off + n
                    flags = ACK
                self.unsent_bytes -= n
                self.snd_nxt = end
                self.bytes_sent += n
                self.data_segs_out += 1
                # transmit (the _xmit steps, inlined on the hot path)
                if self.in_recovery:
                    self._prr_out += n
                self.tx_ssn = seq - 1
                self.tx_chunk_ssn = cseq - 1
                self.tx_meta = meta
                self._emit(seq, n, flags, data, meta if off == 0 else None, now)
                if self._rto_timer is None:
                    self._rto_deadline = now + self.rto
                    self._rto_timer = self.timers.schedule(self._rto_deadline, self._on_rto)
                elif self._rto_deadline == 0.0:
                    self._rto_deadline = now + self.rto
                if flags == ACK and self.burst:
                    if burst is None:
                        burst = self._burst_header(now)
                    if burst:
                        self._burst(c, burst, now)
                continue
            # 3. FIN after all data
            if self._fin_queued and not self._fin_sent:
                seq = self.snd_nxt
                s = Seg(seq, seq + 1, b"", None, 0, seq, b"", fin=True)
                self._fin_sent = True
                self.snd_nxt = seq + 1
                q.append(s)
                self._xmit(s, now)
            break
        self.cwnd_limited = blocked or (self.cwnd < self.ssthresh and
                                        self.in_flight * 2 >= self.cwnd)

    def _burst_header(self, now: float) -> tuple | bool:
        """(options, window field, ack32, builder) shared by the data segments of this
        push that start no chunk, or False when they cannot share them (the owner makes no
        promise, a D-SACK is pending, a replaced `build`). Computed once per push, as
        _emit would for each: nothing the header depends on (rcv_nxt, ts_recent, SACK
        blocks, the owner's window and data ACK) changes while a push runs."""
        fn = self._data_options
        if fn is None or self._dsack is not None or self.build is not build_tcp_packet:
            return False
        extra = fn(self)
        if extra is None:
            return False
        opts = self._options(now, extra)
        field = self._window_field()
        if field << self.rcv_wscale != self._rcv_wnd_adv:
            return False  # differs from what the last segment said: per-segment path
        return (opts, field, (self.irs + self.rcv_nxt) & _M32, self._template())

    def _burst(self, c: list, hdr: tuple, now: float) -> None:
        """TSO-like: the rest of chunk `c` (the push just sent a segment of it) in one loop,
        as far as cwnd and the peer's window allow, the header parts shared (`hdr`). Same
        segments, bytes and bookkeeping as the per-segment path of push."""
        mv, meta, off, cseq = c
        clen = len(mv)
        mss = self.mss
        cwnd = self.cwnd
        seq = self.snd_nxt
        inflight = seq - self.snd_una - self.sacked_out - self.lost_out + self.retrans_out
        wnd_end = self.snd_una + self.snd_wnd
        opts, field, ack32, tb = hdr
        build = tb.build
        out = self.output
        csum = self.tx_csum
        iss = self.iss
        append = self._q.append
        sent = 0
        segs = 0
        last = seq
        try:
            while inflight < cwnd and off < clen:
                n = clen - off
                if n > mss:
                    n = mss
                if wnd_end - seq < n:
                    break  # something is in flight (this push sent it): wait for the window
                data = mv[off:off + n]
                last = seq
                seq += n
                off += n
                append(Seg(last, seq, data, meta, off - n, cseq, mv, False, now))
                sent += n
                segs += 1
                inflight += n
                # (queued and counted first: if output raises, the state stays consistent)
                out(build((iss + last) & _M32, ack32, ACK | PSH if off >= clen else ACK,
                          field, opts, data, csum))
        finally:
            if segs:
                self._burst_done(c, off, clen, sent, segs, last, seq)

    def _burst_done(self, c: list, off: int, clen: int, sent: int, segs: int, last: int,
                    seq: int) -> None:
        """The bookkeeping of _burst's segments, once (what push does per segment)."""
        if off >= clen:
            self._unsent.popleft()
        else:
            c[2] = off
        if self.in_recovery:
            self._prr_out += sent
        self.unsent_bytes -= sent
        self.bytes_sent += sent
        self.data_segs_out += segs
        self.segs_out += segs
        self.tx_ssn = last - 1  # the last segment built, as the per-segment path leaves it
        self.snd_nxt = seq

    def _xmit(self, s: Seg, now: float) -> None:
        """(Re)transmit one queued segment."""
        s.tx_time = now
        if self.in_recovery:
            self._prr_out += s.end - s.seq
        data = s.data
        flags = ACK | FIN if s.fin else ACK
        if data and s.off + len(data) >= len(s.chunk):
            flags |= PSH
        self.tx_ssn = s.seq - 1
        self.tx_chunk_ssn = s.chunk_seq - 1
        self.tx_meta = s.meta
        self._emit(s.seq, len(data), flags, data, s.meta if s.off == 0 else None, now)
        if self._rto_timer is None:
            self._rto_deadline = now + self.rto
            self._rto_timer = self.timers.schedule(self._rto_deadline, self._on_rto)
        elif self._rto_deadline == 0.0:
            self._rto_deadline = now + self.rto

    def _send_ack(self, now: float) -> None:
        self.tx_ssn = self.snd_nxt - 1
        self.tx_meta = None
        self._emit(self.snd_nxt, 0, ACK, b"", None, now)

    def _ack_now(self, now: float) -> None:
        self._send_ack(now)

    def _tsval(self, now: float) -> int:
        return (int(now * 1000) + self._ts_offset) & _M32

    def _emit(self, seq: int, length: int, flags: int, payload: Any, meta: Any, now: float,
              opts: bytes | None = None) -> None:
        """Build one segment (options, window, checksums) and hand it to output."""
        if opts is None:
            opts = self._options(now, self._ack_options(self, meta, length, flags))
        rcv_nxt = self.rcv_nxt
        field = self._window_field()
        ws = self.rcv_wscale
        adv = field << ws
        self._rcv_wnd_adv = adv
        if self.rcv_window_fn is not None or rcv_nxt + adv > self._rcv_adv_right:
            self._rcv_adv_right = rcv_nxt + adv
        if flags & ACK:
            self._ack_pending = 0
            self._delack_deadline = 0.0
            self._rcv_wup = rcv_nxt
        if length:
            self.last_data_sent = now
        self.segs_out += 1
        if self.build is build_tcp_packet:
            tb = self._template()
            self.output(tb.build((self.iss + seq) & _M32, (self.irs + rcv_nxt) & _M32, flags,
                                 field, opts, payload, self.tx_csum))
            return
        local = self.local
        remote = self.remote
        self.output(self.build(local[0], remote[0], local[1], remote[1], (self.iss + seq) & _M32,
                               (self.irs + rcv_nxt) & _M32, flags, field, opts, payload,
                               self.tos, self._ttl, self.tx_csum))

    def _options(self, now: float, extra: bytes | None) -> bytes:
        """Timestamps, the owner's `extra`, then SACK blocks as room allows (a pending
        D-SACK first and consumed, RFC 2883: it lets the sender undo), padded to 4 bytes."""
        if self.ts_ok:
            opts = _pack_ts(_TS_FAST, (int(now * 1000) + self._ts_offset) & _M32, self.ts_recent)
        else:
            opts = b""
        if extra:
            opts += extra
        if (self._sack_blocks or self._dsack) and self.sack_ok:
            room = (36 - len(opts)) // 8
            if room > 0:
                blocks = self._sack_blocks
                if self._dsack is not None:
                    blocks = [self._dsack] + blocks
                    self._dsack = None
                blocks = blocks[:room]
                base = self.irs
                opts += bytes((1, 1, 5, 2 + 8 * len(blocks))) + b"".join(
                    _pack_II((base + a) & _M32, (base + b) & _M32) for a, b in blocks)
        pad = -len(opts) & 3
        if pad:
            opts += b"\x01" * pad
        return opts

    def _window_field(self) -> int:
        """The window field to send now (no side effects; _emit records what it sent)."""
        fn = self.rcv_window_fn
        if fn is not None:
            wnd = fn()
            if wnd < 0:
                wnd = 0
        else:
            wnd = self.config.rcv_buf - self._ooo_bytes
            if self.rcv_nxt + wnd < self._rcv_adv_right:
                wnd = self._rcv_adv_right - self.rcv_nxt  # never shrink the window (RFC 7323 §2.4)
        field = wnd >> self.rcv_wscale
        return 0xFFFF if field > 0xFFFF else field

    def _template(self) -> TcpBuilder:
        """The header template of this 4-tuple, remade when tos/ttl changed."""
        tb = self._tb
        if tb is None or tb.tos != self.tos or tb.ttl != self._ttl:
            tb = self._builder()
        return tb

    def _builder(self) -> TcpBuilder:
        """The header template of this 4-tuple (remade when tos/ttl change)."""
        self._tb = tb = TcpBuilder(self.local[0], self.remote[0], self.local[1], self.remote[1],
                                   self.tos, self._ttl)
        return tb

    def _raw_emit(self, seq32: int, ack32: int, flags: int, window: int, opts: bytes,
                  payload: Any) -> None:
        """A segment outside the window machinery (SYN, SYN/ACK, RST to a bad ACK)."""
        self.segs_out += 1
        if self.build is build_tcp_packet:
            tb = self._template()
            self.output(tb.build(seq32, ack32, flags, window, opts, payload, self.tx_csum))
            return
        self.output(self.build(self.local[0], self.remote[0], self.local[1], self.remote[1],
                               seq32, ack32, flags, window, opts, payload, self.tos, self._ttl,
                               self.tx_csum))

    # ---------------------------------------------------------------- inspection

    def __repr__(self) -> str:
        return (f"<Subflow {self.local[1]}->{self.remote[1]} {self.state} una={self.snd_una} "
                f"nxt={self.snd_nxt} rcv={self.rcv_nxt} cwnd={self.cwnd}>")
