"""One MPTCP connection: subflow lifecycle, option dispatch, path-manager actions,
connection state and inspection. Handshakes, sending, receiving and signals live in
their own modules as mixins (handshake.py, send.py, recv.py, signals.py).
"""

from __future__ import annotations

import collections
import errno
import ipaddress
from typing import Any, Callable, Optional

from mptcp_bpf.tcp.congestion import CcGroup
from mptcp_bpf.tcp.subflow import Subflow, SubflowConfig
from mptcp_bpf.wire import WireError
from mptcp_bpf.wire.mptcp import (AddAddr, MpCapable, MpFail, MpFastclose, MpJoinAck, MpPrio,
                                  MpTcpRst, RemoveAddr, emit, parse_mptcp)

from . import api
from .builtin import make_cc, make_path_manager, make_scheduler
from .handshake import HandshakeMixin
from .options import pad4
from .recv import RecvMixin
from .send import SendMixin
from .signals import RST_ADMIN, RST_UNSPEC, SignalsMixin
from .subflow import SF_CLOSED, SF_ESTABLISHED, MpSubflow

_unpack_q = int.from_bytes
PM_TICK = 1.0          # seconds between path-manager on_timer calls
DSS_OPT_RESERVE = 28   # MSS bytes kept for the DSS option (8-byte ack + 8-byte DSN + csum)

_SUBOPT_HANDLERS = {
    AddAddr: "_rx_add_addr", RemoveAddr: "_rx_remove_addr", MpPrio: "_rx_prio",
    MpFastclose: "_rx_fastclose", MpTcpRst: "_rx_tcprst", MpFail: "_rx_fail",
    MpCapable: "_rx_mpc", MpJoinAck: "_rx_join_ack",
}


