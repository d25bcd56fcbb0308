"""The stack of one network namespace: an event loop thread gluing Host, ports and timers.

One `Stack` per namespace and process owns a `mptcp.host.Host`, the packet ports it sends
and receives on (`XdpPort` per device over the XDP fast path, `TunPort` for TUN tests, or a
`SocketpairPort` between two in-process stacks), and a TimerWheel on time.monotonic().

Threading: one big re-entrant lock (`stack.lock`) guards the host and everything below it.
The loop thread holds it while it feeds a batch of received packets to the host and runs
due timers; caller threads (sockets) take it for each operation and then `kick()` the loop,
which flushes the packets the operation produced. The loop waits in epoll on the ports'
fds and an eventfd, with the next timer deadline as the timeout.

Ephemeral ports: the kernel picks them. For each local port we use, a kernel TCP socket of
the same family is bound to it (never listening) for as long as we use it, so the kernel's
own connect() and bind() cannot take that port, and binding a port the kernel already
uses fails with EADDRINUSE exactly as for a kernel socket.
"""

from __future__ import annotations

import logging
import os
import select
import socket as _socket
import threading
import time
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Iterable

from mptcp_bpf.endpoints import EndpointTable
from mptcp_bpf.errors import HintedError
from mptcp_bpf.timers import TimerWheel

log = logging.getLogger("mptcp_bpf.stack")
debug_log = logging.getLogger("mptcp_bpf.debug")

RX_BATCH = 64
RX_ROUNDS = 4  # recv_batch calls per ready port and wakeup: up to 256 packets per batch
TX_FLUSH = 64  # packets queued by one operation before they go out (not only at its end)
_PARTIAL_V4 = (20, 16)  # (csum_start, csum_offset) from the IP header: TcpBuilder's v4
_PARTIAL_V6 = (40, 16)  # and v6 packets carry no IP options / extension headers


# host counter -> the kernel's MPTcpExt MIB name (`mptcp-bpf stats` shows both)
MIB_NAMES = {
    "mpc_syn_rx": "MPCapableSYNRX", "fallback_syn": "MPCapableFallbackSYN",
    "fallback_synack": "MPCapableFallbackSYNACK", "fallback_no_dss": "MPCapableFallbackACK",
    "join_syn_rx": "MPJoinSynRx", "join_established": "MPJoinAckRx",
    "join_syn_unknown_token": "MPJoinNoTokenFound", "join_limit": "MPJoinRejected",
    "join_synack_hmac_fail": "MPJoinSynAckHMacFailure",
    "join_ack_hmac_fail": "MPJoinAckHMacFailure", "join_tx": "MPJoinSynTx",
    "add_addr_rx": "AddAddr", "add_addr_echo_rx": "EchoAdd", "add_addr_tx": "AddAddrTx",
    "rm_addr_rx": "RmAddr", "rm_addr_tx": "RmAddrTx", "mp_prio_rx": "MPPrioRx",
    "mp_prio_tx": "MPPrioTx", "mp_fail_rx": "MPFailRx", "mp_fail_tx": "MPFailTx",
    "fastclose_rx": "MPFastcloseRx", "fastclose_tx": "MPFastcloseTx", "tcprst_rx": "MPRstRx",
    "rx_csum_fail": "DataCsumErr", "rx_infinite_map": "InfiniteMapRx",
    "add_addr_hmac_fail": "AddAddrDrop",
}


@dataclass
class StackConfig:
    """Settings of one stack; defaults as net.mptcp.* (REFERENCE.md §2, ours: v1, fullmesh)."""

    enabled: int = 1
    version: int = 1
    checksum: bool = True
    syn_retries: int = 3
    debug: bool = False
    path_manager: str = "fullmesh"
    scheduler: str = "default"
    cc: str = "reno"
    pcap: str | None = None
    reserve_ports: bool = True
    fast_path: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    SYSCTL_NAMES = {
        "mptcp_enabled": "enabled", "mptcp_version": "version", "mptcp_checksum": "checksum",
        "mptcp_syn_retries": "syn_retries", "mptcp_debug": "debug",
        "mptcp_path_manager": "path_manager", "mptcp_scheduler": "scheduler",
    }

    @classmethod
    def from_sysctl(cls, values: dict[str, Any] | None = None, **overrides: Any) -> "StackConfig":
        """Config from the namespace's net.mptcp.* values (the pinned map), then `overrides`."""
        if values is None:
            values = read_sysctls()
        cfg = cls()
        for name, attr in cls.SYSCTL_NAMES.items():
            if name in values and values[name] is not None:
                cur = getattr(cfg, attr)
                val = values[name]
                setattr(cfg, attr, bool(int(val)) if isinstance(cur, bool) else type(cur)(val))
        for k, v in overrides.items():
            if v is not None:
                setattr(cfg, k, v)
        return cfg

    def host_kwargs(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "version": self.version, "checksum": self.checksum,
                "syn_retries": self.syn_retries, "debug": self.debug,
                "path_manager": self.path_manager, "scheduler": self.scheduler, "cc": self.cc}


