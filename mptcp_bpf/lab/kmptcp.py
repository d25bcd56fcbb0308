"""The kernel's MPTCP on a lab node: limits, endpoints, sysctls (as `ip mptcp` does), and
the MIB counters (as `nstat -az` shows them), all through netlink or /proc inside the node's
namespace (see sh.in_netns), so no tool process per call."""

from __future__ import annotations

import socket
import struct
from typing import Any

from mptcp_bpf.errors import HintedError
from mptcp_bpf.lab import sh

FLAGS = {"signal": 1, "subflow": 2, "backup": 4, "fullmesh": 8, "implicit": 16, "laminar": 64}
SYSCTLS = ("enabled", "checksum_enabled", "add_addr_timeout", "allow_join_initial_addr_port",
           "stale_loss_cnt", "pm_type", "path_manager", "scheduler", "close_timeout",
           "blackhole_timeout", "syn_retrans_before_tcp_fallback")


def parse_endpoint(spec: Any) -> dict[str, Any]:
    """An endpoint from a dict {addr, flags, port, dev, id} or a string
    'ADDR [signal|subflow|backup|fullmesh]... [port N] [dev IF] [id N]'."""
    if isinstance(spec, dict):
        ep = dict(spec)
        flags = ep.get("flags", [])
        ep["flags"] = flags.split(",") if isinstance(flags, str) else list(flags)
    else:
        words = str(spec).replace(",", " ").split()
        if not words:
            raise HintedError("empty endpoint", "give an address, e.g. '10.0.2.1 subflow'")
        ep = {"addr": words[0], "flags": []}
        it = iter(words[1:])
        for w in it:
            if w in ("port", "dev", "id"):
                try:
                    ep[w] = next(it)
                except StopIteration:
                    raise HintedError(f"endpoint {spec!r}: {w} needs a value") from None
            else:
                ep["flags"].append(w)
    for f in ep["flags"]:
        if f not in FLAGS:
            raise HintedError(f"unknown endpoint flag {f!r}", f"use {', '.join(FLAGS)}")
    if "addr" not in ep:
        raise HintedError(f"endpoint {spec!r} has no address")
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in ep["addr"] else socket.AF_INET, ep["addr"])
    except OSError:
        raise HintedError(f"bad endpoint address {ep['addr']!r}") from None
    return ep


def _mptcp_sock():
    from pyroute2 import MPTCP
    return MPTCP()


def _ifindex(dev: str) -> int:
    return socket.if_nametoindex(dev)


def configure(ns: str, limits: dict[str, int] | None = None, endpoints: list[Any] | None = None,
              checksum: bool | None = None, sysctls: dict[str, Any] | None = None,
              flush: bool = True) -> dict[str, Any]:
    """Set the kernel MPTCP of namespace `ns`; endpoints replace the old ones unless flush=False.

    limits: {'subflows': N, 'add_addr_accepted': M}; checksum: net.mptcp.checksum_enabled;
    sysctls: names under net.mptcp (e.g. {'add_addr_timeout': 1}).
    """
    values: dict[str, Any] = {}
    for key, value in (sysctls or {}).items():
        short = key.removeprefix("net.mptcp.")
        values[f"net.mptcp.{short}"] = int(value) if isinstance(value, bool) else value
    if checksum is not None:
        values["net.mptcp.checksum_enabled"] = int(bool(checksum))
    if values:
        args = []
        for k, v in values.items():
            args += ["-w", f"{k}={v}"]
        sh.run(["ip", "netns", "exec", ns, "sysctl", "-q", *args])
    eps = [parse_endpoint(e) for e in (endpoints or [])]
    if limits is not None:
        bad = set(limits) - {"subflows", "add_addr_accepted", "rcv_add_addrs"}
        if bad:
            raise HintedError(f"unknown limit(s) {sorted(bad)}", "use subflows and add_addr_accepted")

    def work() -> None:
        mp = _mptcp_sock()
        try:
            if limits:
                mp.limits("set", **{k: int(v) for k, v in limits.items()})
            if endpoints is not None and flush:
                mp.endpoint("flush")
            for ep in eps:
                kw: dict[str, Any] = {}
                kw["addr6" if ":" in ep["addr"] else "addr"] = ep["addr"]
                flags = 0
                for f in ep["flags"]:
                    flags |= FLAGS[f]
                kw["flags"] = flags
                if ep.get("port"):
                    kw["port"] = int(ep["port"])
                if ep.get("id"):
                    kw["id"] = int(ep["id"])
                if ep.get("dev"):
                    kw["if_idx"] = struct.pack("i", _ifindex(ep["dev"]))
                mp.endpoint("add", **kw)
        finally:
            mp.close()

    if limits or endpoints is not None:
        try:
            sh.in_netns(ns, work)
        except HintedError:
            raise
        except Exception as exc:
            raise HintedError(f"kernel MPTCP configuration in {ns} failed: {exc}",
                              "check the addresses exist on the node (`mptcp-bpf lab show`)") from exc
    return show(ns)


