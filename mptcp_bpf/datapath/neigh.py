"""Next-hop MAC resolution for frames we send ourselves (AF_XDP TX), via the kernel.

Why: AF_XDP sends whole Ethernet frames, so the stack needs the next hop's MAC. The kernel
already knows routes and neighbours: a route lookup toward the destination on our device
gives the gateway (or the destination itself when it is on-link), the neighbour table
gives its MAC. When the entry is missing we ask the kernel to resolve it (a netlink
neighbour request with NTF_USE, which makes it send ARP / neighbour solicitation) and keep
the packets meanwhile. Results are cached per destination for `ttl` seconds.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

NTF_USE = 0x01
NUD_INCOMPLETE = 0x01
NUD_REACHABLE = 0x02
NUD_STALE = 0x04
NUD_DELAY = 0x08
NUD_PROBE = 0x10
NUD_FAILED = 0x20
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
NUD_VALID = NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_NOARP | NUD_PERMANENT
ETH_P_IP = b"\x08\x00"
ETH_P_IPV6 = b"\x86\xdd"


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


@dataclass
class NextHop:
    """Where a destination's frames go: the L2 header to put in front of its packets."""

    dst: str
    gateway: str | None
    mac: str | None
    header: bytes | None  # dst MAC + our MAC + ethertype; None while unresolved
    expires: float


class NeighbourCache:
    """Destination IP -> Ethernet header, for one device, resolved through the kernel.

    `header_for(dst_bytes)` is the per-packet call: a dict lookup. `resolve()` does the
    netlink work and is called on a miss and when an entry expires.
    """

    def __init__(self, ifname: str, netns: str | None = None, ttl: float = 10.0,
                 retry: float = 0.2, ipr: Any = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        from pyroute2 import IPRoute

        self.ifname, self.netns, self.ttl, self.retry = ifname, netns, ttl, retry
        self.clock = clock
        self._own = ipr is None
        self.ipr = ipr if ipr is not None else (IPRoute(netns=netns) if netns else IPRoute())
        links = self.ipr.link_lookup(ifname=ifname)
        if not links:
            self.close()
            from mptcp_bpf.errors import HintedError

            raise HintedError(f"no device {ifname!r}" + (f" in {netns}" if netns else ""),
                              "check `ip link` in that namespace")
        self.ifindex = links[0]
        link = self.ipr.get_links(self.ifindex)[0]
        self.src_mac = mac_bytes(link.get_attr("IFLA_ADDRESS") or "00:00:00:00:00:00")
        self.entries: dict[bytes, NextHop] = {}
        self._last_probe: dict[str, float] = {}
        self.resolutions = self.probes = 0

    # -- per packet ----------------------------------------------------------------------
    def header_for(self, dst: bytes, now: float | None = None) -> bytes | None:
        """The 14-byte Ethernet header for packed destination `dst`, or None (unresolved:
        resolution was started; ask again later)."""
        e = self.entries.get(dst)
        if e is not None and e.header is not None:
            if now is None or now < e.expires:
                return e.header
        return self.resolve(dst)

    # -- netlink -------------------------------------------------------------------------
    def next_hop(self, dst: str) -> str:
        """The gateway toward dst through our device, or dst itself when on-link."""
        fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
        # With source-based policy routing (one table per path's address, as in the lab's
        # router shape) only a lookup that names our address finds the path's gateway.
        src = self._local_address(fam)
        r = None
        for extra in ({"src": src}, {}) if src else ({},):
            try:
                r = self.ipr.route("get", dst=dst, oif=self.ifindex, family=fam, **extra)
                break
            except Exception:
                continue
        if r is None:
            return dst
        gw = r[0].get_attr("RTA_GATEWAY") if r else None
        return gw or dst

    def _local_address(self, fam: int) -> str | None:
        """Our device's first global address of `fam`, or None."""
        try:
            for msg in self.ipr.get_addr(index=self.ifindex, family=fam):
                if msg.get("scope", 0) == 0:
                    return msg.get_attr("IFA_ADDRESS")
        except Exception:
            return None
        return None

    def resolve(self, dst: bytes) -> bytes | None:
        """Look the neighbour up now; start kernel resolution when it is missing."""
        from pyroute2.netlink.exceptions import NetlinkError

        now = self.clock()
        text = str(ipaddress.ip_address(dst))
        fam = socket.AF_INET6 if len(dst) == 16 else socket.AF_INET
        nh = self.next_hop(text)
        mac: str | None = None
        state = 0
        try:
            msgs = self.ipr.neigh("get", dst=nh, ifindex=self.ifindex, family=fam)
            if msgs:
                state = msgs[0]["state"]
                mac = msgs[0].get_attr("NDA_LLADDR")
        except NetlinkError:
            pass
        if mac and state & NUD_VALID:
            if state & NUD_STALE:
                self._probe(nh, fam, now)  # re-confirm in the background; keep using it
            hdr = mac_bytes(mac) + self.src_mac + (ETH_P_IPV6 if fam == socket.AF_INET6
                                                   else ETH_P_IP)
            self.entries[dst] = NextHop(text, None if nh == text else nh, mac, hdr,
                                        now + self.ttl)
            self.resolutions += 1
            return hdr
        self._probe(nh, fam, now)
        old = self.entries.get(dst)
        if old is not None and old.header is not None:
            return old.header  # expired but still our best guess while it re-resolves
        return None

    def _probe(self, nh: str, fam: int, now: float) -> None:
        """Ask the kernel to resolve nh (NTF_USE: it sends ARP / NS), at most every `retry` s."""
        if now - self._last_probe.get(nh, -1e9) < self.retry:
            return
        self._last_probe[nh] = now
        self.probes += 1
        try:
            self.ipr.neigh("replace", dst=nh, ifindex=self.ifindex, family=fam,
                           flags=NTF_USE, state=0)
        except Exception:
            self._probe_by_socket(nh, fam)

    def _probe_by_socket(self, nh: str, fam: int) -> None:
        """Fallback: an empty UDP datagram to the discard port makes the kernel resolve."""
        from mptcp_bpf.datapath.tun import run_in_netns

        def send() -> None:
            with socket.socket(fam, socket.SOCK_DGRAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.ifname.encode())
                s.sendto(b"", (nh, 9))

        try:
            run_in_netns(self.netns, send)
        except OSError:
            pass

    def forget(self, dst: bytes | None = None) -> None:
        if dst is None:
            self.entries.clear()
        else:
            self.entries.pop(dst, None)

    def close(self) -> None:
        if self._own and self.ipr is not None:
            self.ipr.close()
        self.ipr = None
