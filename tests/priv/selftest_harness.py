"""Harness that replays the kernel's MPTCP selftests (tools/testing/selftests/net/mptcp/
mptcp_join.sh and friends) with OUR protocol core as one peer and kernel MPTCP as the other.

Shape (the selftests' ns1/ns2 with veths, replaced by TUN devices):
- one namespace `mpbj-<hex>` holds the kernel peer and four TUN devices bk1..bk4 (the
  selftests' four links). Link i carries 10.0.i.0/24 and dead:beef:i::/64; the server side
  (ns1 in the selftests) owns .1 / ::1, the client side (ns2) .2 / ::2, whichever of the
  two the kernel plays.
- our `Host` runs in this process and reads/writes the TUN fds (the namespace and the
  packet loop are kernel_tun.KernelTunLab's, shared with test_mptcp_tun.py); packets for
  addresses we do not own are dropped (what the absent host of an "invalid address" would do).
- the kernel is configured like the selftests (`ip mptcp limits`, `ip mptcp endpoint`,
  net.mptcp.* sysctls); OUR side gets the same configuration through `OurSide`, whose path
  manager (`EndpointPm`) mirrors the in-kernel path manager: signal endpoints are
  announced, subflow endpoints joined, fullmesh endpoints joined to every remote address,
  the limits `subflows` / `add_addr_accepted` respected.
- the checks are the selftests' own (`chk_join_nr`, `chk_add_nr`, ...), expressed as
  expected MPTcpExt counters of ns1 (server) and ns2 (client); only the kernel's namespace
  is read, so a case played in both roles checks the counters of the side the kernel plays.
- netem is absent: links have no delay; fault injection (corruption, option stripping,
  dropping ADD_ADDR echoes) happens here, between the TUN and the Host.
"""

from __future__ import annotations

import hashlib
import ipaddress
import random
import socket
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

from mptcp_bpf.mptcp.host import Host, HostConfig
from mptcp_bpf.mptcp.subflow import SF_CLOSED
from mptcp_bpf.stack import MIB_NAMES
from mptcp_bpf.wire.checksum import csum_finish, csum_partial, pseudo_header_sum
from tests.priv.kernel_tun import IPPROTO_MPTCP, KernelTunLab, read_available, sh

NPATHS = 4
KERNEL_SERVER = "kernel_server"   # kernel = ns1 (listener), we = ns2 (connector)
KERNEL_CLIENT = "kernel_client"   # kernel = ns2 (connector), we = ns1 (listener)
ROLES = (KERNEL_SERVER, KERNEL_CLIENT)

PRE_COUNTERS = ("MPJoinAckRx", "MPJoinSynAckRx", "AddAddr", "EchoAdd", "EchoAddTx")
OUR_MIB = {**MIB_NAMES, "rm_subflow": "RmSubflow"}   # our stats -> MPTcpExt names
FALLBACK_COUNTERS = ("InfiniteMapTx", "DSSCorruptionFallback", "SimultConnectFallback",
                     "MPCapableFallbackACK", "MPCapableFallbackSYNACK",
                     "MPCapableDataFallback", "MD5SigFallback", "DssFallback")


def addr(side: int, path: int, v6: bool = False) -> str:
    """The selftests' addressing: side 1 = server (ns1), 2 = client (ns2)."""
    return f"dead:beef:{path}::{side}" if v6 else f"10.0.{path}.{side}"


# ----------------------------------------------------------------------------- checks

@dataclass(frozen=True)
class Check:
    """Counter `name` of selftest namespace `ns` (1 server, 2 client) compared with `op`."""

    ns: int
    name: str
    op: str      # "==", ">=", "<=", "rst"/"add": == when value is 0 else >=, "simult", "range"
    value: int
    hi: int = 0  # "range": value <= got <= hi

    def ok(self, got: int) -> bool:
        if self.op == "==":
            return got == self.value
        if self.op == ">=":
            return got >= self.value
        if self.op == "<=":
            return got <= self.value
        if self.op == "rst":   # chk_rst_nr: more is fine unless none is expected
            return got == 0 if self.value == 0 else got >= self.value
        if self.op == "add":   # chk_add_nr: retransmissions may add more unless none expected
            return got == 0 if self.value == 0 else got >= self.value
        if self.op == "range":
            return self.value <= got <= self.hi
        if self.op == "simult":   # chk_rm_nr ... simult: both sides' sum in [n, 2n]
            return self.value <= got <= 2 * self.value
        raise ValueError(self.op)

    def __str__(self) -> str:
        hi = f"..{self.hi}" if self.op == "range" else ""
        return f"ns{self.ns or '1+2'}.{self.name} {self.op} {self.value}{hi}"


def chk_join_nr(syn: int, synack: int, ack: int, syn_rej: int = 0, syn_tx: int | None = None,
                fb_ns1: dict | None = None, fb_ns2: dict | None = None,
                cookies: bool = False) -> list[Check]:
    """mptcp_join.sh chk_join_nr (+ chk_join_tx_nr and chk_fallback_nr_all); `cookies`
    (net.ipv4.tcp_syncookies=2): SYN/ACKs up to `syn` tolerated, as upstream."""
    sa = Check(2, "MPJoinSynAckRx", "range", synack, syn) if cookies else \
        Check(2, "MPJoinSynAckRx", "==", synack)
    out = [Check(1, "MPJoinSynRx", "==", syn), sa,
           Check(2, "MPJoinSynAckHMacFailure", "==", 0), Check(1, "MPJoinAckRx", "==", ack),
           Check(1, "MPJoinAckHMacFailure", "==", 0), Check(1, "MPJoinRejected", "==", syn_rej),
           Check(2, "MPJoinSynTx", "==", syn if syn_tx is None else syn_tx)]
    for ns, fb in ((1, fb_ns1 or {}), (2, fb_ns2 or {})):
        for c in FALLBACK_COUNTERS:
            out.append(Check(ns, c, "==", fb.get(c, 0)))
    return out