def show(ns: str) -> dict[str, Any]:
    """Limits, endpoints and net.mptcp sysctls of namespace `ns`."""
    def work() -> dict[str, Any]:
        mp = _mptcp_sock()
        try:
            lim = mp.limits("show")
            out: dict[str, Any] = {"limits": {}, "endpoints": []}
            for msg in lim:
                out["limits"] = {"subflows": msg.get_attr("MPTCP_PM_ATTR_SUBFLOWS"),
                                 "add_addr_accepted": msg.get_attr("MPTCP_PM_ATTR_RCV_ADD_ADDRS")}
            for msg in mp.endpoint("show"):
                a = msg.get_attr("MPTCP_PM_ATTR_ADDR")
                if a is None:
                    continue
                flags = a.get_attr("MPTCP_PM_ADDR_ATTR_FLAGS") or 0
                out["endpoints"].append({
                    "id": a.get_attr("MPTCP_PM_ADDR_ATTR_ID"),
                    "addr": a.get_attr("MPTCP_PM_ADDR_ATTR_ADDR4") or a.get_attr("MPTCP_PM_ADDR_ATTR_ADDR6"),
                    "port": a.get_attr("MPTCP_PM_ADDR_ATTR_PORT"),
                    "flags": [n for n, bit in FLAGS.items() if flags & bit]})
            sysctls = {}
            for name in SYSCTLS:
                try:
                    with open(f"/proc/sys/net/mptcp/{name}") as f:
                        sysctls[name] = f.read().strip()
                except OSError:
                    pass
            out["sysctls"] = sysctls
            return out
        finally:
            mp.close()
    return sh.in_netns(ns, work)


def parse_netstat(text: str) -> dict[str, int]:
    """/proc/net/netstat or snmp text -> {'MPTcpExtMPCapableSYNRX': 3, ...} (nstat names)."""
    out: dict[str, int] = {}
    lines = text.splitlines()
    for head, vals in zip(lines[::2], lines[1::2]):
        hname, _, hfields = head.partition(":")
        vname, _, vfields = vals.partition(":")
        if hname != vname:
            continue
        for field, value in zip(hfields.split(), vfields.split()):
            try:
                out[f"{hname}{field}"] = int(value)
            except ValueError:
                pass
    return out


def nstat(ns: str, prefix: str = "MPTcpExt") -> dict[str, int]:
    """Absolute counters of namespace `ns` whose nstat name starts with `prefix` (prefix removed)."""
    def work() -> str:
        parts = []
        for name in ("netstat", "snmp"):
            with open(f"/proc/thread-self/net/{name}") as f:
                parts.append(f.read())
        return "\n".join(p.rstrip("\n") for p in parts)
    allc = parse_netstat(sh.in_netns(ns, work))
    return {k[len(prefix):]: v for k, v in allc.items() if k.startswith(prefix)}