def enable_debug_log() -> None:
    """net.mptcp.mptcp_debug=1: the connection events go to stderr, one line each."""
    if not any(getattr(h, "_mptcp_debug", False) for h in debug_log.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("mptcp-bpf debug: %(message)s"))
        handler._mptcp_debug = True  # type: ignore[attr-defined]
        debug_log.addHandler(handler)
    debug_log.setLevel(logging.INFO)


def read_sysctls() -> dict[str, Any]:
    """net.mptcp.* of this namespace from the pinned map; {} when there is none (no root)."""
    try:
        from mptcp_bpf import sysctl
    except ImportError:
        return {}
    try:
        sc = sysctl.Sysctl.open(create=True)
        try:
            values = dict(sc.all())
        finally:
            close = getattr(sc, "close", None)
            if callable(close):
                close()
        return {str(k).removeprefix("net.mptcp."): v for k, v in values.items()}
    except Exception as exc:  # no bpffs, not root: defaults apply
        log.debug("sysctls unavailable (%s); using defaults", exc)
        return {}


def _src_of(packet: bytes | memoryview) -> bytes:
    if packet[0] >> 4 == 4:
        return bytes(packet[12:16])
    return bytes(packet[8:24])


def _dst_of(packet: bytes | memoryview) -> bytes:
    if packet[0] >> 4 == 4:
        return bytes(packet[16:20])
    return bytes(packet[24:40])


class SocketpairPort:
    """A port carrying whole IP packets over one end of an AF_UNIX datagram socketpair.

    Two in-process stacks joined by `SocketpairPort.pair()` talk without root: unit tests
    and examples use it; the protocol is the one of datapath.ports (fileno, recv_batch,
    send_batch, close)."""

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        sock.setblocking(False)
        self.sent = 0
        self.received = 0
        self.drop: Callable[[bytes], bool] | None = None  # tests: drop a packet when True

    @classmethod
    def pair(cls) -> tuple["SocketpairPort", "SocketpairPort"]:
        a, b = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_DGRAM)
        for s in (a, b):
            s.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDBUF, 4 << 20)
            s.setsockopt(_socket.SOL_SOCKET, _socket.SO_RCVBUF, 4 << 20)
        return cls(a), cls(b)

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv_batch(self, max_n: int) -> list[tuple[bytes, None]]:
        out: list[tuple[bytes, None]] = []
        recv = self.sock.recv
        for _ in range(max_n):
            try:
                out.append((recv(65536), None))
            except (BlockingIOError, InterruptedError):
                break
        self.received += len(out)
        return out

    def send_batch(self, packets: list[bytes]) -> None:
        send = self.sock.send
        drop = self.drop
        for p in packets:
            if drop is not None and drop(p):
                continue
            try:
                send(p)
                self.sent += 1
            except (BlockingIOError, InterruptedError, ConnectionRefusedError, OSError):
                pass  # a full queue is a lost packet: TCP recovers, as on a real link

    def close(self) -> None:
        self.sock.close()