def chk_add_nr(add: int, echo: int, port: int = 0, invert: bool = False) -> list[Check]:
    tx, rx = (2, 1) if invert else (1, 2)
    out = [Check(rx, "AddAddr", "add", add), Check(tx, "EchoAdd", "==", echo)]
    if port:
        out += [Check(rx, "PortAdd", "==", port), Check(tx, "MPJoinPortSynRx", "==", port),
                Check(rx, "MPJoinPortSynAckRx", "==", port), Check(tx, "MPJoinPortAckRx", "==", port),
                Check(tx, "MismatchPortSynRx", "==", 0), Check(tx, "MismatchPortAckRx", "==", 0)]
    return out


def chk_add_tx_nr(add_tx: int, echo_tx: int) -> list[Check]:
    return [Check(1, "AddAddrTx", "add", add_tx), Check(2, "EchoAddTx", "==", echo_tx)]


def chk_rm_nr(rm_addr: int, rm_sf: int, invert: bool = False, simult: bool = False) -> list[Check]:
    """With `simult` (both sides flush at once) the RmSubflow of ns1 and ns2 are summed
    (ns 0 = the sum) and must lie in [rm_sf, 2 rm_sf], as upstream."""
    addr_ns, sf_ns = (2, 1) if invert else (1, 2)
    sf = Check(0, "RmSubflow", "simult", rm_sf) if simult else Check(sf_ns, "RmSubflow", "==", rm_sf)
    return [Check(addr_ns, "RmAddr", "==", rm_addr), sf]


def chk_rm_tx_nr(n: int) -> list[Check]:
    return [Check(2, "RmAddrTx", "==", n)]


def chk_prio_nr(tx: int, rx: int, syn_backup: int, synack_backup: int) -> list[Check]:
    # as in the selftest, both MP_PRIO counters are read in ns1
    return [Check(1, "MPPrioTx", "==", tx), Check(1, "MPPrioRx", "==", rx),
            Check(1, "MPJoinSynBackupRx", "==", syn_backup),
            Check(2, "MPJoinSynAckBackupRx", "==", synack_backup)]


def chk_fclose_nr(tx: int, rx: int, invert: bool = False) -> list[Check]:
    t, r = (1, 2) if invert else (2, 1)
    return [Check(t, "MPFastcloseTx", "==", tx), Check(r, "MPFastcloseRx", "==", rx)]


def chk_rst_nr(tx: int, rx: int, invert: bool = False) -> list[Check]:
    t, r = (2, 1) if invert else (1, 2)
    return [Check(t, "MPRstTx", "rst", tx), Check(r, "MPRstRx", "rst", rx)]


def chk_csum_nr(ns1: int = 0, ns2: int = 0, ns1_more: bool = False) -> list[Check]:
    return [Check(1, "DataCsumErr", ">=" if ns1_more else "==", ns1),
            Check(2, "DataCsumErr", "==", ns2)]


def chk_fail_nr(tx: int, rx: int, invert: bool = False, rx_may_be_lost: bool = False) -> list[Check]:
    t, r = (2, 1) if invert else (1, 2)
    return [Check(t, "MPFailTx", "==", tx), Check(r, "MPFailRx", "<=" if rx_may_be_lost else "==", rx)]


def chk_infi_nr(tx: int, rx: int) -> list[Check]:
    return [Check(2, "InfiniteMapTx", "==", tx), Check(1, "InfiniteMapRx", "==", rx)]


# --------------------------------------------------------------------- our configuration

@dataclass
class Endpoint:
    """One `ip mptcp endpoint` of OUR side (flags as in iproute2)."""

    addr: str
    flags: tuple = ("subflow",)
    id: Optional[int] = None
    port: Optional[int] = None

    def has(self, f: str) -> bool:
        return f in self.flags


@dataclass
class OurSide:
    """Path-manager configuration of our Host, in the selftests' terms."""

    subflows: int = 2             # ip mptcp limits subflow N (kernel default 2)
    add_addr_accepted: int = 0    # ip mptcp limits add_addr_accepted N (kernel default 0)
    endpoints: list = field(default_factory=list)
    checksum: bool = False
    deny_join_id0: bool = False   # net.mptcp.allow_join_initial_addr_port=0 (MP_CAPABLE C)


