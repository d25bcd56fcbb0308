"""The MPTCP host of one stack: demultiplexing, tokens, listeners, local addresses.

`Host.input(packet, now, meta)` takes whole IP packets; segments go to their subflow by
4-tuple, SYNs to listeners (MP_CAPABLE or plain TCP) or, with MP_JOIN, to the connection
owning the token (8684 §3.2: unknown token -> RST and nothing created; the HMAC of the
third ACK is checked before the subflow joins the connection). Anything else gets a RST.
The owner sets `output` (IP packets out), may set `alloc_port`, `source_for`, the
fast-path callbacks (`on_subflow_add`, `on_subflow_remove`, `on_listen`) and `on_event`
(monitor events named like `ip mptcp monitor`'s).
"""

from __future__ import annotations

import collections
import errno
import ipaddress
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from mptcp_bpf.datapath.structs import META_SIZE, MPB_F_SUM_VALID, MPB_META_MAGIC, MpbMeta
from mptcp_bpf.timers import TimerWheel
from mptcp_bpf.tcp.subflow import Subflow
from mptcp_bpf.wire import WireError
from mptcp_bpf.wire.checksum import csum_partial
from mptcp_bpf.wire.crypto import key_token_idsn
from mptcp_bpf.wire.gro import coalesce, thin_acks
from mptcp_bpf.wire.mptcp import MpCapable, MpJoinSyn, parse_mptcp
from mptcp_bpf.wire.packet import build_tcp_packet, parse_ip_packet
from mptcp_bpf.wire.tcp import parse_tcp_options

from . import api
from .builtin import make_cc
from .connection import Connection
from .subflow import SF_CONNECTING, MpSubflow

_SYN, _RST, _ACK, _FIN = 0x02, 0x04, 0x10, 0x01
EPHEMERAL_LOW, EPHEMERAL_HIGH = 61000, 64999   # above Linux's default ip_local_port_range


_META_MAGIC = MPB_META_MAGIC.to_bytes(2, "little")
_META_FLAGS = MpbMeta.flags.offset
_META_CSUM = MpbMeta.csum.offset
_META_PLEN = MpbMeta.payload_len.offset


def fast_path_sum(meta: Any, length: int) -> Optional[int]:
    """The payload's ones'-complement sum the fast path computed, if `meta` carries one:
    an object with `payload_sum`, or the raw struct mpb_meta bytes an XDP port hands over
    (host byte order; the sum is in the same form as wire.checksum.csum_partial)."""
    s = getattr(meta, "payload_sum", None)
    if s is not None:
        return s
    if not isinstance(meta, (bytes, bytearray, memoryview)) or len(meta) < META_SIZE:
        return None
    b = len(meta) - META_SIZE   # the struct ends where the frame starts (structs.Meta.parse)
    if (meta[b:b + 2] == _META_MAGIC
            and (meta[b + _META_FLAGS] | meta[b + _META_FLAGS + 1] << 8) & MPB_F_SUM_VALID
            and (meta[b + _META_PLEN] | meta[b + _META_PLEN + 1] << 8) == length):
        return meta[b + _META_CSUM] | meta[b + _META_CSUM + 1] << 8
    return None


@dataclass
class HostConfig:
    """Per-host MPTCP settings (the net.mptcp.* sysctls feed these)."""

    version: int = 1               # 0 = RFC 6824, 1 = RFC 8684 (what we send as client)
    checksum: bool = False         # ask for DSS checksums (used if either side asks)
    syn_retries: int = 3           # SYNs with MP_CAPABLE before trying plain TCP
    enabled: int = 1               # 0 off, 1 on, 2 only sockets that ask (per-socket option)
    path_manager: str = "fullmesh"
    scheduler: str = "default"
    cc: str = "reno"
    debug: bool = False
    sndbuf: int = 4 << 20
    rcvbuf: int = 4 << 20
    chunk_segments: int = 4        # MSS-sized segments per DSS mapping
    max_conns: int = 4096
    join_limit: Optional[int] = None   # MP_JOINs a connection accepts (kernel: limits subflow)
    add_addr_accepted: Optional[int] = None   # ADD_ADDRs a path manager uses (kernel: limits)
    deny_join_id0: bool = False        # server sets MP_CAPABLE C (allow_join_initial_addr_port=0)
    tcp: dict = field(default_factory=dict)   # SubflowConfig overrides