class PortReservations:
    """Kernel sockets bound to the ports we use, so the kernel's sockets never collide."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._socks: dict[tuple[int, int], tuple[_socket.socket | None, int]] = {}
        self._next = 61000  # used only when reservation is off: above ip_local_port_range

    def reserve(self, family: int, port: int = 0, addr: str | None = None) -> int:
        """Reserve `port` (0: let the kernel choose); EADDRINUSE if taken; returns the port."""
        fam = _socket.AF_INET6 if family in (6, _socket.AF_INET6) else _socket.AF_INET
        if not self.enabled:
            if port == 0:
                for _ in range(4536):
                    self._next = 61000 + (self._next - 61000 + 1) % 4535
                    if (fam, self._next) not in self._socks:
                        port = self._next
                        break
            key = (fam, port)
            if key in self._socks:
                sock, refs = self._socks[key]
                self._socks[key] = (sock, refs + 1)
            else:
                self._socks[key] = (None, 1)
            return port
        if port and (fam, port) in self._socks:
            sock, refs = self._socks[(fam, port)]
            self._socks[(fam, port)] = (sock, refs + 1)
            return port
        s = _socket.socket(fam, _socket.SOCK_STREAM)
        try:
            s.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
            if fam == _socket.AF_INET6:
                s.setsockopt(_socket.IPPROTO_IPV6, _socket.IPV6_V6ONLY, 0)
            wild = "::" if fam == _socket.AF_INET6 else "0.0.0.0"
            s.bind((addr or wild, port))
        except OSError:
            s.close()
            raise
        port = s.getsockname()[1]
        self._socks[(fam, port)] = (s, 1)
        return port

    def release(self, family: int, port: int) -> None:
        fam = _socket.AF_INET6 if family in (6, _socket.AF_INET6) else _socket.AF_INET
        entry = self._socks.get((fam, port))
        if entry is None:
            return
        sock, refs = entry
        if refs > 1:
            self._socks[(fam, port)] = (sock, refs - 1)
            return
        del self._socks[(fam, port)]
        if sock is not None:
            sock.close()

    def close(self) -> None:
        for sock, _ in self._socks.values():
            if sock is not None:
                sock.close()
        self._socks.clear()


class Stack:
    """The event loop of one network namespace (see the module docstring)."""

    _instance: "Stack | None" = None
    _instance_lock = threading.Lock()

    def __init__(self, devices: list[str] | None = None, ports: Iterable[Any] | None = None,
                 config: StackConfig | None = None, addresses: Iterable[str] | None = None,
                 fastpath: Any = None, host: Any = None, start: bool = True,
                 name: str = "stack") -> None:
        self.config = config or StackConfig.from_sysctl()
        self.lock = threading.RLock()
        self.timers = TimerWheel()
        self.name = name
        self.devices = list(devices or [])
        self.fastpath = fastpath
        self.ports: list[Any] = list(ports or [])
        self._port_by_src: dict[bytes, Any] = {}
        self._txq: list[bytes] = []
        self._tls = threading.local()
        self._unkicked: set = set()
        self._txcs: list[tuple[int, int] | None] = []  # per queued packet: csum offsets
        self._csum_offload = False  # every port finishes TCP checksums (TX_CSUM_PARTIAL)
        self._sleep_until = 0.0  # the loop's epoll deadline (call() kicks only if earlier)
        self._stop = False
        self._thread: threading.Thread | None = None
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._kicked = False
        self._subscribers: list[Callable[[dict], None]] = []
        self._claimed: list[str] = []
        self._loaded_devices: list[str] = []
        self.reservations = PortReservations(self.config.reserve_ports)
        self._ephemeral: dict[tuple[int, int], int] = {}
        self._src_cache: dict[str, str] = {}
        self._fp_ids: dict[tuple, int] = {}
        self._fp_next = 0
        self._deferred_unlisten: set[tuple] = set()
        self._fp_listeners: set[tuple] = set()   # (family, ip, port) we put in the fast path
        self.endpoint_table = EndpointTable(self)   # endpoints and limits (endpoints.py)
        self.counters: dict[str, int] = {"rx_packets": 0, "tx_packets": 0, "rx_batches": 0,
                                         "loop_iterations": 0, "input_errors": 0}
        self.capture = None
        self.control = None
        self.closed = False
        if self.config.debug:
            enable_debug_log()
        self.host = host if host is not None else self._make_host()
        self._host_has_now = hasattr(self.host, "now")
        self._wire_host()
        try:
            if self.devices and not self.ports:
                self._open_devices()
            for addr in addresses or ():
                self.add_address(addr)
            if self.config.pcap:
                self._open_capture(self.config.pcap)
        except BaseException:
            self.close()
            raise
        if start:
            self.start()

    # ----------------------------------------------------------------- construction
    def _make_host(self) -> Any:
        from mptcp_bpf.mptcp.host import Host
        return make_host(Host, self.config, self.timers, self._output)

    def _wire_host(self) -> None:
        h = self.host
        h.output = self._output
        hooks: list[tuple[str, Any]] = [("on_subflow_add", self._on_subflow_add),
                                        ("on_subflow_remove", self._on_subflow_remove),
                                        ("on_listen", self._on_listen),
                                        ("on_event", self._on_event)]
        if self.config.reserve_ports:
            hooks.append(("alloc_port", self._alloc_port))
        default_source = getattr(h, "source_for", None)
        if callable(default_source):
            def source_for(remote: Any) -> Any:
                import ipaddress
                src = self.source_for(str(remote))
                return ipaddress.ip_address(src) if src else default_source(remote)
            hooks.append(("source_for", source_for))
        for attr, fn in hooks:
            try:
                setattr(h, attr, fn)
            except AttributeError:
                pass

    def _open_devices(self) -> None:
        """Attach (or reuse) the fast path on our devices and open one XdpPort per device."""
        from mptcp_bpf.datapath import loader
        from mptcp_bpf.datapath.ports import XdpPort
        fp = self.fastpath
        if fp is None:
            try:
                pre = loader.FastPath.open_pinned()
                attached = set(pre.devices().values())
                pre.close()
            except Exception:
                attached = set()
            self._loaded_devices = [d for d in self.devices if d not in attached]
            fp = loader.FastPath.load(self.devices)
            self.fastpath = fp
        pid = os.getpid()
        for dev in self.devices:
            try:
                fp.claim(dev, pid)
            except HintedError:
                raise
            except Exception as exc:
                raise HintedError(f"cannot claim {dev}: {exc}",
                                  "another stack may own it; stop it first") from exc
            self._claimed.append(dev)
        for dev in self.devices:
            port = XdpPort(dev, fp)
            self.ports.append(port)
            for ip in device_addresses(dev):
                self.add_address(ip, port)
        self._update_offload()

    def _update_offload(self) -> None:
        """TX checksum offload only when every port does it (a subflow's packets may leave
        through any of them); otherwise subflows go back to full checksums."""
        on = bool(self.ports) and all(getattr(p, "tx_csum_offload", False) for p in self.ports)
        if on == self._csum_offload:
            return
        self._csum_offload = on
        for sf in self._host_subflows():
            self._set_tx_csum(sf)

    def _host_subflows(self) -> list[Any]:
        h = self.host
        out = []
        for d in (getattr(h, "_sfs", None), getattr(h, "_pending", None)):
            if isinstance(d, dict):
                out += [getattr(m, "tcp", None) for m in d.values()]
        return [t for t in out if t is not None and hasattr(t, "tx_csum")]

    def _set_tx_csum(self, tcp: Any) -> None:
        """Subflow packets carry the pseudo-header sum and leave with csum offsets (the
        kernel finishes the sum); packets the host builds itself (RSTs) stay full."""
        if self._csum_offload:
            from mptcp_bpf.wire.packet import TX_CSUM_PARTIAL
            tcp.tx_csum = TX_CSUM_PARTIAL
            tcp.output = self._output_partial
        else:
            tcp.tx_csum = True
            tcp.output = getattr(self.host, "_out", self._output)

    def _open_capture(self, path: str) -> None:
        from mptcp_bpf import capture
        self.capture = open_capture(capture, path)

    @classmethod
    def for_namespace(cls, config: StackConfig | None = None, devices: list[str] | None = None,
                      on_create: Callable[["Stack"], None] | None = None) -> "Stack":
        """The process's stack for the current namespace, started on first use;
        `on_create(stack)` runs once for a new stack (the socket layer starts the control
        server there: control has the same rank as stack)."""
        with cls._instance_lock:
            inst = cls._instance
            if inst is not None and not inst.closed:
                return inst
            if devices is None:
                devices = fastpath_devices() or default_devices()
            if not devices:
                raise HintedError("no network device to run the stack on in this namespace",
                                  "create a veth or use `mptcp-bpf lab up`")
            inst = cls(devices=devices, config=config)
            if on_create is not None:
                try:
                    on_create(inst)
                except Exception as exc:  # inspection is optional; the stack works without it
                    log.debug("on_create failed: %s", exc)
            cls._instance = inst
            return inst

    @classmethod
    def current(cls) -> "Stack | None":
        inst = cls._instance
        return inst if inst is not None and not inst.closed else None

    # ----------------------------------------------------------------- addresses/ports
    def add_address(self, ip: str, port: Any = None, addr_id: int | None = None) -> None:
        """A local address the host may use; packets from it leave through `port`."""
        import ipaddress
        packed = ipaddress.ip_address(ip).packed
        if port is None and self.ports:
            port = self.ports[0]
        if port is not None:
            self._port_by_src[packed] = port
            self.endpoint_table.note_device(ip, getattr(port, "ifname", None))
        with self.lock:
            try:
                self.host.add_address(ip, addr_id=addr_id) if addr_id is not None \
                    else self.host.add_address(ip)
            except (TypeError, AttributeError):
                self.host.add_address(ip)

    def add_port(self, port: Any, addresses: Iterable[str] = ()) -> None:
        with self.lock:
            self.ports.append(port)
            self._update_offload()
        for ip in addresses:
            self.add_address(ip, port)
        self.kick()

    def _alloc_port(self, family: int = 4, *args: Any) -> int:
        """An ephemeral port for a new subflow; released when the subflow goes away."""
        port = self.reservations.reserve(family, 0)
        self._ephemeral[(6 if family in (6, _socket.AF_INET6) else 4, port)] = 0
        return port

    def source_for(self, dst: str) -> str | None:
        """The kernel's source address toward `dst` when we run on its devices, else None
        (the host then picks one of its own addresses)."""
        if not self.devices:
            return None
        src = self._src_cache.get(dst)
        if src is None:
            src = route_source(dst)
            if src is not None:
                self._src_cache[dst] = src
        return src

    def reserve_port(self, family: int, port: int, addr: str | None = None) -> int:
        return self.reservations.reserve(family, port, addr)

    def release_port(self, family: int, port: int) -> None:
        self.reservations.release(family, port)

    # ----------------------------------------------------------------- host callbacks
    def _output(self, packet: bytes) -> None:
        self._txq.append(packet)
        self._txcs.append(None)
        if len(self._txq) >= TX_FLUSH:
            self.flush()

    def _output_partial(self, packet: bytes) -> None:
        """A subflow's packet whose TCP checksum field holds the pseudo-header sum."""
        self._txq.append(packet)
        self._txcs.append(_PARTIAL_V4 if packet[0] >> 4 == 4 else _PARTIAL_V6)
        if len(self._txq) >= TX_FLUSH:
            self.flush()  # a long burst: let the first packets leave (ACKs come back sooner)

    def _on_subflow_add(self, family: int, lip: bytes, lport: int, rip: bytes, rport: int,
                        sf_id: int, token: int, *rest: Any) -> None:
        key = (6 if family in (6, _socket.AF_INET6) else 4, lport)
        if key in self._ephemeral:
            self._ephemeral[key] += 1
        if self._csum_offload:
            h = self.host
            k = (lip, lport, rip, rport)
            msf = getattr(h, "_sfs", {}).get(k) or getattr(h, "_pending", {}).get(k)
            tcp = getattr(msf, "tcp", None)
            if tcp is not None and hasattr(tcp, "tx_csum"):
                self._set_tx_csum(tcp)
        fp = self.fastpath
        if fp is not None:
            # the map's subflow ids are stack-wide and non-zero (the host's are per
            # connection, 0 = the initial subflow)
            fkey = (lip, lport, rip, rport)
            gid = self._fp_ids.get(fkey)
            if gid is None:
                self._fp_next = self._fp_next % 0xFFFFFFFE + 1
                gid = self._fp_ids[fkey] = self._fp_next
            try:
                fp.add_subflow(family, lip, lport, rip, rport, gid, token)
            except Exception as exc:
                log.warning("fast path: cannot add subflow %s: %s", sf_id, exc)

    def _on_subflow_remove(self, family: int, lip: bytes, lport: int, rip: bytes, rport: int,
                           *rest: Any) -> None:
        key = (6 if family in (6, _socket.AF_INET6) else 4, lport)
        if key in self._ephemeral:
            self._ephemeral[key] -= 1
            if self._ephemeral[key] <= 0:
                del self._ephemeral[key]
                self.reservations.release(family, lport)
        fp = self.fastpath
        self._fp_ids.pop((lip, lport, rip, rport), None)
        for entry in [d for d in self._deferred_unlisten if d[2] == lport]:
            if not any(k[1] == lport for k in self._fp_ids):
                self._deferred_unlisten.discard(entry)
                self._on_listen(entry[0], entry[1], entry[2], False)
        if fp is not None:
            _fp_remove_subflow(fp, family, lip, lport, rip, rport)

    def _on_listen(self, family: int, ip: Any, port: int, add: bool = True, *rest: Any) -> None:
        """Own SYNs to a listener; family 0 (wildcard address) means both families.
        A closed listener keeps its entry while connections on its port live: their
        MP_JOIN SYNs come to the same port and must still reach us (8684 §3.2)."""
        fp = self.fastpath
        if fp is None:
            return
        if not add and any(k[1] == port for k in self._fp_ids):
            self._deferred_unlisten.add((family, ip, port))
            return
        if add:
            self._deferred_unlisten.discard((family, ip, port))
        for fam in ((4, 6) if not family else (family,)):
            try:
                if add:
                    fp.add_listener(fam, ip, port)
                    self._fp_listeners.add((fam, ip, port))
                else:
                    self._fp_listeners.discard((fam, ip, port))
                    fp.remove_listener(fam, ip, port)
            except Exception as exc:
                log.warning("fast path: cannot %s listener %s: %s",
                            "add" if add else "remove", port, exc)

    def _on_event(self, event: Any, *args: Any, **kw: Any) -> None:
        if isinstance(event, dict):
            ev = dict(event)
        else:
            ev = {"type": str(event), **kw}
            if args and isinstance(args[0], dict):
                ev.update(args[0])
        if self.config.debug:
            debug_log.info("%s %s", ev.get("type", "event"),
                           " ".join(f"{k}={v}" for k, v in ev.items() if k != "type"))
        for cb in list(self._subscribers):
            try:
                cb(ev)
            except Exception:
                self._subscribers.remove(cb)

    # --- the Protocol of control.ControlServer --------------------------------------
    def subscribe(self, callback: Callable[[dict], None]) -> Callable[[], None]:
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)
        return unsubscribe

    def conn_infos(self) -> list[dict]:
        with self.lock:
            conns = getattr(self.host, "conns", None)
            if isinstance(conns, dict):
                conns = list(conns.values())
            out = []
            for c in conns or ():
                try:
                    out.append(c.info())
                except Exception as exc:
                    out.append({"error": str(exc)})
            return out

    def stats(self) -> dict:
        with self.lock:
            st: dict[str, Any] = {}
            hs = getattr(self.host, "stats", None)
            if callable(hs):
                hs = hs()
            if isinstance(hs, dict):
                st.update(hs)
                for name, mib in MIB_NAMES.items():
                    if name in hs:
                        st[mib] = st.get(mib, 0) + int(hs[name])
            st.update({f"stack_{k}": v for k, v in self.counters.items()})
            if self.fastpath is not None:
                try:
                    for k, v in self.fastpath.counters().items():
                        st[f"fastpath_{k}"] = v
                except Exception:
                    pass
            return st

    # --- endpoints and limits: `mptcp-bpf endpoint|limits`, as `ip mptcp` -----------
    # The work is in endpoints.EndpointTable; these keep control.ControlServer's protocol.
    def endpoints(self) -> list[dict]:
        return self.endpoint_table.show()

    def endpoint_add(self, address: str, port: int = 0, dev: str | None = None,
                     addr_id: int | None = None, flags: Iterable[str] = ()) -> dict:
        return self.endpoint_table.add(address, port, dev, addr_id, flags)

    def endpoint_delete(self, addr_id: int, address: str | None = None) -> dict:
        return self.endpoint_table.delete(addr_id, address)

    def endpoint_change(self, addr_id: int | None = None, address: str | None = None,
                        backup: bool | None = None, fullmesh: bool | None = None) -> dict:
        return self.endpoint_table.change(addr_id, address, backup, fullmesh)

    def endpoint_flush(self) -> list[dict]:
        return self.endpoint_table.flush()

    def limits(self) -> dict:
        return self.endpoint_table.limits()

    def set_limits(self, subflows: int | None = None,
                   add_addr_accepted: int | None = None) -> dict:
        return self.endpoint_table.set_limits(subflows, add_addr_accepted)

    # ----------------------------------------------------------------- the loop
    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=f"mptcp-{self.name}", daemon=True)
        self._thread.start()

    def kick(self) -> None:
        """Wake the loop (from a caller thread) so it flushes queued packets and timers."""
        if not self._kicked:
            self._kicked = True
            try:
                os.eventfd_write(self._wake_fd, 1)
            except (BlockingIOError, OSError):
                pass

    def call(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """Run `fn` under the stack lock and send what it produced."""
        with self.lock:
            self._set_now(time.monotonic())
            try:
                return fn(*args, **kw)
            finally:
                if self._txq:
                    self.flush()
                # wake the loop only when its sleep must end sooner (a new, earlier timer):
                # a send() or recv() per call would otherwise cost an eventfd write each
                d = self.timers.next_deadline()
                if d is not None and d < self._sleep_until:
                    self.kick()

    def now(self) -> float:
        return time.monotonic()

    def defer_kicks(self, on: bool) -> None:
        """This thread's flushes queue packets on the TX rings without the kernel call;
        it calls kick_tx() once it released the lock, so the kernel's TX work (copy-mode
        sendto runs the veth and the receiver) overlaps the other thread's Python."""
        self._tls.defer = on

    def kick_tx(self) -> None:
        """The deferred kernel calls, without the lock (falls back to it to reap)."""
        self._tls.defer = False
        ports = self._unkicked
        while ports:
            try:
                port = ports.pop()
            except KeyError:  # another thread took the last one
                break
            try:
                if not port.kick_tx():
                    with self.lock:
                        port.kick_tx_locked()
            except OSError as exc:
                log.debug("kick failed on %s: %s", port, exc)

    def _set_now(self, now: float) -> None:
        """The host's notion of now (it reads it in calls that take no `now`)."""
        if self._host_has_now:
            self.host.now = now

    def flush(self) -> None:
        """Send the queued packets, each through the port of its source address."""
        q = self._txq
        if not q:
            return
        cs = self._txcs
        self._txq = []
        self._txcs = []
        if self.capture is not None:
            cap_out(self.capture, q)
        default = self.ports[0] if self.ports else None
        pbs = self._port_by_src
        if len(pbs) <= 1:  # one port: the whole queue in one batch
            port = next(iter(pbs.values())) if pbs else default
            groups = [(port, q, cs)] if port is not None else []
        else:
            by_port: dict[int, tuple[Any, list[bytes], list]] = {}
            last = None
            entry = None
            for pkt, c in zip(q, cs):
                # a subflow's burst shares its source: look the port up once per run
                src = pkt[12:16] if pkt[0] >> 4 == 4 else pkt[8:24]
                if src != last:
                    last = src
                    port = pbs.get(bytes(src), default)
                    if port is None:
                        entry = None
                    else:
                        entry = by_port.get(id(port))
                        if entry is None:
                            entry = by_port[id(port)] = (port, [], [])
                if entry is not None:
                    entry[1].append(pkt)
                    entry[2].append(c)
            groups = list(by_port.values())
        offload = self._csum_offload
        defer = getattr(self._tls, "defer", False)
        for port, pkts, c in groups:
            try:
                if defer and hasattr(port, "kick_tx"):
                    port.send_batch(pkts, c if offload else None, kick=False)
                    self._unkicked.add(port)
                elif offload:
                    port.send_batch(pkts, c)
                else:
                    port.send_batch(pkts)
            except OSError as exc:
                log.debug("send_batch failed on %s: %s", port, exc)
        self.counters["tx_packets"] += len(q)

    def _run(self) -> None:
        ep = select.epoll()
        registered: dict[int, Any] = {}
        ep.register(self._wake_fd, select.EPOLLIN)
        wake = self._wake_fd
        timers = self.timers
        host_input = self.host.input
        input_batch = getattr(self.host, "input_batch", None)
        counters = self.counters
        try:
            while not self._stop:
                for port in list(self.ports):
                    fd = port.fileno()
                    if fd not in registered:
                        ep.register(fd, select.EPOLLIN)
                        registered[fd] = port
                with self.lock:  # one hold: a timer added later sees _sleep_until
                    deadline = timers.next_deadline()
                    now = time.monotonic()
                    if self._txq:
                        timeout = 0.0
                    elif deadline is None:
                        timeout = 1.0
                    else:
                        timeout = min(max(deadline - now, 0.0), 1.0)
                    self._sleep_until = now + timeout
                try:
                    events = ep.poll(timeout)
                except InterruptedError:
                    continue
                self._tls.defer = True
                with self.lock:
                    self._sleep_until = 0.0  # awake: call() need not kick
                    now = time.monotonic()
                    counters["loop_iterations"] += 1
                    batch: list = []
                    for fd, _ in events:
                        if fd == wake:
                            self._kicked = False
                            try:
                                os.eventfd_read(wake)
                            except BlockingIOError:
                                pass
                            continue
                        port = registered.get(fd)
                        if port is None:
                            continue
                        # drain several rounds: bigger batches mean fewer ACKs and
                        # pushes (Host.input_batch) and fewer wakeups
                        for _ in range(RX_ROUNDS):
                            try:
                                got = port.recv_batch(RX_BATCH)
                            except OSError as exc:
                                log.debug("recv_batch failed: %s", exc)
                                break
                            batch += got
                            counters["rx_batches"] += 1
                            if len(got) < RX_BATCH:
                                break
                    if batch:
                        counters["rx_packets"] += len(batch)
                        if self.capture is not None:
                            cap_in(self.capture, batch)
                        if input_batch is not None:
                            try:
                                input_batch(batch, now)
                            except Exception:  # the host counts bad packets itself
                                counters["input_errors"] += 1
                                log.debug("host.input_batch failed", exc_info=True)
                        else:
                            for pkt, meta in batch:
                                try:
                                    host_input(pkt, now, meta)
                                except Exception:  # malformed: counted and dropped
                                    counters["input_errors"] += 1
                                    log.debug("host.input failed", exc_info=True)
                    now = time.monotonic()
                    self._set_now(now)
                    timers.run_due(now)
                    self.flush()
                self.kick_tx()
        except Exception:
            log.exception("stack loop crashed")
        finally:
            ep.close()

    # ----------------------------------------------------------------- teardown
    def close(self) -> None:
        """Stop the loop, close ports, release the fast path claims and reserved ports."""
        if self.closed:
            return
        self.closed = True
        self._stop = True
        try:
            self.kick()
        except Exception:
            pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
        if self.control is not None:
            try:
                self.control.stop()
            except Exception:
                pass
        for port in self.ports:
            try:
                port.close()
            except Exception:
                pass
        if self.fastpath is not None:
            self._forget_fast_path_entries()
            for dev in self._claimed:
                try:
                    self.fastpath.release(dev)
                except Exception:
                    pass
            if self._loaded_devices:  # we attached it: leave the devices as we found them
                try:
                    self.fastpath.unload(self._loaded_devices)
                except Exception as exc:
                    log.debug("unload failed: %s", exc)
        if self.capture is not None:
            try:
                self.capture.close()
            except Exception:
                pass
        self.reservations.close()
        try:
            os.close(self._wake_fd)
        except OSError:
            pass
        if Stack._instance is self:
            Stack._instance = None

    def _forget_fast_path_entries(self) -> None:
        """Remove the listeners and subflows this stack put in the fast path. A pinned fast
        path outlives us: left behind, they steer SYNs and segments of a later kernel socket
        on the same port to our closed XDP socket (it then never sees a connection)."""
        fp = self.fastpath
        for fam, ip, port in list(self._fp_listeners):
            try:
                fp.remove_listener(fam, ip, port)
            except Exception as exc:
                log.debug("fast path: cannot remove listener %s: %s", port, exc)
        self._fp_listeners.clear()
        self._deferred_unlisten.clear()
        for lip, lport, rip, rport in list(self._fp_ids):
            _fp_remove_subflow(fp, 6 if len(lip) == 16 else 4, lip, lport, rip, rport)
        self._fp_ids.clear()

    def __enter__(self) -> "Stack":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --------------------------------------------------------------------- glue helpers
def make_host(host_cls: Any, config: StackConfig, timers: TimerWheel,
              output: Callable[[bytes], None]) -> Any:
    """Build the Host with whatever config object its module defines."""
    import importlib
    mod = importlib.import_module(host_cls.__module__)
    cfg_cls = getattr(mod, "HostConfig", None)
    if cfg_cls is None:
        try:
            cfg_cls = importlib.import_module("mptcp_bpf.mptcp.api").HostConfig
        except (ImportError, AttributeError):
            cfg_cls = None
    kw = config.host_kwargs()
    if cfg_cls is not None:
        try:
            names = {f.name for f in fields(cfg_cls)}
        except TypeError:
            names = set(kw)
        hc = cfg_cls(**{k: v for k, v in kw.items() if k in names})
    else:
        hc = kw
    return host_cls(hc, timers, output)


def device_addresses(dev: str) -> list[str]:
    """Global IPv4 and IPv6 addresses of `dev` (pyroute2), IPv4 first."""
    from pyroute2 import IPRoute
    out4, out6 = [], []
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=dev)
        if not idx:
            raise HintedError(f"no such device: {dev}", "list devices with `ip link`")
        for msg in ipr.get_addr(index=idx[0]):
            addr = msg.get_attr("IFA_ADDRESS")
            if msg["family"] == _socket.AF_INET:
                out4.append(addr)
            elif msg["family"] == _socket.AF_INET6 and msg["scope"] == 0:
                out6.append(addr)
    return out4 + out6