class EndpointPm:
    """Our side's path manager for the replay: the in-kernel PM's rules (pm_netlink.c) on
    top of the connection's PmConnection actions."""

    name = "selftest"

    def __init__(self, side: OurSide, lab: "Lab") -> None:
        self.side = side
        self.lab = lab
        self.opened = 0           # additional subflows created or accepted (kernel: pm.subflows)
        self.accepted = 0         # ADD_ADDRs accepted
        self.announced: set[int] = set()
        self.conn: Any = None
        self.early: list[Any] = []   # ADD_ADDRs seen before the connection was fully established

    def _ids(self) -> dict[str, int]:
        return {str(la.address): la.id for la in self.lab.host.addresses}

    def _open(self, conn: Any, local: str, remote: Any, port: int, backup: bool) -> bool:
        if self.opened >= self.side.subflows:
            return False
        ra = ipaddress.ip_address(remote)
        la = ipaddress.ip_address(local)
        if la.version != ra.version or conn.has_subflow(la, ra, port):
            return False
        sf = conn.open_subflow(la, ra, port, backup=backup)
        if sf is not None:
            self.opened += 1
            self.lab.log.append(f"join {local} -> {remote}:{port}{' backup' if backup else ''}")
        return sf is not None

    def on_established(self, conn: Any) -> None:
        self.conn = conn
        self.lab.conn_ready(conn)
        # the MPC subflow's endpoint: with the backup flag, MP_PRIO backup on the initial
        # subflow, either role (pm_kernel.c, "lazy endpoint usage accounting for the MPC")
        if any(ep.has("backup") and ipaddress.ip_address(ep.addr) == conn.local_ip
               for ep in self.side.endpoints) and conn.subflows:
            self.lab.log.append("mpc backup: set_prio")
            conn.set_prio(conn.subflows[0], True)
        for ep in self.side.endpoints:
            self.endpoint_added(conn, ep)
        early, self.early = self.early, []
        for ra in early:
            self.on_add_addr(conn, ra)

    def endpoint_added(self, conn: Any, ep: Endpoint) -> None:
        ids = self._ids()
        if ep.has("signal") and str(ipaddress.ip_address(ep.addr)) != str(conn.local_ip):
            i = ids.get(str(ipaddress.ip_address(ep.addr)), ep.id or 0)
            if i not in self.announced:
                conn.announce(i, ipaddress.ip_address(ep.addr), ep.port)
                self.announced.add(i)
        if ep.has("subflow") and conn.role == "client":
            if str(ipaddress.ip_address(ep.addr)) == str(conn.local_ip):
                return  # 'no MPC reuse': an endpoint equal to the MPC source adds nothing
            remotes = list(conn.remote_addresses) if ep.has("fullmesh") else conn.remote_addresses[:1]
            for ra in remotes:
                self._open(conn, ep.addr, ra.address, ra.port, ep.has("backup"))

    def on_add_addr(self, conn: Any, ra: Any) -> None:
        if conn.role != "client":
            return
        if not conn.fully_established:
            self.early.append(ra)   # the kernel PM handles it once the MPC handshake is done
            return
        if self.accepted >= self.side.add_addr_accepted or self.opened >= self.side.subflows:
            return
        self.accepted += 1
        fm = [ep for ep in self.side.endpoints if ep.has("fullmesh")
              and ipaddress.ip_address(ep.addr).version == ra.address.version]
        if fm:
            for ep in fm:
                self._open(conn, ep.addr, ra.address, ra.port, ep.has("backup"))
        else:
            src = self.lab.source_for(ra.address)
            if src is not None:   # a join from a backup endpoint has B=1, as the kernel's
                backup = any(ep.has("backup") and ipaddress.ip_address(ep.addr) == src
                             for ep in self.side.endpoints)
                self._open(conn, str(src), ra.address, ra.port, backup)

    def on_rm_addr(self, conn: Any, ids: Any) -> None:
        pass

    def on_subflow_closed(self, conn: Any, sf: Any, error: Any) -> None:
        pass


# ----------------------------------------------------------------------- packet surgery

def _tcp_offsets(p: bytearray) -> tuple[int, int, int]:
    """(TCP header offset, payload offset, end) of an IPv4/IPv6 TCP packet without ext hdrs."""
    if p[0] >> 4 == 4:
        t = (p[0] & 0x0F) * 4
        end = int.from_bytes(p[2:4], "big")
    else:
        t = 40
        end = 40 + int.from_bytes(p[4:6], "big")
    return t, t + (p[t + 12] >> 4) * 4, end


def fix_tcp_checksum(p: bytearray) -> None:
    t, _, end = _tcp_offsets(p)
    src, dst = (bytes(p[12:16]), bytes(p[16:20])) if p[0] >> 4 == 4 else (bytes(p[8:24]), bytes(p[24:40]))
    p[t + 16:t + 18] = b"\0\0"
    s = csum_partial(bytes(p[t:end]), pseudo_header_sum(src, dst, 6, end - t))
    p[t + 16:t + 18] = struct.pack("!H", csum_finish(s))


def tcp_flags(p: bytes) -> int:
    t, _, _ = _tcp_offsets(bytearray(p[:80]))
    return p[t + 13]


def _options(p: bytes | bytearray, t: int, data: int) -> Iterator[tuple[int, int, int]]:
    """(offset, kind, length) of each TCP option of the header at `t`, up to the end of
    option list or a malformed length; the length is read before the caller may overwrite."""
    i = t + 20
    while i < data:
        k = p[i]
        if k == 0:
            break
        if k == 1:
            i += 1
            continue
        if i + 1 >= data or p[i + 1] < 2:
            break
        n = p[i + 1]
        yield i, k, n
        i += n


def mptcp_subtypes(p: bytes) -> list[int]:
    """MPTCP suboption subtypes carried by a packet."""
    t, data, _ = _tcp_offsets(bytearray(p[:120]))
    return [p[i + 2] >> 4 for i, k, _ in _options(p, t, data) if k == 30 and i + 2 < data]


def strip_mptcp(p: bytes) -> bytes:
    """Replace every MPTCP option with NOPs and fix the TCP checksum (a hostile middlebox)."""
    b = bytearray(p)
    t, data, _ = _tcp_offsets(b)
    for i, k, n in _options(b, t, data):
        if k == 30:
            b[i:i + n] = b"\x01" * n
    fix_tcp_checksum(b)
    return bytes(b)


def payload_len(p: bytes) -> int:
    t, data, end = _tcp_offsets(bytearray(p[:120]))
    return end - data


def corrupt_payload(p: bytes) -> bytes:
    """Invert one payload byte and fix the TCP checksum: only the DSS checksum can see it
    (the selftests do this with pedit + csum)."""
    b = bytearray(p)
    _, data, end = _tcp_offsets(b)
    i = data + (end - data) // 2
    b[i] ^= 0xFF
    fix_tcp_checksum(b)
    return bytes(b)


class Tamper:
    """Per-direction packet filter: returns the packet (possibly changed) or None to drop."""

    def __init__(self) -> None:
        self.fns: list[Callable[[int, bytes], Optional[bytes]]] = []
        self.hits: dict[str, int] = {}

    def add(self, fn: Callable[[int, bytes], Optional[bytes]]) -> None:
        self.fns.append(fn)

    def __call__(self, path: int, p: bytes) -> Optional[bytes]:
        for fn in self.fns:
            p2 = fn(path, p)
            if p2 is None:
                return None
            p = p2
        return p

    def hit(self, what: str) -> None:
        self.hits[what] = self.hits.get(what, 0) + 1


