"""Path-manager decisions against a fake connection (REFERENCE.md §4)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from mptcp_bpf import plugins

ip = ipaddress.ip_address


@dataclass
class LocalAddr:
    id: int
    address: object
    backup: bool = False
    port: int = 0
    flags: frozenset | None = None


@dataclass
class RemoteAddr:
    id: int
    address: object
    port: int


@dataclass(eq=False)
class Sf:
    local: tuple
    remote: tuple
    backup: bool = False
    id: int = 0


@dataclass
class FakeConn:
    role: str = "client"
    token: int = 1
    locals_: list = field(default_factory=list)
    remote_addresses: list = field(default_factory=list)
    subflows: list = field(default_factory=list)
    local_port: int = 40000
    remote_port: int = 80
    refuse: bool = False
    opened: list = field(default_factory=list)
    announced: list = field(default_factory=list)
    removed: list = field(default_factory=list)
    prio: list = field(default_factory=list)
    closed_local: list = field(default_factory=list)

    def local_addresses(self):
        return list(self.locals_)

    def open_subflow(self, local_addr, remote_addr, remote_port, local_port=0, backup=False):
        if self.refuse or len(self.subflows) >= 32:
            return None
        sf = Sf((local_addr, local_port or 50000 + len(self.opened)), (remote_addr, remote_port),
                backup, len(self.subflows))
        self.opened.append((str(local_addr), str(remote_addr), remote_port, local_port, backup))
        self.subflows.append(sf)
        return sf

    def announce(self, addr_id, address, port=None):
        self.announced.append((addr_id, str(address), port))

    def remove_addr(self, ids):
        self.removed.extend(ids)

    def close_local(self, ids):
        self.closed_local.extend(ids)

    def set_prio(self, sf, backup):
        self.prio.append((sf.id, backup))
        sf.backup = backup

    def close_subflow(self, sf_id):
        return True


def conn_2x2(role="client"):
    c = FakeConn(role=role)
    c.locals_ = [LocalAddr(0, ip("10.0.1.1")), LocalAddr(1, ip("10.0.2.1")),
                 LocalAddr(2, ip("fd00:1::1"))]
    c.remote_addresses = [RemoteAddr(0, ip("10.0.1.2"), 80)]
    c.subflows = [Sf((ip("10.0.1.1"), 40000), (ip("10.0.1.2"), 80))]
    return c


def pm(name, **params):
    p = dict(plugins.get("pm", name).params)
    p.update(params)
    return plugins.get("pm", name).factory(params=p)


def test_registry():
    assert set(plugins.names("pm")) >= {"default", "fullmesh", "ndiffports"}
    assert plugins.get("pm", "ndiffports").params["num_subflows"] == 2


def test_default_does_nothing():
    c = conn_2x2()
    p = pm("default")
    p.on_established(c)
    p.on_add_addr(c, RemoteAddr(1, ip("10.0.2.2"), 80))
    p.on_timer(c, 10.0)
    assert c.opened == [] and c.announced == []


def test_fullmesh_client_joins_every_pair_same_family():
    c = conn_2x2()
    p = pm("fullmesh")
    p.on_established(c)
    assert c.opened == [("10.0.2.1", "10.0.1.2", 80, 0, False)]   # 2x1
    new = RemoteAddr(1, ip("10.0.2.2"), 80)
    c.remote_addresses.append(new)
    p.on_add_addr(c, new)
    assert sorted(o[:2] for o in c.opened[1:]) == [("10.0.1.1", "10.0.2.2"),
                                                  ("10.0.2.1", "10.0.2.2")]
    v6 = RemoteAddr(2, ip("fd00:2::2"), 8080)
    c.remote_addresses.append(v6)
    p.on_add_addr(c, v6)
    assert c.opened[-1] == ("fd00:1::1", "fd00:2::2", 8080, 0, False)
    assert len(c.subflows) == 5   # 2x2 over v4 + 1 over v6
    p.on_timer(c, 1.0)
    assert len(c.subflows) == 5   # nothing more to do


def test_fullmesh_num_subflows_per_pair():
    c = conn_2x2()
    p = pm("fullmesh", num_subflows=2)
    p.on_established(c)
    pairs = [o[:2] for o in c.opened]
    assert pairs.count(("10.0.1.1", "10.0.1.2")) == 1      # the initial pair has one already
    assert pairs.count(("10.0.2.1", "10.0.1.2")) == 2


def test_fullmesh_server_announces_and_creates_nothing():
    c = conn_2x2("server")
    p = pm("fullmesh")
    p.on_established(c)
    assert c.opened == []
    assert c.announced == [(1, "10.0.2.1", None), (2, "fd00:1::1", None)]
    c.locals_.append(LocalAddr(3, ip("10.0.3.1")))
    p.on_local_address_change(c, "up", c.locals_[-1])
    assert c.announced[-1] == (3, "10.0.3.1", None)
    p.on_established(c)
    assert len(c.announced) == 3      # each address is announced once


def test_fullmesh_local_address_events():
    c = conn_2x2()
    c.locals_ = c.locals_[:1]
    p = pm("fullmesh")
    p.on_established(c)
    assert c.opened == []
    c.locals_.append(LocalAddr(5, ip("10.0.5.1")))
    p.on_local_address_change(c, "up", c.locals_[-1])
    assert c.opened == [("10.0.5.1", "10.0.1.2", 80, 0, False)]
    c.locals_[-1].backup = True
    p.on_local_address_change(c, "prio", c.locals_[-1])
    assert c.prio == [(1, True)]
    p.on_local_address_change(c, "down", c.locals_[-1])
    assert c.removed == [5]
    c.subflows.pop()
    p.on_timer(c, 100.0)
    assert len(c.opened) == 1           # a down address is not rejoined


def test_fullmesh_delete_unused_unannounced_address_sends_nothing():
    c = conn_2x2(role="server")        # a server opens no subflows from its addresses
    p = pm("fullmesh")
    extra = LocalAddr(7, ip("10.0.7.1"), flags=frozenset({"subflow"}))
    c.locals_.append(extra)
    p.on_established(c)
    p.on_local_address_change(c, "down", extra)
    assert c.removed == []              # neither announced nor used: no RM_ADDR (kernel)


def test_fullmesh_flush_one_rm_addr_for_announced_ids():
    c = conn_2x2(role="server")
    p = pm("fullmesh")
    p.on_established(c)
    announced = {a[0] for a in c.announced}
    assert announced == {1, 2}          # a server announces its other addresses
    extra = LocalAddr(7, ip("10.0.7.1"), flags=frozenset({"subflow"}))
    p.on_local_addresses_flushed(c, c.locals_[1:] + [extra])
    assert c.removed == [1, 2]          # one RM_ADDR with the announced ids only
    assert c.closed_local == [7]        # the others: subflows closed, no RM_ADDR
    p.on_timer(c, 100.0)
    assert c.opened == []               # a server opens nothing, flushed or not


def test_fullmesh_retries_unreachable_pairs_with_backoff():
    c = conn_2x2()
    p = pm("fullmesh")
    p.on_established(c)
    sf = c.subflows.pop()
    p.on_subflow_closed(c, sf, "timeout")
    p.on_timer(c, 10.0)                 # arms the retry at 11.0
    assert len(c.opened) == 1
    p.on_timer(c, 10.5)
    assert len(c.opened) == 1
    p.on_timer(c, 11.0)
    assert len(c.opened) == 2           # retried
    sf = c.subflows.pop()
    p.on_subflow_closed(c, sf, "refused")
    p.on_timer(c, 12.0)
    p.on_timer(c, 13.0)
    assert len(c.opened) == 2           # second failure: waits 2 s
    p.on_timer(c, 14.0)
    assert len(c.opened) == 3
    p.on_sf_established(c, c.subflows[-1])
    assert not p.retries.state


def test_fullmesh_gives_up_after_bounded_retries():
    c = conn_2x2()
    p = pm("fullmesh")
    p.on_established(c)
    now = 0.0
    for _ in range(20):
        if len(c.subflows) > 1:
            p.on_subflow_closed(c, c.subflows.pop(), "timeout")
        now += 20.0
        p.on_timer(c, now)
        now += 20.0
        p.on_timer(c, now)
    assert len(c.opened) == 6           # first try + 5 retries


def test_fullmesh_clean_close_is_not_reopened_and_rm_addr():
    c = conn_2x2()
    p = pm("fullmesh")
    p.on_established(c)
    p.on_subflow_closed(c, c.subflows.pop(), None)
    p.on_timer(c, 5.0)
    p.on_timer(c, 50.0)
    assert len(c.opened) == 1
    p.on_rm_addr(c, [1])
    assert len(c.opened) == 1


def test_fullmesh_respects_limits():
    c = FakeConn()
    c.locals_ = [LocalAddr(i, ip(f"10.0.{i}.1")) for i in range(10)]
    c.remote_addresses = [RemoteAddr(i, ip(f"10.1.{i}.2"), 80) for i in range(10)]
    c.subflows = [Sf((ip("10.0.0.1"), 1), (ip("10.1.0.2"), 80))]
    p = pm("fullmesh")
    p.on_established(c)
    assert len(c.subflows) == 32
    used_l = {o[0] for o in c.opened}
    assert "10.0.9.1" not in used_l and "10.0.8.1" not in used_l  # 8 per family


def test_ndiffports_opens_from_different_ports():
    c = conn_2x2()
    p = pm("ndiffports", num_subflows=3)
    p.on_established(c)
    assert len(c.opened) == 2
    assert all(o[:3] == ("10.0.1.1", "10.0.1.2", 80) and o[3] == 0 for o in c.opened)
    assert len({sf.local[1] for sf in c.subflows}) == 3
    p.on_subflow_closed(c, c.subflows.pop(), "timeout")
    p.on_timer(c, 1.0)
    p.on_timer(c, 2.0)
    assert len(c.subflows) == 3
    s = conn_2x2("server")
    pm("ndiffports").on_established(s)
    assert s.opened == []


def test_refused_open_does_not_loop():
    c = conn_2x2()
    c.refuse = True
    p = pm("fullmesh")
    p.on_established(c)
    p.on_timer(c, 1.0)
    assert c.opened == []
