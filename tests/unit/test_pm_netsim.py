"""Every plug-in driving real connections (mptcp.host.Host) over the in-memory network.

Two hosts with two addresses each; links between every client/server address pair, with
unequal delays and rates. Virtual time, seeded: deterministic and independent of the
machine's load.
"""

from __future__ import annotations

import ipaddress
import random

import pytest

from mptcp_bpf import plugins
from mptcp_bpf.mptcp.host import Host, HostConfig
from mptcp_bpf.tcp.netsim import Net

CLIENT_IPS = ["10.0.1.1", "10.0.2.1"]
SERVER_IPS = ["10.0.1.2", "10.0.2.2"]


def b(ip: str) -> bytes:
    return ipaddress.ip_address(ip).packed


def build(pm="fullmesh", sched="default", cc="reno", seed=1, cross=True):
    net = Net(seed=seed)
    cfg = dict(path_manager=pm, scheduler=sched, cc=cc)
    cli = Host(HostConfig(**cfg), net.timers, net.send, random.Random(seed))
    srv = Host(HostConfig(**cfg), net.timers, net.send, random.Random(seed + 1))
    for host, ips in ((cli, CLIENT_IPS), (srv, SERVER_IPS)):
        for ip in ips:
            host.add_address(ip)
            net.attach(b(ip), lambda pkt, now, h=host: h.input(pkt, now))
    net.link(b("10.0.1.1"), b("10.0.1.2"), delay=0.005, rate=50e6)
    net.link(b("10.0.2.1"), b("10.0.2.2"), delay=0.02, rate=20e6)
    if cross:
        net.link(b("10.0.1.1"), b("10.0.2.2"), delay=0.01, rate=20e6)
        net.link(b("10.0.2.1"), b("10.0.1.2"), delay=0.01, rate=20e6)
    return net, cli, srv


def transfer(net, cli, srv, size=600_000, timeout=60.0, wait_subflows=0):
    lst = srv.listen(None, 80)
    c = cli.connect(("10.0.1.2", 80), ("10.0.1.1", 0), now=net.now)
    assert net.run_until(lambda: bool(lst.queue), 10), "no connection"
    s = lst.accept()
    if wait_subflows:
        assert net.run_until(lambda: len(pairs(c)) >= wait_subflows, 10), pairs(c)
    data = random.Random(7).randbytes(size)
    sent = 0
    got = bytearray()
    end = net.now + timeout
    while net.now < end and len(got) < size:
        if sent < size:
            sent += c.send(data[sent:sent + 65536], net.now)
        try:
            while True:
                chunk = s.recv(1 << 20, net.now)
                if not chunk:
                    break
                got += chunk
        except BlockingIOError:
            pass
        net.run(net.now + 0.01)
    assert bytes(got) == data, f"received {len(got)} of {size} bytes"
    net.run(net.now + 2.0)   # let late joins and timers settle
    return c, s


def pairs(conn):
    """Address pairs of the established subflows (joins to unreachable pairs may be pending)."""
    return sorted((str(sf.local_addr), str(sf.remote_addr)) for sf in conn.subflows
                  if sf.established)


def test_fullmesh_2x2_joins_every_pair():
    net, cli, srv = build("fullmesh")
    c, s = transfer(net, cli, srv)
    assert pairs(c) == [("10.0.1.1", "10.0.1.2"), ("10.0.1.1", "10.0.2.2"),
                        ("10.0.2.1", "10.0.1.2"), ("10.0.2.1", "10.0.2.2")]
    assert len(s.subflows) == 4
    assert sum(1 for sf in c.subflows if sf.bytes_sent > 0) >= 2


def test_fullmesh_num_subflows_2():
    params = plugins.get("pm", "fullmesh").params
    old = params["num_subflows"]
    plugins.set_param("pm", "fullmesh", "num_subflows", 2)
    try:
        net, cli, srv = build("fullmesh", cross=False)
        c, s = transfer(net, cli, srv)
    finally:
        plugins.set_param("pm", "fullmesh", "num_subflows", old)
    # without cross links only same-subnet pairs work; each pair gets two subflows
    assert pairs(c) == [("10.0.1.1", "10.0.1.2")] * 2 + [("10.0.2.1", "10.0.2.2")] * 2
    assert len({sf.local[1] for sf in c.subflows if sf.established}) == 4


def test_ndiffports_three_subflows_on_one_pair():
    old = plugins.get("pm", "ndiffports").params["num_subflows"]
    plugins.set_param("pm", "ndiffports", "num_subflows", "3")
    try:
        net, cli, srv = build("ndiffports")
        c, s = transfer(net, cli, srv)
    finally:
        plugins.set_param("pm", "ndiffports", "num_subflows", old)
    assert pairs(c) == [("10.0.1.1", "10.0.1.2")] * 3
    assert len({sf.local[1] for sf in c.subflows}) == 3


def test_default_pm_stays_single_path():
    net, cli, srv = build("default")
    c, s = transfer(net, cli, srv)
    assert pairs(c) == [("10.0.1.1", "10.0.1.2")]


@pytest.mark.parametrize("sched", ["default", "roundrobin", "redundant"])
@pytest.mark.parametrize("cc", ["reno", "lia", "olia", "balia", "wvegas", "cubic"])
def test_every_scheduler_and_cc_delivers(sched, cc):
    net, cli, srv = build("fullmesh", sched, cc)
    c, s = transfer(net, cli, srv, size=300_000)
    assert len(pairs(c)) == 4
    assert all(m.cwnd >= m.mss for m in c.cc_group.members)


def test_redundant_sends_copies_on_every_subflow():
    net, cli, srv = build("fullmesh", "redundant", cross=False)
    c, s = transfer(net, cli, srv, size=300_000, wait_subflows=2)
    sent = [sf.bytes_sent for sf in c.subflows if sf.established]
    assert len(sent) == 2 and sum(sent) > 300_000   # more than one copy went out


def test_fullmesh_reacts_to_an_address_going_away_and_back():
    net, cli, srv = build("fullmesh", cross=False)
    c, s = transfer(net, cli, srv, size=200_000)
    assert len(pairs(c)) == 2
    cli.remove_address("10.0.2.1")
    net.run(net.now + 2.0)
    assert pairs(c) == [("10.0.1.1", "10.0.1.2")]
    cli.add_address("10.0.2.1")
    net.run(net.now + 3.0)
    assert pairs(c) == [("10.0.1.1", "10.0.1.2"), ("10.0.2.1", "10.0.2.2")]