def corrupt_nth_data(tamper: Tamper, path: int | None, nth: int = 1, min_len: int = 150,
                     armed: Callable[[], bool] = lambda: True) -> None:
    """Corrupt the `nth` (0-based) packet on `path` (None: any) with at least `min_len`
    payload bytes, once, counting only while `armed()` (the selftests'
    `-m statistic --mode nth --packet 1 --every 99999`)."""
    seen = [0]

    def fn(pth: int, p: bytes) -> bytes:
        if (path is None or pth == path) and payload_len(p) >= min_len and armed():
            seen[0] += 1
            if seen[0] == nth + 1:
                tamper.hit("corrupted")
                return corrupt_payload(p)
        return p
    tamper.add(fn)


def drop_subtype(tamper: Tamper, subtype: int) -> None:
    """Drop packets carrying an MPTCP suboption of `subtype` (3 = ADD_ADDR)."""
    def fn(pth: int, p: bytes) -> Optional[bytes]:
        if subtype in mptcp_subtypes(p):
            tamper.hit(f"dropped_subtype_{subtype}")
            return None
        return p
    tamper.add(fn)


def rm_addr_ids(p: bytes) -> list[int]:
    """Number of address ids in each REMOVE_ADDR (8684 §3.4.2: 3 + n bytes) of a packet."""
    t, data, _ = _tcp_offsets(bytearray(p[:120]))
    return [n - 3 for i, k, n in _options(p, t, data)
            if k == 30 and i + 2 < data and p[i + 2] >> 4 == 4]


def watch_rm_addr(tamper: Tamper, seen: list[int]) -> None:
    """Append the id count of every REMOVE_ADDR passing `tamper` to `seen`."""
    def fn(pth: int, p: bytes) -> bytes:
        seen.extend(rm_addr_ids(p))
        return p
    tamper.add(fn)


def strip_syn(tamper: Tamper, synack: bool) -> None:
    """Strip MPTCP options from SYNs (synack=False) or SYN/ACKs (synack=True)."""
    def fn(pth: int, p: bytes) -> bytes:
        fl = tcp_flags(p)
        if fl & 0x02 and bool(fl & 0x10) == synack:
            tamper.hit("stripped")
            return strip_mptcp(p)
        return p
    tamper.add(fn)


# ----------------------------------------------------------------------------- the lab