class Listener:
    """A listening endpoint; established connections queue here until accepted."""

    def __init__(self, host: "Host", ip: Optional[ipaddress._BaseAddress], port: int,
                 backlog: int, on_accept: Optional[Callable[[Connection], None]], options: dict) -> None:
        self.host = host
        self.ip = ip
        self.port = port
        self.backlog = backlog
        self.on_accept = on_accept
        self.options = options
        self.queue: collections.deque[Connection] = collections.deque()
        self.pending = 0
        self.closed = False

    def accept(self) -> Optional[Connection]:
        """The next established connection, or None."""
        while self.queue:
            c = self.queue.popleft()
            if not c.closed or c._rcvq:
                return c
        return None

    def close(self) -> None:
        self.closed = True
        self.host._unlisten(self)
        while self.queue:
            self.queue.popleft().abort()


class Host:
    """All MPTCP state of one stack (api.HostApi)."""

    def __init__(self, config: HostConfig | None = None, timers: TimerWheel | None = None,
                 output: Callable[[bytes], None] | None = None, rng: random.Random | None = None) -> None:
        self.config = config or HostConfig()
        self.timers = timers if timers is not None else TimerWheel()
        self.output: Callable[[bytes], None] = output if output is not None else (lambda pkt: None)
        self.rng = rng if rng is not None else random.Random()
        self.now = 0.0
        self.addresses: list[api.LocalAddr] = []
        self._next_addr_id = 1
        self.conns: dict[int, Connection] = {}            # by local token
        self._sfs: dict[tuple, MpSubflow] = {}             # (lip, lport, rip, rport) -> subflow
        self._pending: dict[tuple, MpSubflow] = {}         # server joins before HMAC check
        self.listeners: dict[tuple, Listener] = {}        # (ip bytes|None, port)
        self.stats: collections.Counter = collections.Counter()
        self.alloc_port: Callable[[int], int] = self._alloc_port
        self.source_for: Callable[[Any], Any] = self._source_for
        self.on_subflow_add: Optional[Callable[..., None]] = None
        self.on_subflow_remove: Optional[Callable[..., None]] = None
        self.on_listen: Optional[Callable[..., None]] = None
        self.on_event: Optional[Callable[[dict], None]] = None
        self._cur_obj: Any = None        # the packet being processed and the fast path's
        self._cur_len = -1               # metadata that came with it (payload sum)
        self._cur_meta: Any = None
        self._dirty: set[Connection] = set()        # to push at the end of input_batch
        self._batch: Optional[list] = None          # subflows whose ACK waits (input_batch)
        self._lingering: dict[tuple, Listener] = {}   # closed listeners whose conns live on

    def _out(self, pkt: bytes) -> None:
        self.output(pkt)

    # ------------------------------------------------------------ configuration
    def count(self, name: str, n: int = 1) -> None:
        self.stats[name] += n

    def add_address(self, ip: str, addr_id: int | None = None, backup: bool = False,
                    port: int = 0, flags: frozenset | None = None) -> api.LocalAddr:
        a = ipaddress.ip_address(ip)
        for la in self.addresses:
            if la.address == a:
                return la
        if sum(1 for la in self.addresses if la.address.version == a.version) >= api.MAX_ADDRS_PER_FAMILY:
            raise ValueError(f"at most {api.MAX_ADDRS_PER_FAMILY} addresses per family")
        if addr_id is None:
            used = {la.id for la in self.addresses}
            while self._next_addr_id in used or self._next_addr_id == 0:
                self._next_addr_id = self._next_addr_id % 255 + 1
            addr_id = self._next_addr_id
            self._next_addr_id = self._next_addr_id % 255 + 1
        la = api.LocalAddr(addr_id, a, backup, port, flags)
        self.addresses.append(la)
        for c in list(self.conns.values()):
            c._pm_call("on_local_address_change", "up", la)
        return la

    def remove_address(self, ip: str) -> None:
        a = ipaddress.ip_address(ip)
        for la in list(self.addresses):
            if la.address == a:
                self.addresses.remove(la)
                for c in list(self.conns.values()):
                    c._pm_call("on_local_address_change", "down", la)

    def flush_addresses(self) -> list[api.LocalAddr]:
        """Remove every address at once (`ip mptcp endpoint flush`): a path manager with
        `on_local_addresses_flushed` hears them together (one RM_ADDR, as the kernel
        sends); others hear "down" for each."""
        gone, self.addresses = self.addresses, []
        for c in list(self.conns.values()):
            if hasattr(c.pm, "on_local_addresses_flushed"):
                c._pm_call("on_local_addresses_flushed", gone)
            else:
                for la in gone:
                    c._pm_call("on_local_address_change", "down", la)
        return gone

    def change_address(self, la: api.LocalAddr, backup: bool | None = None,
                       flags: frozenset | None = None) -> None:
        """New backup flag or endpoint flags of a local address (`ip mptcp endpoint change`):
        path managers hear "prio" (they send MP_PRIO, 8684 §3.3.8) or "flags"."""
        prio = backup is not None and bool(backup) != la.backup
        changed = flags is not None and flags != la.flags
        if backup is not None:
            la.backup = bool(backup)
        if flags is not None:
            la.flags = flags
        for c in list(self.conns.values()):
            if prio:
                c._pm_call("on_local_address_change", "prio", la)
            if changed:
                c._pm_call("on_local_address_change", "flags", la)

    def _alloc_port(self, family: int) -> int:
        used = {k[1] for k in self._sfs} | {k[1] for k in self._pending}
        for _ in range(1000):
            p = self.rng.randint(EPHEMERAL_LOW, EPHEMERAL_HIGH)
            if p not in used:
                return p
        raise OSError(errno.EADDRNOTAVAIL, "no free local port")

    def _source_for(self, remote: Any) -> Any:
        for la in self.addresses:
            if la.address.version == remote.version:
                return la.address
        return None

    # ------------------------------------------------------------ sockets
    def listen(self, ip: str | None, port: int, backlog: int = 128,
               on_accept: Callable[[Connection], None] | None = None, **options: Any) -> Listener:
        a = ipaddress.ip_address(ip) if ip else None
        key = (a.packed if a else None, port)
        if key in self.listeners:
            raise OSError(errno.EADDRINUSE, f"already listening on {ip or '*'}:{port}")
        lst = Listener(self, a, port, backlog, on_accept, options)
        self.listeners[key] = lst
        self._lingering.pop(key, None)
        if self.on_listen is not None:
            self.on_listen(a.version if a else 0, a.packed if a else None, port, True)
        return lst

    def _unlisten(self, lst: Listener) -> None:
        key = (lst.ip.packed if lst.ip else None, lst.port)
        if self.listeners.get(key) is lst:
            del self.listeners[key]
            if any(c.listener is lst and not c.closed for c in self.conns.values()):
                # its connections still take MP_JOIN SYNs on this port (8684 §3.2): keep
                # the fast path's claim until the last one is gone (SYNs now get a RST)
                self._lingering[key] = lst
            elif self.on_listen is not None:
                self.on_listen(lst.ip.version if lst.ip else 0, key[0], lst.port, False)

    def _linger_done(self, lst: Listener) -> None:
        key = (lst.ip.packed if lst.ip else None, lst.port)
        if self._lingering.get(key) is not lst:
            return
        if any(c.listener is lst and not c.closed for c in self.conns.values()):
            return
        del self._lingering[key]
        if self.on_listen is not None and key not in self.listeners:
            self.on_listen(lst.ip.version if lst.ip else 0, key[0], lst.port, False)

    def connect(self, remote: tuple[str, int], local: tuple[str, int] | None = None,
                now: float | None = None, **options: Any) -> Connection:
        """Open a connection: `options` may set version, checksum, path_manager, scheduler,
        cc, sndbuf, rcvbuf, mptcp (False: plain TCP), subflow (SubflowConfig overrides)."""
        if now is not None:
            self.now = now
        raddr = ipaddress.ip_address(remote[0])
        if local is not None and local[0]:
            laddr = ipaddress.ip_address(local[0])
        else:
            laddr = self.source_for(raddr)
            if laddr is None:
                raise OSError(errno.ENETUNREACH, f"no local address to reach {raddr}")
        if laddr.version != raddr.version:
            raise OSError(errno.EAFNOSUPPORT, "local and remote address families differ")
        lport = (local[1] if local is not None and local[1] else 0) or self.alloc_port(laddr.version)
        if self._sf_by_key((laddr.packed, lport, raddr.packed, remote[1])) is not None:
            raise OSError(errno.EADDRINUSE, "4-tuple in use")
        version = int(options.get("version", self.config.version))
        csum = bool(options.get("checksum", self.config.checksum))
        c = Connection(self, api.CLIENT, version, csum, (laddr.packed, lport),
                       (raddr.packed, remote[1]), options)
        if not self._mptcp_wanted(options.get("mptcp")):
            c.fallback = True
            c.fallback_reason = "MPTCP disabled"
        self.conns[c.token] = c
        c.start(self.now)
        self._flush(self.now)
        return c

    def _mptcp_wanted(self, per_socket: Any) -> bool:
        """net.mptcp.mptcp_enabled: 0 off, 1 on unless the socket says no, 2 only if it asks."""
        if per_socket is False or self.config.enabled == 0:
            return False
        return per_socket is True or self.config.enabled == 1

    # ------------------------------------------------------------ keys and tokens
    def _new_key(self, version: int) -> tuple[int, int, int]:
        while True:
            key = self.rng.getrandbits(64)
            token, idsn = key_token_idsn(key, version)
            if key and token not in self.conns:
                return key, token, idsn

    def _rekey(self, c: Connection, key: int) -> None:
        self.conns.pop(c.token, None)
        c.local_key = key
        c.token, c.local_idsn = key_token_idsn(key, c.version)
        self.conns[c.token] = c

    # ------------------------------------------------------------ subflow registry
    def _sf_by_key(self, key: tuple) -> Optional[MpSubflow]:
        return self._sfs.get(key) or self._pending.get(key)

    def _register_sf(self, msf: MpSubflow) -> None:
        if msf.join and not msf.active and not msf.join_verified:
            self._pending[msf.key] = msf
        else:
            self._sfs[msf.key] = msf
        if self.on_subflow_add is not None:
            self.on_subflow_add(msf.family, msf.local_b[0], msf.local_b[1], msf.remote_b[0],
                                msf.remote[1], msf.id, msf.conn.token)

    def _join_verified(self, c: Connection, msf: MpSubflow) -> None:
        self._pending.pop(msf.key, None)
        self._sfs[msf.key] = msf
        if msf not in c.subflows:
            c.subflows.append(msf)
            self.count("join_accepted")

    def _pending_joins_of(self, c: Connection) -> list[MpSubflow]:
        return [m for m in self._pending.values() if m.conn is c]

    def _unregister_sf(self, msf: MpSubflow) -> None:
        gone = self._sfs.pop(msf.key, None) or self._pending.pop(msf.key, None)
        if gone is not None and self.on_subflow_remove is not None:
            self.on_subflow_remove(msf.family, msf.local_b[0], msf.local_b[1], msf.remote_b[0],
                                   msf.remote[1], msf.id, msf.conn.token)

    def _conn_gone(self, c: Connection) -> None:
        """The connection is closed; forget it once no subflow of it remains."""
        if c.listener is not None and not c._accepted:
            c._accepted = True          # never established: free its backlog slot
            c.listener.pending -= 1
        if c.subflows or self._pending_joins_of(c):
            return
        if self.conns.get(c.token) is c:
            del self.conns[c.token]
        if c.listener is not None and self._lingering:
            self._linger_done(c.listener)

    def _accept_ready(self, c: Connection) -> None:
        lst = c.listener
        if lst is None or c._accepted:
            return
        c._accepted = True
        lst.pending -= 1
        if lst.closed:
            c.abort()
            return
        lst.queue.append(c)
        if lst.on_accept is not None:
            lst.on_accept(c)

    # ------------------------------------------------------------ events
    def _emit_event(self, c: Connection, kind: str, fields: dict) -> None:
        if self.on_event is None and not self.config.debug:
            return
        sf = fields.pop("sf", None)
        ev: dict[str, Any] = {"type": kind, "token": f"{c.token:08x}", "time": self.now}
        if sf is not None:
            ev.update({"sf_id": sf.id, "locid": sf.local_id, "remid": sf.remote_id,
                       "saddr": str(sf.local_addr), "daddr": str(sf.remote_addr),
                       "sport": sf.local[1], "dport": sf.remote[1], "backup": int(sf.backup)})
        elif kind in ("created", "established", "closed"):
            ev.update({"saddr": str(c.local_ip), "daddr": str(c.remote_addresses[0].address)
                       if c.remote_addresses else None, "sport": c.local_port,
                       "dport": c.remote_port, "server_side": int(c.role == api.SERVER)})
        ev.update({k: v for k, v in fields.items() if v is not None})
        if self.on_event is not None:
            self.on_event(ev)

    # ------------------------------------------------------------ input
    def input(self, packet: Any, now: float, meta: Any = None) -> None:
        """One received IP packet (bytes or memoryview); malformed ones are counted."""
        self.now = now
        try:
            p = parse_ip_packet(packet)
        except WireError:
            self.count("rx_malformed_packet")
            return
        self._input_parsed(p, now, meta)

    def _input_parsed(self, p: Any, now: float, meta: Any) -> Any:
        """Returns the subflow endpoint the packet went to (None: no subflow)."""
        key = (p.dst, p.dport, p.src, p.sport)
        msf = self._sfs.get(key) or self._pending.get(key)
        if msf is not None:
            if meta is not None:
                self._cur_meta = meta
                self._cur_obj = p.payload.obj
                self._cur_len = len(p.payload)
            c = msf.conn
            if p.flags & _RST and p.options:
                c._on_rst_options(msf, p.options)
            tcp = msf.tcp
            tcp.input(p, now)
            self._cur_meta = None
            self._after_event(c, now)
            return tcp
        flags = p.flags
        if flags & _RST:
            return
        if flags & _SYN and not flags & _ACK:
            self._on_syn(p, now)
            return
        self.count("rx_no_socket")
        self._send_rst_for(p)

    def fast_sum(self, piece: Any) -> Optional[int]:
        """The fast path's sum of `piece` when it is the whole payload of the packet being
        processed and the metadata carries one; else None."""
        m = self._cur_meta
        if (m is not None and type(piece) is memoryview and piece.obj is self._cur_obj
                and len(piece) == self._cur_len):
            return fast_path_sum(m, len(piece))
        return None

    def payload_sum(self, piece: Any) -> int:
        """Ones'-complement sum of received payload for the DSS checksum (8684 §3.3.1).

        When the fast path gave the current segment's payload sum in `meta.payload_sum`
        and `piece` is that whole payload, the sum is reused instead of recomputed.
        """
        m = self._cur_meta
        if (m is not None and type(piece) is memoryview and piece.obj is self._cur_obj
                and len(piece) == self._cur_len):
            s = fast_path_sum(m, len(piece))
            if s is not None:
                return s
        return csum_partial(piece)

    def _after_event(self, c: Connection, now: float) -> None:
        if self._batch is not None:
            self._dirty.add(c)      # pushed once at the end of the batch
        elif not c.closed:
            c._push(now)

    def input_batch(self, packets: Any, now: float) -> None:
        """Packets that arrived together (one RX batch): items are packets or (packet,
        meta) pairs. Pure cumulative ACKs that a later ACK of the same subflow in the batch
        supersedes are dropped (wire.gro.thin_acks, `rx_acks_thinned`; never duplicate
        ACKs or SACKs), then runs of in-order segments of one subflow are merged (wire.gro,
        as GRO; counted in `rx_coalesced`). Each subflow ACKs its in-order data once at the
        end of the batch (Subflow.defer_ack) and each connection pushes queued data once,
        instead of per segment. A packet that raises is counted (`input_errors`) and
        skipped."""
        due: list[Any] = []
        self._batch = due
        self.now = now
        try:
            # pure ACKs superseded by a later one of their subflow in this batch are
            # dropped before TCP sees them (wire.gro.thin_acks)
            items, thinned = thin_acks(packets if type(packets) is list else list(packets))
            if thinned:
                self.count("rx_acks_thinned", thinned)
            # runs of in-order segments of one subflow go in as one (wire.gro)
            for p, meta, k in coalesce(items, fast_path_sum, self._bad_packet):
                sf = None
                try:
                    sf = self._input_parsed(p, now, meta)
                except Exception:
                    self.count("input_errors")
                if k > 1:
                    self.count("rx_coalesced", k - 1)
                    if sf is not None:
                        sf.segs_in += k - 1        # counted per wire segment
                        sf.data_segs_in += k - 1
        finally:
            self._batch = None
            self._flush(now)
            for sf in due:
                sf.flush_ack(now)

    def _bad_packet(self, pkt: Any) -> None:
        self.count("rx_malformed_packet")

    def _defer(self, sf: Any) -> bool:
        """Subflow.defer_ack: inside input_batch the ACK waits for the batch's end."""
        b = self._batch
        if b is None:
            return False
        b.append(sf)
        return True

    def _flush(self, now: float) -> None:
        dirty = self._dirty
        while dirty:
            c = dirty.pop()
            if not c.closed:
                c._push(now)

    def advance(self, now: float) -> int:
        """Run due timers (an owner without its own loop over the TimerWheel calls this)."""
        self.now = now
        return self.timers.run_due(now)

    def _send_rst_for(self, p: Any) -> None:
        """RFC 9293 §3.10.7.1 reset generation for a segment to no socket."""
        if p.flags & _ACK:
            seq, ack, fl = p.ack, 0, _RST
        else:
            ln = len(p.payload) + (1 if p.flags & _SYN else 0) + (1 if p.flags & _FIN else 0)
            seq, ack, fl = 0, (p.seq + ln) & 0xFFFFFFFF, _RST | _ACK
        try:
            self.output(build_tcp_packet(p.dst, p.src, p.dport, p.sport, seq, ack, fl, 0, b"", b""))
            self.count("tx_rst")
        except WireError:
            pass

    def _find_listener(self, p: Any) -> Optional[Listener]:
        return self.listeners.get((p.dst, p.dport)) or self.listeners.get((None, p.dport))

    def _on_syn(self, p: Any, now: float) -> None:
        try:
            opts = parse_tcp_options(p.options)
        except WireError:
            self.count("rx_malformed_syn")
            return
        mpc = join = None
        for o in opts.mptcp:
            try:
                sub = parse_mptcp(o, syn=True, ack=False)
            except WireError:
                self.count("rx_malformed")
                continue
            if isinstance(sub, MpCapable) and mpc is None:
                mpc = sub
            elif isinstance(sub, MpJoinSyn) and join is None:
                join = sub
        if join is not None:
            self._on_join_syn(p, join, opts, now)
            return
        lst = self._find_listener(p)
        if lst is None or lst.closed:
            self.count("rx_syn_no_listener")
            self._send_rst_for(p)
            return
        if lst.pending + len(lst.queue) >= lst.backlog or len(self.conns) >= self.config.max_conns:
            self.count("listen_overflow")
            return
        use_mptcp = (mpc is not None and self._mptcp_wanted(lst.options.get("mptcp"))
                     and (mpc.version == 0 or mpc.hmac_sha))
        version = mpc.version if use_mptcp and mpc.version in (0, 1) else self.config.version
        if use_mptcp and mpc.version not in (0, 1):
            use_mptcp = False
        csum = bool(lst.options.get("checksum", self.config.checksum))
        if use_mptcp and mpc.checksum_required:
            csum = True
        local = (p.dst, p.dport)
        remote = (p.src, p.sport)
        c = Connection(self, api.SERVER, version, csum, local, remote, lst.options)
        c.listener = lst
        if not use_mptcp:
            c.fallback = True
            c.fallback_reason = "no MP_CAPABLE in SYN"
            self.count("fallback_syn")
        elif version == 0:
            c._set_remote_key(mpc.sender_key)
        self.conns[c.token] = c
        lst.pending += 1
        msf = c._new_msf(local, remote, False, False, 0, 0, False)
        c.subflows.append(msf)
        cc = make_cc(c.cc, c.cc_group)
        fam = 4 if len(p.dst) == 4 else 6
        tcp = Subflow.from_syn(p, now, local, remote, msf, c, self._out, cc,
                               c._make_tcp_config(fam), self.rng, opts)
        c._attach_tcp(msf, tcp)
        self.count("mpc_syn_rx" if use_mptcp else "plain_syn_rx")
        c._event("created")

    def _on_join_syn(self, p: Any, join: MpJoinSyn, opts: Any, now: float) -> None:
        c = self.conns.get(join.token)
        if c is None or c.closed or c.fallback or c.remote_key is None:
            self.count("join_syn_unknown_token")
            self._send_rst_for(p)   # 8684 §3.2: nothing is created
            return
        if len(c.subflows) + len(self._pending_joins_of(c)) >= api.MAX_SUBFLOWS:
            self.count("join_limit")
            self._send_rst_for(p)
            return
        if (self.config.deny_join_id0 and c.role == api.SERVER and p.dport == c.local_port
                and ipaddress.ip_address(p.dst) == c.local_ip):
            self.count("join_denied_id0")   # we said C (8684 §3.1): not to this address+port
            self._send_rst_for(p)
            return
        local = (p.dst, p.dport)
        remote = (p.src, p.sport)
        laddr = ipaddress.ip_address(p.dst)
        msf = c._new_msf(local, remote, True, False, c._local_id_of(laddr), join.addr_id, False)
        msf.nonce_remote = join.nonce
        msf.nonce_local = self.rng.getrandbits(32)
        msf.peer_backup = join.backup
        # 8684 §3.2: B in our SYN/ACK says what WE want: the backup flag of our address
        msf.backup = any(la.backup for la in self.addresses if la.address == laddr)
        msf.mp_state = SF_CONNECTING
        cc = make_cc(c.cc, c.cc_group)
        fam = 4 if len(p.dst) == 4 else 6
        tcp = Subflow.from_syn(p, now, local, remote, msf, c, self._out, cc,
                               c._make_tcp_config(fam), self.rng, opts)
        c._attach_tcp(msf, tcp)
        self.count("join_syn_rx")

    # ------------------------------------------------------------ inspection
    def info(self) -> dict[str, Any]:
        return {
            "addresses": [{"id": a.id, "addr": str(a.address), "backup": a.backup} for a in self.addresses],
            "listeners": [f"{lst.ip or '*'}:{lst.port}" for lst in self.listeners.values()],
            "conns": [c.info() for c in self.conns.values()],
            "stats": dict(self.stats),
        }

    def conn_infos(self) -> list[dict[str, Any]]:
        return [c.info() for c in self.conns.values()]


__all__ = ["Host", "HostConfig", "Listener", "EPHEMERAL_LOW", "EPHEMERAL_HIGH"]
