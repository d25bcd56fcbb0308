"""Lab topologies: a client and a server joined by N paths, or through a router.

Shapes (addresses for path p = 1..N; IPv6 with ipv6=True):

  direct:  client cP 10.0.P.1/24  dead:beef:P::1/64  <-path P->  server sP 10.0.P.2  dead:beef:P::2
  router:  client cP 10.0.P.1  <-path P->  router rP 10.0.P.2 ;
           router rs 10.0.M.2 dead:beef:M::2  <->  server s1 10.0.M.3 dead:beef:M::3  (M = N+1)

Every path crosses a hidden `wire` namespace: cP <-> aP =bridge brP= bP <-> sP (or rP),
so the endpoint interfaces stay plain veths (room for an XDP program, no qdisc of ours) and
all impairments (`impair.py`) live on aP/bP and the TAPs tuP/tdP of the delay line.
Direction `up` is client -> server, `down` is server -> client.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any

from mptcp_bpf.errors import HintedError
from mptcp_bpf.lab import sh, state
from mptcp_bpf.lab.state import ns_name

MAX_PATHS = 8


def _v4(path: int, host: int) -> str:
    return f"10.0.{path}.{host}"


def _v6(path: int, host: int) -> str:
    return f"dead:beef:{path}::{host}"


class Lab:
    """A lab built by `Lab.up` (or found by `Lab.find`); all state is in its JSON file.

    Use as a context manager to tear it down on exit:

        with Lab.up("t1", paths=2) as lab:
            lab.exec("client", ["ping", "-c1", lab.addresses("server")[0]], check=True)
            lab.link(1, delay=10, rate="20mbit")
    """

    def __init__(self, st: dict[str, Any]) -> None:
        self.state = st
        self.name: str = st["name"]

    # ---- building and removing -------------------------------------------------------
    @classmethod
    def up(cls, name: str, paths: int = 2, router: bool = False, ipv6: bool = False) -> "Lab":
        """Build a lab; raise HintedError if it exists or the arguments are wrong."""
        state.check_name(name)
        if not 1 <= int(paths) <= MAX_PATHS:
            raise HintedError(f"--paths {paths} is out of range", f"use 1 to {MAX_PATHS} paths")
        if os.geteuid() != 0:
            raise HintedError("building a lab needs root", "run as root (sudo)")
        with state.locked(name):
            if state.load(name) is not None or any(
                    sh.netns_exists(ns_name(name, n)) for n in state.NODES):
                raise HintedError(f"lab {name} already exists",
                                  f"remove it with `mptcp-bpf lab down {name}` or pick another name")
            st = _plan(name, int(paths), bool(router), bool(ipv6))
            state.save(st)  # first, so that a crash half-way can still be cleaned up
            try:
                _build(st)
            except BaseException:
                _teardown(name, st)
                raise
            state.save(st)
        return cls(st)

    @classmethod
    def find(cls, name: str) -> "Lab | None":
        """The lab called `name` if its state file exists, else None."""
        st = state.load(name)
        return cls(st) if st else None

    @staticmethod
    def names() -> list[str]:
        return state.names()

    def down(self) -> None:
        """Remove everything the lab made (also callable as `Lab.remove(name)`)."""
        Lab.remove(self.name)

    @staticmethod
    def remove(name: str) -> bool:
        """Remove lab `name` even without (or with a stale) state file; True if anything was found."""
        state.check_name(name)
        with state.locked(name):
            st = state.load(name)
            return _teardown(name, st)

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def reload(self) -> "Lab":
        st = state.load(self.name)
        if st is None:
            raise HintedError(f"lab {self.name} is gone", f"build it with `mptcp-bpf lab up {self.name}`")
        self.state = st
        return self

    # ---- queries ---------------------------------------------------------------------
    @property
    def paths(self) -> int:
        return int(self.state["paths"])

    @property
    def router(self) -> bool:
        return bool(self.state["router"])

    @property
    def ipv6(self) -> bool:
        return bool(self.state["ipv6"])

    def nodes(self) -> list[str]:
        return ["client", "router", "server"] if self.router else ["client", "server"]

    def _node(self, node: str) -> str:
        if node not in self.state["ns"]:
            raise HintedError(f"lab {self.name} has no node {node!r}",
                              f"use one of: {', '.join(self.nodes())}")
        return node

    def ns(self, node: str) -> str:
        """Namespace name of 'client', 'server' or 'router' (all start with `mpb`)."""
        return self.state["ns"][self._node(node)]

    def addresses(self, node: str, family: int = 4) -> list[str]:
        """Addresses of a node, one per path (path 1 first); the router-shape server has one.

        The router lists its path-side addresses, then its server-side one.
        """
        if family not in (4, 6):
            raise HintedError(f"family {family}", "use 4 or 6")
        if family == 6 and not self.ipv6:
            raise HintedError(f"lab {self.name} has no IPv6", "build it with --ipv6")
        if node == "wire":
            raise HintedError("the wire namespace has no addresses", "ask for client, server or router")
        return list(self.state["addresses"][self._node(node)][str(family)])

    def devices(self, node: str) -> list[str]:
        """Interfaces of a node: one per path (path 1 first); router: paths then `rs`."""
        if node == "wire":
            return sorted(self.state["ifindex"])
        return list(self.state["devices"][self._node(node)])

    def wire_devices(self, path: int) -> dict[str, str]:
        """The wire namespace's devices of one path: a (client side), b, tu/td (TAPs)."""
        return dict(self.state["wire"][str(self._path(path))])

    def _path(self, path: int) -> int:
        if not 1 <= int(path) <= self.paths:
            raise HintedError(f"lab {self.name} has no path {path}", f"paths are 1..{self.paths}")
        return int(path)

    # ---- running things --------------------------------------------------------------
    def exec(self, node: str, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
        """subprocess.run(argv) inside the node's namespace (kwargs go to subprocess.run)."""
        return subprocess.run(["ip", "netns", "exec", self.ns(node), *argv], **kwargs)

    def popen(self, node: str, argv: list[str], **kwargs: Any) -> subprocess.Popen:
        """subprocess.Popen(argv) inside the node's namespace; `lab.down()` kills leftovers."""
        return subprocess.Popen(["ip", "netns", "exec", self.ns(node), *argv], **kwargs)

    def sysctl(self, node: str, values: dict[str, Any]) -> None:
        """Set sysctls (dotted names) in a node's namespace."""
        args = []
        for key, value in values.items():
            args += ["-w", f"{key}={value}"]
        if args:
            sh.run(["ip", "netns", "exec", self.ns(node), "sysctl", "-q", *args])

    def in_ns(self, node: str, fn):  # type: ignore[no-untyped-def]
        """Call fn() in a thread inside the node's namespace (netlink, /proc/thread-self/net)."""
        return sh.in_netns(self.ns(node), fn)

    # ---- impairments and kernel MPTCP (thin wrappers) --------------------------------
    def link(self, path: int, dir: str = "both", **settings: Any) -> dict[str, Any]:
        """Change path `path`'s impairments while traffic runs; see impair.apply for keys:
        rate, delay, jitter, loss, dup, reorder, corrupt, strip_mptcp_syn, drop_subtype,
        down, up, clear, seed, limit. Returns the path's settings per direction."""
        from mptcp_bpf.lab import impair
        result = impair.apply(self, self._path(path), dir, settings)
        self.reload()
        return result

    def link_stats(self, path: int) -> dict[str, Any]:
        """Counters of the impairment program and qdiscs of one path."""
        from mptcp_bpf.lab import impair
        return impair.stats(self, self._path(path))

    def mptcp(self, node: str, **kwargs: Any) -> dict[str, Any]:
        """Configure the node's kernel MPTCP (limits, endpoints, checksum, sysctls); see kmptcp.configure."""
        from mptcp_bpf.lab import kmptcp
        return kmptcp.configure(self.ns(node), **kwargs)

    def mptcp_show(self, node: str) -> dict[str, Any]:
        from mptcp_bpf.lab import kmptcp
        return kmptcp.show(self.ns(node))

    def nstat(self, node: str, prefix: str = "MPTcpExt") -> dict[str, int]:
        """Absolute MIB counters of the node whose names start with `prefix` (prefix stripped)."""
        from mptcp_bpf.lab import kmptcp
        return kmptcp.nstat(self.ns(node), prefix)

    def show(self) -> dict[str, Any]:
        """A JSON-able summary: shape, namespaces, devices, addresses, link settings."""
        st = self.state
        return {
            "name": self.name, "paths": self.paths, "router": self.router, "ipv6": self.ipv6,
            "namespaces": {n: st["ns"][n] for n in self.nodes()},
            "devices": {n: st["devices"][n] for n in self.nodes()},
            "addresses": {n: st["addresses"][n] for n in self.nodes()},
            "links": st.get("links", {}),
            "delay_line_pid": st.get("delayline_pid"),
            "alive": all(sh.netns_exists(st["ns"][n]) for n in st["ns"]),
        }


# ---- planning and building ---------------------------------------------------------------
def _plan(name: str, paths: int, router: bool, ipv6: bool) -> dict[str, Any]:
    nodes = ["client", "server", "wire"] + (["router"] if router else [])
    ns = {n: ns_name(name, n) for n in nodes}
    dev: dict[str, list[str]] = {"client": [f"c{p}" for p in range(1, paths + 1)]}
    addr: dict[str, dict[str, list[str]]] = {"client": {"4": [_v4(p, 1) for p in range(1, paths + 1)],
                                                        "6": [_v6(p, 1) for p in range(1, paths + 1)]}}
    m = paths + 1
    if router:
        dev["router"] = [f"r{p}" for p in range(1, paths + 1)] + ["rs"]
        addr["router"] = {"4": [_v4(p, 2) for p in range(1, m + 1)], "6": [_v6(p, 2) for p in range(1, m + 1)]}
        dev["server"] = ["s1"]
        addr["server"] = {"4": [_v4(m, 3)], "6": [_v6(m, 3)]}
    else:
        dev["server"] = [f"s{p}" for p in range(1, paths + 1)]
        addr["server"] = {"4": [_v4(p, 2) for p in range(1, paths + 1)],
                          "6": [_v6(p, 2) for p in range(1, paths + 1)]}
    if not ipv6:
        for a in addr.values():
            a["6"] = []
    wire = {str(p): {"a": f"a{p}", "b": f"b{p}", "br": f"br{p}", "tu": f"tu{p}", "td": f"td{p}"}
            for p in range(1, paths + 1)}
    empty = {"up": {}, "down": {}}
    return {"name": name, "paths": paths, "router": router, "ipv6": ipv6, "ns": ns,
            "devices": dev, "addresses": addr, "wire": wire, "ifindex": {},
            "links": {str(p): {d: dict(v) for d, v in empty.items()} for p in range(1, paths + 1)},
            "bpf": False, "delayline_pid": None, "created": time.time()}


def _base_sysctls(ipv6: bool, forward: bool = False) -> list[str]:
    vals = {"net.ipv4.conf.all.rp_filter": 0, "net.ipv4.conf.default.rp_filter": 0,
            "net.ipv6.conf.all.accept_dad": 0, "net.ipv6.conf.default.accept_dad": 0}
    if not ipv6:
        vals.update({"net.ipv6.conf.all.disable_ipv6": 1, "net.ipv6.conf.default.disable_ipv6": 1})
    if forward:
        vals.update({"net.ipv4.ip_forward": 1, "net.ipv6.conf.all.forwarding": 1})
    return [f"{k}={v}" for k, v in vals.items()]


def _build(st: dict[str, Any]) -> None:
    ns = st["ns"]
    paths, router, ipv6 = st["paths"], st["router"], st["ipv6"]
    sh.ip_batch([f"netns add {n}" for n in ns.values()])
    # The wire carries no IP of its own: no IPv6 chatter (RS, MLD) from its devices.
    for node, n in ns.items():
        ctl = _base_sysctls(ipv6 and node != "wire", forward=node == "router")
        sh.run(["ip", "netns", "exec", n, "sysctl", "-q", *sum((["-w", c] for c in ctl), [])])
    side_b = "router" if router else "server"
    links = []
    for p in range(1, paths + 1):
        b_dev = f"r{p}" if router else f"s{p}"
        links.append(f"link add c{p} netns {ns['client']} type veth peer name a{p} netns {ns['wire']}")
        links.append(f"link add {b_dev} netns {ns[side_b]} type veth peer name b{p} netns {ns['wire']}")
    if router:
        links.append(f"link add rs netns {ns['router']} type veth peer name s1 netns {ns['server']}")
    sh.ip_batch(links)

    # wire: one bridge per path, TAPs for the delay line
    wire = ["link set lo up"]
    for p in range(1, paths + 1):
        wire += [f"link add br{p} type bridge stp_state 0 mcast_snooping 0",
                 f"link set a{p} master br{p}", f"link set b{p} master br{p}",
                 f"tuntap add dev tu{p} mode tap", f"tuntap add dev td{p} mode tap",
                 f"link set br{p} up", f"link set a{p} up", f"link set b{p} up",
                 f"link set tu{p} up", f"link set td{p} up"]
    sh.ip_batch(wire, ns["wire"])

    addr = st["addresses"]
    for node in ["client", "server"] + (["router"] if router else []):
        cmds = ["link set lo up"]
        for i, dev in enumerate(st["devices"][node]):
            cmds.append(f"link set {dev} up")
            cmds.append(f"addr add {addr[node]['4'][i]}/24 dev {dev}")
            if ipv6:
                cmds.append(f"addr add {addr[node]['6'][i]}/64 dev {dev} nodad")
        v6: list[str] = []  # rules and routes in a `ip -6` batch (rule defaults to IPv4)
        if router and node == "client":
            # default via path 1; each source address leaves through its own path
            cmds.append(f"route add default via {_v4(1, 2)} dev c1")
            if ipv6:
                v6.append(f"route add default via {_v6(1, 2)} dev c1")
            for p in range(1, paths + 1):
                cmds += [f"rule add from {_v4(p, 1)} table {100 + p} pref {100 + p}",
                         f"route add default via {_v4(p, 2)} dev c{p} table {100 + p}"]
                if ipv6:
                    v6 += [f"rule add from {_v6(p, 1)} table {100 + p} pref {100 + p}",
                           f"route add default via {_v6(p, 2)} dev c{p} table {100 + p}"]
        if router and node == "server":
            cmds.append(f"route add default via {_v4(paths + 1, 2)} dev s1")
            if ipv6:
                v6.append(f"route add default via {_v6(paths + 1, 2)} dev s1")
        sh.ip_batch(cmds, ns[node])
        sh.ip_batch(v6, ns[node], family=6)
        # One frame per packet on the wire: impairments act per segment, not per 64 KB burst.
        devs = st["devices"][node]
        script = "; ".join(f"ethtool -K {d} tso off gso off gro off >/dev/null 2>&1" for d in devs)
        sh.run(["ip", "netns", "exec", ns[node], "sh", "-c", script + "; true"])
    st["ifindex"] = _wire_ifindexes(ns["wire"])


def _wire_ifindexes(wire_ns: str) -> dict[str, int]:
    import json
    out = sh.run(["ip", "-n", wire_ns, "-j", "link", "show"])
    return {link["ifname"]: int(link["ifindex"]) for link in json.loads(out)}


def _kill_ns_pids(ns: str) -> None:
    """SIGKILL every process inside namespace `ns` (delay line, leftover servers)."""
    out = sh.run(["ip", "netns", "pids", ns], check=False)
    pids = [int(p) for p in out.split() if p.isdigit() and int(p) != os.getpid()]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            _reap(pid)
            time.sleep(0.01)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _remove_fast_path_pins(ns: str) -> None:
    """What our stack or `mptcp-bpf load` pinned for a node (one directory per namespace):
    it would outlive the namespace, whose inode the kernel may hand out again."""
    from mptcp_bpf.datapath import pins
    try:
        pins.remove_dir(pins.pin_dir(ns))
    except Exception:
        pass  # no such namespace, or nothing pinned


def _teardown(name: str, st: dict[str, Any] | None) -> bool:
    """Kill the lab's processes, delete its namespaces, pins and state; True if any existed."""
    import shutil
    from mptcp_bpf.lab import bpfmap
    found = st is not None
    pid = (st or {}).get("delayline_pid")
    if pid:
        try:
            os.kill(int(pid), signal.SIGKILL)
            _reap(int(pid))
        except (ProcessLookupError, PermissionError):
            pass
    names = set((st or {}).get("ns", {}).values()) | {ns_name(name, n) for n in state.NODES}
    present = [n for n in sorted(names) if sh.netns_exists(n)]
    for n in present:
        _kill_ns_pids(n)
        _remove_fast_path_pins(n)
    if present:
        sh.ip_batch([f"netns del {n}" for n in present], check=False, force=True)
        found = True
    pins = bpfmap.pin_dir(name)
    if os.path.isdir(pins):
        shutil.rmtree(pins, ignore_errors=True)
        found = True
    state.remove(name)
    return found