class Lab(KernelTunLab):
    """Kernel namespace with four TUN links and our Host on the other end."""

    def __init__(self, role: str, *, kernel_checksum: bool = False) -> None:
        assert role in ROLES
        self.role = role
        self.kside = 1 if role == KERNEL_SERVER else 2    # selftest ns the kernel plays
        self.oside = 3 - self.kside
        self.log: list[str] = []
        self.tamper_in = Tamper()    # kernel -> us
        self.tamper_out = Tamper()   # us -> kernel
        self.conn: Any = None
        self._ready_conns: list[Any] = []
        self.dropped_unknown_dst = 0
        self.our_addrs: set[bytes] = set()
        self.armed = False           # set once the mid-connection phase starts
        self.routes: dict[str, int] = {}   # our side's host routes: destination -> link
        links = [(f"bk{i}", [f"{addr(self.kside, i)}/24", f"{addr(self.kside, i, True)}/64"])
                 for i in range(1, NPATHS + 1)]
        super().__init__(f"mpbj-{uuid.uuid4().hex[:8]}", links,
                         [f"net.mptcp.checksum_enabled={int(kernel_checksum)}"])

    def setup(self) -> None:
        sh("ip", "netns", "exec", self.ns, "sysctl", "-qw", "net.mptcp.pm_type=0", check=False)
        if self.kside == 2:
            # the selftests' client reaches any server address from any link
            for i in range(1, NPATHS + 1):
                sh("ip", "-n", self.ns, "route", "add", "default", "via", addr(1, i),
                   "dev", f"bk{i}", "metric", str(100 + i))
                sh("ip", "-n", self.ns, "-6", "route", "add", "default", "via",
                   addr(1, i, True), "dev", f"bk{i}", "metric", str(100 + i))

    # -------------------------------------------------------------- kernel configuration
    def kernel_limits(self, add_addr_accepted: int, subflows: int) -> None:
        """pm_nl_set_limits NS ADD_ADDR_ACCEPTED SUBFLOWS (the selftests' argument order)."""
        sh("ip", "-n", self.ns, "mptcp", "limits", "set", "subflow", str(subflows),
           "add_addr_accepted", str(add_addr_accepted))

    def kernel_endpoint(self, a: str, *flags: str, id: int | None = None, port: int | None = None,
                        dev: int | None = None) -> None:
        args = ["ip", "-n", self.ns, "mptcp", "endpoint", "add", a]
        if port:
            args += ["port", str(port)]
        if dev:
            args += ["dev", f"bk{dev}"]
        if id is not None:
            args += ["id", str(id)]
        sh(*args, *flags)

    def kernel_endpoint_del(self, id: int, a: str | None = None) -> None:
        sh("ip", "-n", self.ns, "mptcp", "endpoint", "delete", "id", str(id), *([a] if a else []))

    def kernel_endpoint_change(self, id: int, *flags: str) -> None:
        sh("ip", "-n", self.ns, "mptcp", "endpoint", "change", "id", str(id), *flags)

    def kernel_endpoint_flush(self) -> None:
        sh("ip", "-n", self.ns, "mptcp", "endpoint", "flush")

    def kernel_endpoints(self) -> list[dict]:
        """[{id, addr, flags}] of the kernel's endpoints (ip mptcp endpoint show)."""
        out = []
        for line in sh("ip", "-n", self.ns, "mptcp", "endpoint", "show").splitlines():
            w = line.split()
            if not w:
                continue
            d = {"addr": w[0], "id": int(w[w.index("id") + 1]) if "id" in w else None}
            out.append(d)
        return out

    # ---------------------------------------------------------------------- our side
    def make_host(self, side: OurSide) -> Host:
        self.side = side
        self.new_host(HostConfig(checksum=side.checksum, path_manager="default",
                                 join_limit=side.subflows, deny_join_id0=side.deny_join_id0))
        ep_ids = {str(ipaddress.ip_address(e.addr)): e.id for e in side.endpoints}
        # endpoints first (their ids as configured, else 1, 2, ... like the kernel), then the
        # other addresses of our links with "implicit" ids
        nxt = 1
        for e in side.endpoints:
            a = str(ipaddress.ip_address(e.addr))
            if e.id is None:
                used = {la.id for la in self.host.addresses} | {i for i in ep_ids.values() if i}
                while nxt in used:
                    nxt += 1
                e.id = nxt
            self.host.add_address(a, addr_id=e.id, port=e.port or 0, backup=e.has("backup"))
        implicit = 100
        for v6 in (False, True):
            for i in range(1, NPATHS + 1):
                a = addr(self.oside, i, v6)
                if not any(str(la.address) == str(ipaddress.ip_address(a)) for la in self.host.addresses):
                    self.host.add_address(a, addr_id=implicit)
                    implicit += 1
        # we own the addresses of our links only (an endpoint elsewhere is not reachable)
        self.our_addrs = {ipaddress.ip_address(addr(self.oside, i, v6)).packed
                          for i in range(1, NPATHS + 1) for v6 in (False, True)}
        self.host.source_for = self.source_for
        self.host.on_event = self._on_event
        return self.host

    def source_for(self, raddr: Any) -> Any:
        """Routing of our side: the address on the same link, else link 1 (default route)."""
        raddr = ipaddress.ip_address(raddr)
        path = self.routes.get(str(raddr)) or self.path_of(raddr.packed) or 1
        return ipaddress.ip_address(addr(self.oside, path, raddr.version == 6))

    @staticmethod
    def path_of(a: bytes) -> int:
        if len(a) == 4:
            return a[2] if a[0] == 10 and a[1] == 0 and 1 <= a[2] <= NPATHS else 0
        if a[:4] == b"\xde\xad\xbe\xef" and 1 <= int.from_bytes(a[4:6], "big") <= NPATHS:
            return int.from_bytes(a[4:6], "big")
        return 0

    def _on_event(self, ev: dict) -> None:
        self.log.append(f"{ev.get('type')} {ev.get('saddr', '')} {ev.get('daddr', '')} "
                        f"{ev.get('error') or ''}".strip())
        if ev.get("type") == "created":
            c = self.host.conns.get(int(ev["token"], 16))
            if c is not None:
                c.pm = EndpointPm(self.side, self)
                c.path_manager = "selftest"

    def our_mib(self) -> dict[str, int]:
        """Our Host's counters under the kernel's MPTcpExt names (stack.MIB_NAMES)."""
        out = {m: 0 for m in OUR_MIB.values()}
        for k, v in self.host.stats.items():
            if k in OUR_MIB:
                out[OUR_MIB[k]] += int(v)
        return out

    def conn_ready(self, conn: Any) -> None:
        self._ready_conns.append(conn)

    # ---------------------------------------------------------------------- the loop
    # paths are numbered 1..NPATHS (link i = tuns[i - 1]), as in the tamper functions
    def route(self, p: bytes) -> int:
        src = p[12:16] if p[0] >> 4 == 4 else p[8:24]
        dst = p[16:20] if p[0] >> 4 == 4 else p[24:40]
        return (self.path_of(dst) or self.path_of(src) or 1) - 1

    def egress(self, i: int, p: bytes) -> Optional[bytes]:
        return self.tamper_out(i + 1, p) if self.tamper_out.fns else p

    def ingress(self, i: int, p: bytes) -> Optional[bytes]:
        dst = p[16:20] if p[0] >> 4 == 4 else p[24:40]
        if dst not in self.our_addrs:
            self.dropped_unknown_dst += 1
            return None
        return self.tamper_in(i + 1, p) if self.tamper_in.fns else p


# ------------------------------------------------------------------------- kernel app

class KernelApp:
    """The kernel peer's application (the selftests' mptcp_connect): sends `first`, waits
    for `go`, sends `second`, half-closes, reads until EOF. With `fastclose` it stops after
    `first` and closes with unread data and SO_LINGER 0 (MP_FASTCLOSE, as `-f` does)."""

    def __init__(self, lab: Lab, target: tuple[str, int] | None, port: int,
                 first: bytes, second: bytes, fastclose: bool = False, proto: int = IPPROTO_MPTCP) -> None:
        self.lab = lab
        self.first, self.second = first, second
        self.fastclose = fastclose
        self.go = threading.Event()
        self.got = bytearray()
        self.error: Optional[str] = None
        self.done = threading.Event()
        self.connected = threading.Event()
        self.listener: Optional[socket.socket] = None
        if target is None:   # server: a dual-stack wildcard listener (mptcp_connect binds "::")
            s = lab.ksocket(socket.AF_INET6, proto)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("::", port))
            s.listen(8)
            self.listener = s
            self.sock = None
        else:
            fam = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
            self.sock = lab.ksocket(fam, proto)
        self.target = target
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        conn = None
        try:
            if self.listener is not None:
                self.listener.settimeout(30)
                conn, _ = self.listener.accept()
            else:
                conn = self.sock
                conn.settimeout(30)
                conn.connect(self.target)
            self.conn = conn
            self.connected.set()
            conn.settimeout(60)
            if self.fastclose:
                conn.sendall(self.first)
                self.go.wait(30)
                time.sleep(0.3)   # let the peer's data sit unread
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
                conn = None
                return
            reader = threading.Thread(target=self._read, args=(conn,), daemon=True)
            reader.start()
            conn.sendall(self.first)
            self.go.wait(60)
            conn.sendall(self.second)
            conn.shutdown(socket.SHUT_WR)
            reader.join(60)
        except BaseException as e:
            self.error = repr(e)
        finally:
            if conn is not None:
                try:
                    conn.close()
                except OSError:
                    pass
            self.done.set()

    def _read(self, conn: socket.socket) -> None:
        try:
            while True:
                b = conn.recv(1 << 16)
                if not b:
                    return
                self.got.extend(b)
        except OSError as e:
            if self.error is None:
                self.error = f"read: {e!r}"

    def close(self) -> None:
        for s in (self.listener, self.sock):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
        self.thread.join(5)