def _fp_remove_subflow(fp: Any, family: int, lip: bytes, lport: int, rip: bytes,
                       rport: int) -> None:
    """Take a subflow out of the fast path's map; a failure is logged, never raised (the
    subflow is gone from the stack either way)."""
    try:
        fp.remove_subflow(family, lip, lport, rip, rport)
    except Exception as exc:
        log.debug("fast path: cannot remove subflow: %s", exc)


def default_devices() -> list[str]:
    """Every non-loopback device that is up in this namespace."""
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        out = []
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME")
            if name == "lo" or not (link["flags"] & 1):
                continue
            out.append(name)
        return out


def fastpath_devices() -> list[str]:
    """Devices that already carry the pinned fast path of this namespace (or [])."""
    try:
        from mptcp_bpf.datapath import loader
        fp = loader.FastPath.open_pinned()
    except Exception:
        return []
    try:
        return sorted(fp.devices().values())
    except Exception:
        return []
    finally:
        fp.close()


def route_source(dst: str) -> str | None:
    """The kernel's preferred source address toward `dst` (pyroute2 `ip route get`)."""
    from pyroute2 import IPRoute
    try:
        with IPRoute() as ipr:
            routes = ipr.route("get", dst=dst)
    except Exception:
        return None
    for r in routes:
        src = r.get_attr("RTA_PREFSRC")
        if src:
            return src
    return None


def open_capture(capture_mod: Any, path: str) -> Any:
    try:
        return capture_mod.PcapngWriter(path)
    except OSError as exc:
        raise HintedError(f"cannot write the capture {path}: {exc.strerror}",
                          "give a writable path to --pcap") from None


def cap_out(cap: Any, packets: list[bytes]) -> None:
    cap.write_many(packets, outbound=True)


def cap_in(cap: Any, batch: list[tuple[Any, Any]]) -> None:
    cap.write_many([bytes(p) for p, _ in batch], outbound=False)