class Connection(HandshakeMixin, SendMixin, RecvMixin, SignalsMixin):
    """An MPTCP connection (api.ConnectionApi); created by Host.connect or a listener."""

    def __init__(self, host: Any, role: str, version: int, checksum: bool,
                 local: tuple[bytes, int], remote: tuple[bytes, int], options: dict | None = None) -> None:
        o = dict(options or {})
        cfg = host.config
        self.host = host
        self.role = role
        self.version = version
        self.csum = checksum
        self.local_key, self.token, self.local_idsn = host._new_key(version)
        self.remote_key: Optional[int] = None
        self.remote_token = 0
        self.remote_idsn = 0
        self._rx_base_known = False
        self.local_ip = ipaddress.ip_address(local[0])
        self.local_port = local[1]
        self.remote_port = remote[1]
        self.remote_addresses: list[api.RemoteAddr] = [
            api.RemoteAddr(0, ipaddress.ip_address(remote[0]), remote[1])]
        self.subflows: list[MpSubflow] = []
        self.past_subflows: list[dict] = []   # info() of closed subflows (inspection)
        self._next_sf_id = 0
        self.fallback = False
        self.fallback_reason: Optional[str] = None
        self.mpc_ack_pending = False
        self.fully_established = False
        self.no_initial_join = False
        self._mpc_retries = 0
        self._join_retries = 0
        # plug-ins
        self.path_manager = o.get("path_manager") or cfg.path_manager
        self.scheduler = o.get("scheduler") or cfg.scheduler
        self.cc = o.get("cc") or cfg.cc
        self.pm = make_path_manager(self.path_manager)
        self.sched = make_scheduler(self.scheduler)
        self.cc_group = CcGroup()
        # send side (relative DSNs: 1 = first byte)
        self._sndbuf = bytearray()
        self.sndbuf_limit = int(o.get("sndbuf", cfg.sndbuf))
        self.snd_una = 1
        self.snd_nxt = 1
        self.snd_wnd_edge = 1 + 65535
        self._reinject: collections.deque = collections.deque()
        self._has_copies = False      # some subflow holds redundant copies (send.py)
        self._shut_wr = False
        self._fin_sent = False
        self._fin_rel = 0
        self._fin_acked = False
        self._dtimer: Any = None
        self._last_progress = host.now
        self._data_backoff = 0
        self._pushing = False
        self.chunk_segments = int(o.get("chunk_segments", cfg.chunk_segments))
        self.option_budget = 28
        # receive side
        self.rcvbuf_limit = int(o.get("rcvbuf", cfg.rcvbuf))
        self.rcv_nxt = 1
        self._rcvq: collections.deque = collections.deque()
        self._rcv_queued = 0
        self._ooo: dict[int, bytes] = {}
        self._ooo_keys: list[int] = []
        self._ooo_bytes = 0
        self._peer_fin_rel: Optional[int] = None
        self._peer_fin_done = False
        self.eof = False
        # signals
        self._announced: dict[int, tuple] = {}
        self._add_addr_pending: dict[int, list] = {}
        self._add_addr_queue: list[tuple] = []   # (id, address, port) waiting their turn
        # state
        self.state = api.SYN_SENT if role == api.CLIENT else api.SYN_RCVD
        self.connected = False
        self.error: Optional[int] = None
        self.error_text: Optional[str] = None
        self.closed = False
        self._user_closed = False
        self._accepted = False
        self.listener: Any = None
        self.created_at = host.now
        self.on_readable: Optional[Callable[[], None]] = None
        self.on_writable: Optional[Callable[[], None]] = None
        self.on_state: Optional[Callable[[str], None]] = None
        self.sf_options: dict[str, Any] = dict(o.get("subflow", {}))

    # ------------------------------------------------------------ helpers
    def schedule(self, deadline: float, cb: Callable[[float], None]) -> Any:
        """TimerWheel-like entry for the subflows: keeps host.now current and pushes after."""
        def fire(now: float) -> None:
            self.host.now = now
            cb(now)
            if not self.closed:
                self._push(now)
        return self.host.timers.schedule(deadline, fire)

    def _timer(self, deadline: float, cb: Callable[[float], None]) -> Any:
        def fire(now: float) -> None:
            self.host.now = now
            if not self.closed:
                cb(now)
                self.host._after_event(self, now)
        return self.host.timers.schedule(deadline, fire)

    def _event(self, kind: str, **fields: Any) -> None:
        self.host._emit_event(self, kind, fields)

    def _pm_call(self, name: str, *args: Any) -> None:
        fn = getattr(self.pm, name, None)
        if fn is not None and not self.closed:
            fn(self, *args)

    def local_addresses(self) -> list[api.LocalAddr]:
        out = [api.LocalAddr(0, self.local_ip)]
        for la in self.host.addresses:
            if la.address != self.local_ip:
                out.append(la)
        return out

    def has_subflow(self, laddr: Any, raddr: Any, rport: int) -> bool:
        for s in self.subflows + self.host._pending_joins_of(self):
            if s.local_addr == laddr and s.remote_addr == raddr and s.remote[1] == rport:
                return True
        return False

    def subflow_by_id(self, sf_id: int) -> Optional[MpSubflow]:
        for s in self.subflows:
            if s.id == sf_id:
                return s
        return None

    def _local_id_of(self, addr: Any) -> int:
        if addr == self.local_ip:
            return 0
        for la in self.host.addresses:
            if la.address == addr:
                return la.id
        return 0

    # ------------------------------------------------------------ subflow creation
    def _make_tcp_config(self, family: int) -> SubflowConfig:
        cfg = SubflowConfig(**self.host.config.tcp)
        if family == 6 and "mss" not in self.host.config.tcp:
            cfg.mss = 1440
        if self.csum and self.version == 1 and "mss" not in self.host.config.tcp:
            # a kernel peer that falls back after MP_FAIL (8684 §3.7) stops reserving option
            # space in its MSS but still puts the infinite mapping (DSS + checksum, 28 bytes)
            # on a full-size segment: it exceeds the MTU, is never sent and the connection
            # stalls. Advertising 28 bytes less leaves room for it (checksum connections only).
            # Our own segments stay full size (2% more payload per packet).
            cfg.send_mss = cfg.send_mss or cfg.mss
            cfg.mss -= DSS_OPT_RESERVE
        cfg.rcv_buf = self.rcvbuf_limit
        if not self.fallback:
            cfg.opt_reserve = DSS_OPT_RESERVE
        if self.role == api.CLIENT:
            cfg.syn_retries = max(cfg.syn_retries, self.host.config.syn_retries + 2)
        for k, v in self.sf_options.items():
            setattr(cfg, k, v)
        return cfg

    def _new_msf(self, local: tuple[bytes, int], remote: tuple[bytes, int], join: bool,
                 active: bool, local_id: int, remote_id: int, backup: bool) -> MpSubflow:
        msf = MpSubflow(self, local, remote, self._next_sf_id, local_id, remote_id, join, backup)
        self._next_sf_id += 1
        msf.active = active
        return msf

    def _attach_tcp(self, msf: MpSubflow, tcp: Subflow) -> None:
        msf.tcp = tcp
        tcp.rcv_window_fn = self._rcv_space
        tcp.defer_ack = self.host._defer   # ACK once per receive batch (Host.input_batch)
        self.host._register_sf(msf)

    def start(self, now: float) -> None:
        """Client: send the initial SYN."""
        local = (self.local_ip.packed, self.local_port)
        remote = (self.remote_addresses[0].address.packed, self.remote_port)
        msf = self._new_msf(local, remote, False, True, 0, 0, False)
        fam = 4 if len(local[0]) == 4 else 6
        cc = make_cc(self.cc, self.cc_group)
        tcp = Subflow(local, remote, msf, self, self.host._out, cc,
                      self._make_tcp_config(fam), self.host.rng)
        self.subflows.append(msf)
        self._attach_tcp(msf, tcp)
        self._event("created")
        tcp.connect(now)

    def open_subflow(self, local_addr: Any, remote_addr: Any, remote_port: int,
                     local_port: int = 0, backup: bool = False) -> Optional[MpSubflow]:
        """Start an MP_JOIN subflow (8684 §3.2); None when not possible now."""
        if (self.closed or self.fallback or not self.fully_established or self.remote_key is None
                or self._shut_wr and self._fin_acked):
            return None
        if len(self.subflows) + len(self.host._pending_joins_of(self)) >= api.MAX_SUBFLOWS:
            self.host.count("join_limit")
            return None
        raddr = ipaddress.ip_address(remote_addr)
        if local_addr is None:
            laddr = self.host.source_for(raddr)
            if laddr is None:
                return None
        else:
            laddr = ipaddress.ip_address(local_addr)
        if laddr.version != raddr.version:
            return None
        if (self.no_initial_join and raddr == self.remote_addresses[0].address
                and remote_port == self.remote_port):
            return None  # the server asked not to be joined on its initial address
        fam = laddr.version
        lport = local_port or self.host.alloc_port(fam)
        local = (laddr.packed, lport)
        remote = (raddr.packed, remote_port)
        if self.host._sf_by_key(local + remote) is not None:
            return None
        rid = 0
        for ra in self.remote_addresses:
            if ra.address == raddr and ra.port == remote_port:
                rid = ra.id
        msf = self._new_msf(local, remote, True, True, self._local_id_of(laddr), rid, backup)
        msf.nonce_local = self.host.rng.getrandbits(32)
        cc = make_cc(self.cc, self.cc_group)
        tcp = Subflow(local, remote, msf, self, self.host._out, cc,
                      self._make_tcp_config(fam), self.host.rng)
        self.subflows.append(msf)
        self._attach_tcp(msf, tcp)
        self.host.count("join_tx")
        tcp.connect(self.host.now)
        return msf

    def close_subflow(self, sf_id: int) -> bool:
        """Enhanced API: re-inject the subflow's data on the others, then close it."""
        msf = self.subflow_by_id(sf_id)
        if msf is None:
            return False
        self._close_sf(msf, reinject=True, reset=False)
        self._push(self.host.now)
        return True

    def _close_sf(self, msf: MpSubflow, reinject: bool, reset: bool,
                  rst_opts: Optional[bytes] = None) -> None:
        if reinject:
            self._reinject_from(msf)
        if msf.mp_state == SF_CLOSED:
            return
        msf.mp_state = SF_CLOSED
        t = msf.tcp
        now = self.host.now
        if t is None:
            return
        if reset:
            if rst_opts is None:
                rst_opts = pad4(emit(MpTcpRst(RST_ADMIN)))
            self._abort_tcp(t, rst_opts)
        else:
            t.close(now)

    def _abort_tcp(self, t: Subflow, opts: bytes) -> None:
        """RST carrying MPTCP options (MP_TCPRST, MP_FASTCLOSE, MP_FAIL), then forget it."""
        now = self.host.now
        opts = pad4(opts)[:40] if opts else b""
        try:
            t.abort(now, options=opts)
            return
        except TypeError:
            pass  # an endpoint without abort(options=): send the RST ourselves
        if opts and t.state not in ("CLOSED", "SYN_SENT", "TIME_WAIT"):
            t._emit(t.snd_nxt, 0, 0x14, b"", None, now, opts=opts)
            t._finish("aborted", now)
        else:
            t.abort(now)

    def _reset_subflow(self, msf: MpSubflow, why: str, reason: int = RST_UNSPEC) -> None:
        msf.error = why
        self._close_sf(msf, reinject=True, reset=True, rst_opts=pad4(emit(MpTcpRst(reason))))

    # ------------------------------------------------------------ hooks from subflows
    def _on_sf_tcp_established(self, msf: MpSubflow) -> None:
        if msf.join:
            if msf.active:
                self._arm_handshake_timer(msf)
            else:
                self._maybe_join_established(msf)
            return
        # initial subflow
        msf.mp_state = SF_ESTABLISHED
        self.connected = True
        if self.role == api.CLIENT and not self.fallback:
            # fully established (joins allowed) once the server's DSS shows it got our keys
            self._arm_handshake_timer(msf)
        self._conn_established()

    def _conn_established(self) -> None:
        # _state_changed moves SYN_SENT/SYN_RCVD to ESTABLISHED (self.connected is set) and
        # tells the socket (on_state); setting the state here first hid the change from it,
        # and a blocking connect() woke only at its 1 s poll
        self._event("established")
        self._state_changed()
        if self.role == api.SERVER:
            self.host._accept_ready(self)
        if self.fully_established:
            self._pm_call("on_established")
        self._push(self.host.now)

    def _fully_established(self, msf: MpSubflow) -> None:
        if self.fully_established:
            return
        self.fully_established = True
        self._pm_call("on_established")
        self._timer(self.host.now + PM_TICK, self._pm_tick)

    def _pm_tick(self, now: float) -> None:
        """api.PathManagerOps.on_timer, about once a second while the connection lives."""
        if self.closed or self.fallback:
            return
        self._pm_call("on_timer", now)
        self._timer(now + PM_TICK, self._pm_tick)

    def _sf_ready(self, msf: MpSubflow) -> None:
        self._event("sf_established", sf=msf)
        self._pm_call("on_sf_established", msf)
        self._push(self.host.now)

    def _on_segment(self, msf: MpSubflow, seg: Any) -> None:
        if msf.pf and msf.tcp.retransmits == 0:
            # the subflow's TCP made progress since its RTO (a new ACK resets the count):
            # usable again, as the kernel's stale flag clears on any receive. Waiting for a
            # data ACK instead left it idle for good once its data was re-injected elsewhere.
            msf.pf = False
            self.host.count("pf_recovered")  # the host pushes after this input
        opts = seg.opts.mptcp
        if msf.join and msf.active and msf.join_ack_pending:
            # the peer acknowledged our third ACK (8684 §3.2): the subflow may carry data
            msf.join_ack_pending = False
            msf.mp_state = SF_ESTABLISHED
            self.host.count("join_established")
            self._sf_ready(msf)
        if not opts:
            if self.mpc_ack_pending and not msf.join and msf.tcp.snd_una > 1:
                # 8684 §3.7: our data was acked without any DSS: the options are being
                # stripped on the path (or the peer is not doing MPTCP after all)
                self.host.count("fallback_no_dss_ack")
                self._do_fallback("data acked without DSS")
            return
        ack = None
        for o in opts:
            st = o[2] >> 4 if len(o) > 2 else -1
            if st == 2:
                ack = self._rx_dss_fast(msf, o, seg)
                continue
            try:
                sub = parse_mptcp(o, syn=False, ack=True)
            except WireError:
                self.host.count("rx_malformed")
                continue
            h = _SUBOPT_HANDLERS.get(type(sub))
            if h is not None:
                getattr(self, h)(msf, sub)
        if ack is not None:
            self._rx_data_ack(msf, ack[0], ack[1], seg.pkt.window << msf.tcp.snd_wscale)

    def _rx_dss_fast(self, msf: MpSubflow, o: bytes, seg: Any) -> Optional[tuple[int, bool]]:
        """DSS without the generic parser (hot path): returns (data_ack, is_64bit) or None."""
        n = len(o)
        if n < 4:
            self.host.count("rx_malformed")
            return None
        f = o[3]
        i = 4
        ack = None
        if f & 0x01:
            if f & 0x02:
                if n < 12:
                    self.host.count("rx_malformed")
                    return None
                ack = (_unpack_q(o[4:12], "big"), True)
                i = 12
            else:
                if n < 8:
                    self.host.count("rx_malformed")
                    return None
                ack = (_unpack_q(o[4:8], "big"), False)
                i = 8
        msf.dss_seen = True
        if self.mpc_ack_pending and not msf.join:
            self.mpc_ack_pending = False  # 8684 §3.1: the peer's DSS ends the 4th-ACK rule
            self._fully_established(msf)
        if f & 0x04:
            dl = 8 if f & 0x08 else 4
            if n not in (i + dl + 6, i + dl + 8):
                self.host.count("rx_malformed")
                return ack
            dsn = _unpack_q(o[i:i + dl], "big")
            i += dl
            ssn = _unpack_q(o[i:i + 4], "big")
            length = o[i + 4] << 8 | o[i + 5]
            csum = (o[i + 6] << 8 | o[i + 7]) if n == i + 8 else None
            if self.csum and csum is None and length and not (f & 0x10 and ssn == 0):
                self.host.count("rx_csum_missing")
                self._reset_subflow(msf, "DSS without the negotiated checksum", 1)
                return None
            if not self.csum:
                csum = None
            if dl == 4:
                dsn = self._expand_dsn32(dsn)
            if self.remote_key is None and self.role == api.SERVER and self.version == 1:
                self.host.count("rx_dss_before_keys")
                return ack
            self._rx_add_map(msf, dsn, ssn, length, csum, bool(f & 0x10))
        return ack

    def _expand_dsn32(self, dsn32: int) -> int:
        base = (self.remote_idsn + self.rcv_nxt) & ((1 << 64) - 1)
        v = (base & ~0xFFFFFFFF) | dsn32
        d = (v - base) & ((1 << 64) - 1)
        if d >= 1 << 63:
            d -= 1 << 64
        if d < -(1 << 31):
            v += 1 << 32
        elif d > (1 << 31):
            v -= 1 << 32
        return v & ((1 << 64) - 1)

    def _on_rst_options(self, msf: MpSubflow, raw: bytes) -> None:
        """Options on a RST (MP_FASTCLOSE, MP_TCPRST, MP_FAIL): the TCP endpoint drops them."""
        from .options import mptcp_options
        for o in mptcp_options(raw):
            try:
                sub = parse_mptcp(o, syn=False, ack=True)
            except WireError:
                self.host.count("rx_malformed")
                continue
            if isinstance(sub, MpFastclose):
                self._rx_fastclose(msf, sub)
            elif isinstance(sub, MpTcpRst):
                self._rx_tcprst(msf, sub)
            elif isinstance(sub, MpFail):
                self.host.count("mp_fail_rx")

    def _on_sf_fin(self, msf: MpSubflow) -> None:
        now = self.host.now
        if msf.infinite is not None:
            self._do_fallback("infinite mapping")  # 8684 §3.7: the subflow FIN ends the data
        if self.fallback:
            self._peer_fin_done = True
            if not self._rcvq:
                self.eof = True
            self._state_changed()
            if self.on_readable is not None:
                self.on_readable()
            return
        # a subflow FIN is not a DATA_FIN: close our half of that subflow too
        if msf.tcp is not None and msf.tcp.state == "CLOSE_WAIT":
            if len(self.subflows) > 1 or (self._fin_acked and self._peer_fin_done):
                self._reinject_from(msf)
                msf.mp_state = SF_CLOSED
                msf.tcp.close(now)

    def _on_sf_closed(self, msf: MpSubflow, reason: Any) -> None:
        now = self.host.now
        was_established = msf.mp_state != SF_CLOSED and msf.tcp_established
        msf.mp_state = SF_CLOSED
        if msf.error is None and reason not in (None, "closed"):
            msf.error = str(reason)
        self.host._unregister_sf(msf)
        if msf not in self.subflows:
            return  # a pending join that never made it
        self.subflows.remove(msf)
        if len(self.past_subflows) < 64:
            self.past_subflows.append(msf.info())
        self._reinject_from(msf)
        self._event("sf_closed", sf=msf, error=reason if reason != "closed" else None)
        if not self.closed:
            self._pm_call("on_subflow_closed", msf, None if reason == "closed" else str(reason))
        if not self.subflows:
            if self.closed:
                self.host._conn_gone(self)
                return
            done = (self._fin_acked or not self._sndbuf and self.fallback) and self._peer_fin_done
            if done or (self.fallback and self._peer_fin_done and self._fin_sent):
                self._finish()
            elif not self.connected:
                self._fail(errno.ECONNREFUSED if reason == "refused" else errno.ETIMEDOUT,
                           f"initial subflow {reason}")
            else:
                self._fail(errno.ETIMEDOUT if reason == "timeout" else errno.ECONNRESET,
                           f"last subflow {reason}")
        elif was_established:
            self._push(now)

    # ------------------------------------------------------------ connection state
    def _state_changed(self) -> None:
        old = self.state
        if self.error is not None or self.closed and self.state != api.TIME_WAIT:
            new = api.CLOSED
        elif not self.connected:
            new = old
        else:
            ours = self._shut_wr
            theirs = self._peer_fin_done
            if ours and theirs:
                new = api.TIME_WAIT if (self._fin_acked or self.fallback) else api.CLOSING
            elif ours:
                new = api.FIN_WAIT
            elif theirs:
                new = api.CLOSE_WAIT
            else:
                new = api.ESTABLISHED
        self.state = new
        if new != old:
            if self.on_state is not None:
                self.on_state(new)
        if new == api.TIME_WAIT or (self.fallback and self._peer_fin_done and self._fin_sent):
            self._wind_down()
        if self.on_readable is not None and (self.eof or self.error is not None):
            self.on_readable()
        if self.on_writable is not None and self.error is not None:
            self.on_writable()

    def _on_our_fin_acked(self) -> None:
        self._state_changed()

    def _wind_down(self) -> None:
        """Both DATA_FINs done: close every subflow (TCP FIN)."""
        now = self.host.now
        for s in list(self.subflows):
            if s.tcp is not None and s.tcp.state in ("ESTABLISHED", "CLOSE_WAIT", "SYN_RECV"):
                s.mp_state = SF_CLOSED
                s.tcp.close(now)

    def _finish(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.state = api.CLOSED
        self._event("closed")
        if self.on_state is not None:
            self.on_state(api.CLOSED)
        self.host._conn_gone(self)

    def _fail(self, err: int, why: str) -> None:
        if self.closed:
            return
        self.error = err
        self.error_text = why
        self.closed = True
        self.state = api.CLOSED
        self._event("closed", error=why)
        for s in list(self.subflows):
            if s.tcp is not None and s.tcp.state != "CLOSED":
                self._abort_tcp(s.tcp, b"")
        if self.on_state is not None:
            self.on_state(api.CLOSED)
        if self.on_readable is not None:
            self.on_readable()
        if self.on_writable is not None:
            self.on_writable()
        self.host._conn_gone(self)

    def close(self, now: float | None = None) -> None:
        """Release: DATA_FIN after the queued data; unread received data means abort."""
        self._user_closed = True
        if self.closed:
            return
        if self._rcvq and not self.fallback:
            self.abort(now)
            return
        if not self.connected:
            self._fail(errno.ECONNABORTED, "closed before established")
            return
        self.shutdown(now)

    # ------------------------------------------------------------ inspection
    def info(self) -> dict[str, Any]:
        return {
            "token": f"{self.token:08x}", "remote_token": f"{self.remote_token:08x}",
            "local_key": f"{self.local_key:016x}",
            "remote_key": None if self.remote_key is None else f"{self.remote_key:016x}",
            "version": self.version, "csum": self.csum, "role": self.role,
            "state": self.state, "fallback": self.fallback, "fallback_reason": self.fallback_reason,
            "error": self.error_text,
            "local": f"{self.local_ip}:{self.local_port}",
            "remote": f"{self.remote_addresses[0].address}:{self.remote_port}" if self.remote_addresses else None,
            "path_manager": self.path_manager, "scheduler": self.scheduler, "cc": self.cc,
            "snd_una": self.snd_una, "snd_nxt": self.snd_nxt, "rcv_nxt": self.rcv_nxt,
            "sndbuf": len(self._sndbuf), "rcvq": self._rcv_queued, "ooo": self._ooo_bytes,
            "remote_addresses": [{"id": r.id, "addr": str(r.address), "port": r.port}
                                 for r in self.remote_addresses],
            "subflows": [s.info() for s in self.subflows],
        }

    def __repr__(self) -> str:
        return (f"<Connection {self.role} token={self.token:08x} {self.state} "
                f"subflows={len(self.subflows)} v{self.version}{' csum' if self.csum else ''}"
                f"{' fallback' if self.fallback else ''}>")


__all__ = ["Connection"]