# ---------------------------------------------------------------------------- a case

@dataclass
class Ns:
    """The selftest configuration of one namespace (ns1 = server, ns2 = client); applied to
    the kernel or to our Host, whichever plays that namespace."""

    limits: Optional[tuple] = None     # pm_nl_set_limits: (add_addr_accepted, subflows)
    eps: list = field(default_factory=list)   # Endpoint list (pm_nl_add_endpoint)
    checksum: bool = False             # net.mptcp.checksum_enabled
    allow_join_id0: bool = True        # net.mptcp.allow_join_initial_addr_port
    sysctls: tuple = ()                # extra kernel sysctls ("net.mptcp.add_addr_timeout=1")
    routes: tuple = ()                 # (destination, link): `ip route add DST via .. dev ethLINK`


def ep(a: str, flags: str = "subflow", id: int | None = None, port: int | None = None,
       dev: int | None = None) -> Endpoint:
    e = Endpoint(a, tuple(flags.split(",")), id, port)
    e.dev = dev  # type: ignore[attr-defined]
    return e


@dataclass
class Act:
    """A mid-connection action of the selftests' pm_nl_set_endpoint: on namespace `ns`,
    "del" the first `n` endpoints (addr_nr_nsX=-n), "del0" the initial address
    (addr_nr_nsX=-9), "add" endpoint `e` (addr_nr_nsX>0, fullmesh=N), "change" flags
    (sflags=...)."""

    ns: int
    op: str
    n: int = 1
    e: Optional[Endpoint] = None
    flags: str = ""


def apply_kernel(lab: Lab, n: Ns) -> None:
    if n.limits is not None:
        lab.kernel_limits(*n.limits)
    lab.sysctl(f"net.mptcp.checksum_enabled={int(n.checksum)}",
               f"net.mptcp.allow_join_initial_addr_port={int(n.allow_join_id0)}", *n.sysctls)
    for e in n.eps:
        lab.kernel_endpoint(e.addr, *e.flags, id=e.id, port=e.port, dev=getattr(e, "dev", None))
    for dst, link in n.routes:
        sh("ip", "-n", lab.ns, "route", "add", dst, "via", addr(3 - lab.kside, link),
           "dev", f"bk{link}")


def our_side(n: Ns) -> OurSide:
    lim = n.limits if n.limits is not None else (0, 2)
    return OurSide(subflows=lim[1], add_addr_accepted=lim[0],
                   endpoints=[Endpoint(e.addr, e.flags, e.id, e.port) for e in n.eps],
                   checksum=n.checksum, deny_join_id0=not n.allow_join_id0)


def do_action(lab: Lab, conn: Any, a: Act) -> None:
    """Run `a` on the kernel (ip mptcp endpoint ...) or on our connection."""
    if a.ns == lab.kside:
        eps = lab.kernel_endpoints()
        if a.op == "del":
            for d in eps[:a.n]:
                lab.kernel_endpoint_del(d["id"])
                lab.sleep(0.3)   # wait_rm_addr: RM_ADDRs are serialized
        elif a.op == "del0":
            lab.kernel_endpoint_del(0, addr(a.ns, 1))
        elif a.op == "add":
            e = a.e
            lab.kernel_endpoint(e.addr, *e.flags, id=e.id, port=e.port)
        elif a.op == "change":
            for d in eps:
                lab.kernel_endpoint_change(d["id"], *a.flags.split(","))
        elif a.op == "flush":
            lab.kernel_endpoint_flush()
        return
    if conn is None or conn.closed:
        return
    pm = conn.pm
    side = lab.side
    if a.op == "del":
        for e in list(side.endpoints[:a.n]):
            side.endpoints.remove(e)
            lab.log.append(f"remove_addr {e.id} ({e.addr})")
            lab.host.count("rm_subflow", sum(1 for s in conn.subflows if s.local_id == e.id
                                             and s.mp_state != SF_CLOSED))
            conn.remove_addr([e.id])
            lab.sleep(0.3)
    elif a.op == "del0":
        lab.log.append("remove_addr 0")
        conn.remove_addr([0])
    elif a.op == "flush":
        flush_ours(lab, conn)
    elif a.op == "add":
        e = Endpoint(a.e.addr, a.e.flags, a.e.id, a.e.port)
        ip = ipaddress.ip_address(e.addr)
        e.id = next(la.id for la in lab.host.addresses if la.address == ip)
        side.endpoints.append(e)
        if isinstance(pm, EndpointPm):
            pm.endpoint_added(conn, e)
    elif a.op == "change":
        for f in a.flags.split(","):
            if f in ("backup", "nobackup"):
                for e in side.endpoints:
                    ip = ipaddress.ip_address(e.addr)
                    for sf in list(conn.subflows):
                        if sf.local_addr == ip and bool(sf.backup) != (f == "backup"):
                            lab.log.append(f"set_prio {sf.local_addr} {f}")
                            conn.set_prio(sf, f == "backup")


