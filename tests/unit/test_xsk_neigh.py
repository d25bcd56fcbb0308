"""NeighbourCache logic (used by XdpPort for AF_XDP TX) against a fake netlink handle."""

from __future__ import annotations

import ipaddress

from pyroute2.netlink.exceptions import NetlinkError

from mptcp_bpf.datapath.neigh import (NTF_USE, NUD_FAILED, NUD_REACHABLE, NUD_STALE,
                                      NeighbourCache)

OUR_MAC = "02:00:00:00:00:01"
PEER_MAC = "02:00:00:00:00:02"


class Msg(dict):
    def __init__(self, attrs: dict, **kw) -> None:
        super().__init__(**kw)
        self.attrs = attrs

    def get_attr(self, name: str):
        return self.attrs.get(name)


class FakeIPR:
    def __init__(self) -> None:
        self.neighbours: dict[str, tuple[int, str | None]] = {}
        self.gateways: dict[str, str] = {}
        self.uses: list[str] = []
        self.closed = False

    def link_lookup(self, ifname):
        return [7] if ifname == "veth0" else []

    def get_links(self, idx):
        return [Msg({"IFLA_ADDRESS": OUR_MAC, "IFLA_NUM_RX_QUEUES": 1})]

    def route(self, cmd, dst, oif, family):
        assert cmd == "get" and oif == 7
        return [Msg({"RTA_OIF": 7, "RTA_GATEWAY": self.gateways.get(dst)})]

    def neigh(self, cmd, dst, ifindex, family, **kw):
        if cmd == "get":
            if dst not in self.neighbours:
                raise NetlinkError(2)
            state, mac = self.neighbours[dst]
            return [Msg({"NDA_LLADDR": mac}, state=state)]
        assert cmd == "replace" and kw["flags"] == NTF_USE
        self.uses.append(dst)
        return []

    def close(self):
        self.closed = True


class Clock:
    t = 100.0

    def __call__(self) -> float:
        return self.t


def make(**kw):
    ipr, clock = FakeIPR(), Clock()
    return NeighbourCache("veth0", ipr=ipr, clock=clock, **kw), ipr, clock


def p(ip: str) -> bytes:
    return ipaddress.ip_address(ip).packed


def test_hit_builds_the_ethernet_header():
    nc, ipr, _ = make()
    ipr.neighbours["10.0.0.2"] = (NUD_REACHABLE, PEER_MAC)
    h = nc.header_for(p("10.0.0.2"))
    assert h == bytes.fromhex("020000000002" "020000000001" "0800")
    ipr.neighbours["fd00::2"] = (NUD_REACHABLE, PEER_MAC)
    assert nc.header_for(p("fd00::2"))[12:] == b"\x86\xdd"
    assert ipr.uses == []


def test_miss_asks_the_kernel_then_resolves():
    nc, ipr, clock = make(retry=0.2)
    assert nc.header_for(p("10.0.0.9")) is None
    assert nc.header_for(p("10.0.0.9")) is None  # rate-limited: one probe
    assert ipr.uses == ["10.0.0.9"]
    clock.t += 0.3
    ipr.neighbours["10.0.0.9"] = (NUD_FAILED, None)
    assert nc.header_for(p("10.0.0.9")) is None
    assert ipr.uses == ["10.0.0.9"] * 2
    ipr.neighbours["10.0.0.9"] = (NUD_REACHABLE, PEER_MAC)
    assert nc.header_for(p("10.0.0.9")) is not None


def test_gateway_is_resolved_not_the_destination():
    nc, ipr, _ = make()
    ipr.gateways["192.0.2.1"] = "10.0.0.1"
    ipr.neighbours["10.0.0.1"] = (NUD_REACHABLE, PEER_MAC)
    assert nc.header_for(p("192.0.2.1"))[:6] == bytes.fromhex("020000000002")
    assert nc.entries[p("192.0.2.1")].gateway == "10.0.0.1"


def test_stale_is_used_and_reconfirmed_expired_is_refreshed():
    nc, ipr, clock = make(ttl=5.0)
    ipr.neighbours["10.0.0.2"] = (NUD_STALE, PEER_MAC)
    assert nc.header_for(p("10.0.0.2"), clock.t) is not None
    assert ipr.uses == ["10.0.0.2"]
    # expired, and the kernel lost it meanwhile: the old header is still used while it
    # re-resolves (TCP would otherwise stall on a flapping entry)
    del ipr.neighbours["10.0.0.2"]
    clock.t += 6
    assert nc.header_for(p("10.0.0.2"), clock.t) is not None
    assert len(ipr.uses) == 2


def test_close_closes_only_its_own_handle():
    nc, ipr, _ = make()
    nc.close()
    assert not ipr.closed  # handed in: the caller owns it