def flush_ours(lab: Lab, conn: Any) -> None:
    """`ip mptcp endpoint flush` on our side with the kernel's semantics
    (mptcp_pm_flush_addrs_and_subflows): ONE RM_ADDR carrying the ids of all announced
    endpoints (8684 §3.4.2 allows a list), and the subflows from any endpoint address --
    the implicit ones of joins to announced addresses included -- closed without RM_ADDR.
    Counts our RmSubflow (the subflows we closed), which our core does not keep."""
    side = lab.side
    ips = {ipaddress.ip_address(e.addr) for e in side.endpoints}
    side.endpoints.clear()
    # the kernel makes an implicit endpoint of a join's source address (not of the
    # initial address: joins to it, on a server, use local id 0)
    ips |= {s.local_addr for s in conn.subflows if s.join and s.local_addr != conn.local_ip}
    ids = sorted({la.id for la in lab.host.addresses if la.address in ips} & set(conn.pm.announced))
    live = [s for s in conn.subflows if s.local_addr in ips and s.mp_state != SF_CLOSED]
    lab.log.append(f"flush: rm_addr {ids}, close {[str(s.local_addr) for s in live]}")
    if ids:
        conn.remove_addr(ids)
    for s in live:
        conn._close_removed(s)
    lab.host.count("rm_subflow", len(live))


@dataclass
class Case:
    """One selftest case: ns1/ns2 configuration, mid-connection `acts` (run once the `pre`
    checks hold), the selftest's `expect` checks."""

    name: str
    ns1: Ns = field(default_factory=Ns)
    ns2: Ns = field(default_factory=Ns)
    acts: list = field(default_factory=list)
    pre: list = field(default_factory=list)
    expect: list = field(default_factory=list)
    v6: bool = False
    connect_to: Optional[str] = None     # server address the client connects to
    size: int = 32 << 10                 # bytes per half, each direction
    fastclose: Optional[str] = None      # "client" | "server"
    tamper: Optional[Callable[[Lab], None]] = None
    want_fallback: bool = False
    corrupt: bool = False                # data may differ by inverted bytes (MP_FAIL cases)
    settle: float = 0.3
    timeout: float = 25.0
    roles: tuple = ROLES                 # roles where the case makes sense
    hold: float = 0.0                    # keep the connection open this long (no acts)
    xfail: dict = field(default_factory=dict)   # role -> reason (a known core bug)
    kernel_tcp: bool = False             # the kernel peer uses plain TCP (IPPROTO_TCP)
    check_ours: tuple = ()               # counters also compared on our side (OUR_MIB names)
    rm_ids: Optional[int] = None         # ns1 sends one REMOVE_ADDR with this many ids (flush)


@dataclass
class Result:
    mib: dict
    checked: list
    failed: list
    conn: Any
    log: list
    stats: dict
    kernel_error: Optional[str]
    data_ok: bool
    detail: str


def throttled(pred: Callable[[], bool], every: float = 0.2) -> Callable[[], bool]:
    """`pred` evaluated at most every `every` seconds (reading counters forks `ip netns
    exec`; the packet loop must not pay that on every turn)."""
    last = [0.0, False]

    def fn() -> bool:
        now = time.monotonic()
        if now - last[0] >= every:
            last[0] = now
            last[1] = pred()
        return bool(last[1])
    return fn


def _checks_for(lab: Lab, checks: list[Check], ours: tuple = ()) -> list[Check]:
    """The checks of the kernel's namespace, the two-side sums (ns 0), and those of our
    side on the counters named in `ours` (our Host's counters with the same meaning as
    the kernel's: OUR_MIB; MPJoinAckRx, for one, is counted on the other side by us)."""
    return [c for c in checks if c.ns in (lab.kside, 0)
            or (c.ns == lab.oside and c.name in ours)]


def _eval(lab: Lab, checks: list[Check], before: dict) -> tuple[dict, list]:
    now = lab.mib()
    delta = {k: now.get(k, 0) - before.get(k, 0) for k in now}
    ours = lab.our_mib()
    bad = []
    for c in checks:
        if c.ns == lab.oside:
            got = ours.get(c.name)
        elif c.ns == 0:   # both sides summed
            got = delta.get(c.name, 0) + ours.get(c.name, 0)
        else:
            got = delta.get(c.name)
        if got is not None and not c.ok(got):
            bad.append((c, got))
    return delta, bad


def run_case(role: str, case: Case) -> Result:
    lab = Lab(role)
    try:
        return _run(lab, case)
    finally:
        lab.close()


def _run(lab: Lab, case: Case) -> Result:
    role = lab.role
    apply_kernel(lab, case.ns1 if lab.kside == 1 else case.ns2)
    ours = case.ns2 if lab.kside == 1 else case.ns1
    side = our_side(ours)
    lab.routes = {str(ipaddress.ip_address(d)): link for d, link in ours.routes}
    host = lab.make_host(side)
    if case.tamper is not None:
        case.tamper(lab)
    rm_seen: list[int] = []   # id counts of ns1's REMOVE_ADDRs, whichever side plays ns1
    if case.rm_ids is not None:
        watch_rm_addr(lab.tamper_out if lab.oside == 1 else lab.tamper_in, rm_seen)
    rng = random.Random(case.name)
    k1, k2 = rng.randbytes(case.size), rng.randbytes(case.size + 3)
    o1, o2 = rng.randbytes(case.size + 5), rng.randbytes(case.size + 1)
    port = 10000 + random.randrange(20000)
    server_addr = case.connect_to or addr(1, 1, case.v6)
    before = lab.mib()
    checks = _checks_for(lab, case.expect, case.check_ours)
    # without netem the transfer is over in milliseconds: unless the case says otherwise,
    # hold the connection until the joins and ADD_ADDRs it expects have happened
    pre = _checks_for(lab, case.pre or [Check(c.ns, c.name, ">=", c.value) for c in case.expect
                                        if c.name in PRE_COUNTERS and c.value > 0])
    kernel_fc = case.fastclose == ("server" if role == KERNEL_SERVER else "client")
    ours_fc = case.fastclose is not None and not kernel_fc
    conn_box: dict[str, Any] = {}
    if role == KERNEL_SERVER:
        app = KernelApp(lab, None, port, k1, k2, fastclose=kernel_fc,
                        proto=0 if case.kernel_tcp else IPPROTO_MPTCP)
        c = host.connect((server_addr, port), (str(lab.source_for(ipaddress.ip_address(server_addr))), 0),
                         now=time.monotonic())
        conn_box["c"] = c
    else:
        lst = host.listen(None, port)
        app = KernelApp(lab, (server_addr, port), port, k1, k2, fastclose=kernel_fc,
                        proto=0 if case.kernel_tcp else IPPROTO_MPTCP)

        def _acc() -> None:
            if "c" not in conn_box:
                c = lst.accept()
                if c is not None:
                    conn_box["c"] = c
    got = bytearray()
    st = {"sent": 0, "shut": False}
    out = o1

    def pump() -> None:
        if role == KERNEL_CLIENT:
            _acc()
        c = conn_box.get("c")
        if c is None or c.error is not None:
            return
        if c.connected and st["sent"] < len(out) and not st["shut"]:
            try:
                st["sent"] += c.send(out[st["sent"]:st["sent"] + (1 << 18)])
            except (BrokenPipeError, OSError):
                pass
        try:
            read_available(c, got)
        except OSError:
            pass

    detail = []
    try:
        # phase 1: connect and exchange the first halves
        def first_done() -> bool:
            pump()
            c = conn_box.get("c")
            return (c is not None and (c.error is not None or
                    (st["sent"] >= len(o1) and len(got) >= (len(k1) if not kernel_fc else 0))))
        if not lab.run_until(first_done, case.timeout):
            detail.append("phase 1 (first halves) timed out")
        c = conn_box.get("c")
        # phase 2: wait for the pre-conditions, then the mid-connection actions
        if case.acts or pre or case.hold:
            if pre:
                pre_ok = throttled(lambda: not _eval(lab, pre, before)[1])
                lab.run_until(lambda: (pump(), pre_ok())[1], 12)
            lab.run_until(lambda: (pump(), False)[1], (0.5 if case.acts else 0.1) + case.hold)
            lab.armed = True
            for a in case.acts:
                do_action(lab, c, a)
                lab.run_until(lambda: (pump(), False)[1], 0.5)
        if ours_fc and c is not None:
            c.abort()
            app.go.set()
            lab.run_until(lambda: app.done.is_set(), 10)
        elif kernel_fc:
            app.go.set()
            lab.run_until(lambda: (pump(), c is not None and c.error is not None)[1], 10)
        else:
            # phase 3: second halves, half-close both ways
            out = o2
            st["sent"] = 0
            app.go.set()

            def second() -> bool:
                pump()
                cc = conn_box.get("c")
                if cc is None or cc.error is not None:
                    return True
                if st["sent"] >= len(out) and not st["shut"] and cc.connected:
                    cc.shutdown()
                    st["shut"] = True
                return cc.eof and st["shut"] and app.done.is_set()
            if not lab.run_until(second, case.timeout):
                detail.append("phase 3 (second halves + close) timed out")
        # phase 4: counters
        all_ok = throttled(lambda: not _eval(lab, checks, before)[1])
        lab.run_until(all_ok, 5)
        lab.sleep(case.settle)
        delta, bad = _eval(lab, checks, before)
        c = conn_box.get("c")
        data_ok = True
        if not case.fastclose:
            want_k = k1 + k2
            want_o = o1 + o2
            if case.corrupt:
                data_ok = len(got) == len(want_k) and len(app.got) == len(want_o)
            else:
                data_ok = (hashlib.sha256(bytes(got)).digest() == hashlib.sha256(want_k).digest()
                           and hashlib.sha256(bytes(app.got)).digest() == hashlib.sha256(want_o).digest())
            if not data_ok:
                detail.append(f"data: ours got {len(got)}/{len(want_k)}, kernel got "
                              f"{len(app.got)}/{len(want_o)}")
        if case.rm_ids is not None and rm_seen != [case.rm_ids]:
            detail.append(f"ns1 REMOVE_ADDRs carried {rm_seen} ids, want one with {case.rm_ids}")
        if c is not None and bool(c.fallback) != case.want_fallback:
            detail.append(f"fallback={c.fallback} ({c.fallback_reason}), want {case.want_fallback}")
        return Result(delta, checks, bad, c, lab.log, dict(host.stats), app.error, data_ok,
                      "; ".join(detail))
    finally:
        app.go.set()
        c = conn_box.get("c")
        if c is not None and not c.closed and c.state not in ("TIME_WAIT", "CLOSED"):
            try:
                c.abort()
            except Exception:
                pass
            lab.flush()
        app.close()


def describe(r: Result) -> str:
    fails = ", ".join(f"{c} (got {g})" for c, g in r.failed)
    nz = {k: v for k, v in sorted(r.mib.items()) if v}
    return (f"failed checks: [{fails}]; {r.detail}; kernel app error: {r.kernel_error}; "
            f"kernel MPTcpExt delta: {nz}; our stats: {r.stats}; events: {r.log[-30:]}; "
            f"conn: {r.conn.info() if r.conn is not None else None}")


def assert_case(role: str, case: Case) -> Result:
    r = run_case(role, case)
    ok = not r.failed and not r.detail
    if not case.fastclose:   # a fastclose resets the kernel app's socket on purpose
        ok = ok and r.data_ok and r.kernel_error is None
    assert ok, describe(r)
    return r


__all__ = [n for n in dir() if not n.startswith("_")]
