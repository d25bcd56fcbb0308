"""`mptcp-bpf endpoint|limits` changes (ip mptcp's words): parsing and checks, the control
commands against a fake stack, and the effects on live connections of two in-process
stacks joined by a socketpair (no root needed)."""

from __future__ import annotations

import json
import shutil
import tempfile
import time

import pytest

from mptcp_bpf import control
from mptcp_bpf.cli.commands import endpoint as ep_cli
from mptcp_bpf.cli.commands import limits as lim_cli
from mptcp_bpf.cli.main import main
from mptcp_bpf.errors import HintedError
from mptcp_bpf.socket import MptcpSocket
from mptcp_bpf.stack import SocketpairPort, Stack, StackConfig


# ----------------------------------------------------------------- parsing and checks
def test_add_words_as_ip_mptcp_takes_them():
    assert ep_cli.parse_add(["10.0.2.1", "signal", "backup"]) == {
        "address": "10.0.2.1", "port": 0, "dev": None, "id": None, "flags": ["signal", "backup"]}
    req = ep_cli.parse_add(["fd00::1", "port", "7000", "dev", "veth1", "id", "9", "signal"])
    assert req == {"address": "fd00::1", "port": 7000, "dev": "veth1", "id": 9,
                   "flags": ["signal"]}
    assert ep_cli.parse_add(["10.0.3.1", "subflow", "fullmesh"])["flags"] == ["subflow",
                                                                              "fullmesh"]


@pytest.mark.parametrize("words, text", [
    (["10.0.2.1", "signal", "fullmesh"], "mustn't have both signal and fullmesh"),
    (["10.0.2.1", "port", "7000", "subflow"], "must have signal when using port"),
    (["10.0.2.1", "implicit"], "IMPLICIT"),
    (["10.0.2.1", "laminar"], "unknown word"),
    (["nowhere", "signal"], "bad address"),
    (["0.0.0.0"], "cannot be an endpoint"),
    (["10.0.2.1", "id", "256"], "out of range"),
    (["10.0.2.1", "id"], "needs a value"),
    (["10.0.2.1", "port", "http", "signal"], "must be a number"),
    (["signal"], "needs an address"),
])
def test_add_refuses_what_the_kernel_refuses(words, text):
    with pytest.raises(HintedError) as exc:
        ep_cli.parse_add(words)
    assert text in str(exc.value) and exc.value.hint


def test_delete_change_show_words():
    assert ep_cli.parse_delete(["id", "3"]) == {"id": 3}
    assert ep_cli.parse_delete(["id", "0", "10.0.1.1"]) == {"id": 0, "address": "10.0.1.1"}
    assert ep_cli.parse_change(["id", "3", "backup"]) == {"id": 3, "backup": True}
    assert ep_cli.parse_change(["10.0.2.1", "nobackup", "fullmesh"]) == {
        "address": "10.0.2.1", "backup": False, "fullmesh": True}
    assert ep_cli.parse_show(["id", "4"]) == {"id": 4}
    for fn, words in ((ep_cli.parse_delete, ["10.0.1.1"]), (ep_cli.parse_change, ["id", "3"]),
                      (ep_cli.parse_change, ["backup"]), (ep_cli.parse_show, ["all"])):
        with pytest.raises(HintedError):
            fn(words)


def test_limits_words():
    assert lim_cli.parse_set(["subflows", "2", "add_addr_accepted", "8"]) == {
        "subflows": 2, "add_addr_accepted": 8}
    assert lim_cli.parse_set(["subflow", "0"]) == {"subflows": 0}
    for words, text in ((["subflows", "33"], "limit greater than maximum"),
                        (["add_addr_accepted", "-1"], "negative"), (["subflows"], "needs a value"),
                        (["rcv", "1"], "unknown limit"), ([], "needs subflows")):
        with pytest.raises(HintedError) as exc:
            lim_cli.parse_set(words)
        assert text in str(exc.value) and exc.value.hint, words


# ----------------------------------------------------------------- control commands
class ChangingStack:
    """A fake stack with ip mptcp's endpoint table semantics reduced to a dict."""

    def __init__(self):
        self.eps: dict[int, dict] = {1: {"id": 1, "address": "10.0.1.1", "port": 0,
                                         "flags": ["signal", "subflow"], "dev": "veth0"}}
        self.lim = {"subflows": 32, "add_addr_accepted": 8}
        self.calls: list[tuple] = []

    def conn_infos(self):
        return []

    def stats(self):
        return {}

    def endpoints(self):
        return sorted(self.eps.values(), key=lambda e: e["id"])

    def limits(self):
        return dict(self.lim)

    def subscribe(self, cb):
        return lambda: None

    def endpoint_add(self, address, port, dev, addr_id, flags):
        self.calls.append(("add", address, port, dev, addr_id, tuple(flags)))
        i = addr_id or max(self.eps, default=0) + 1
        if i in self.eps:
            raise HintedError(f"endpoint id {i} is in use", "pick another id")
        self.eps[i] = {"id": i, "address": address, "port": port, "flags": list(flags),
                       "dev": dev}
        return self.eps[i]

    def endpoint_delete(self, addr_id, address):
        self.calls.append(("delete", addr_id, address))
        if addr_id not in self.eps:
            raise HintedError(f"endpoint id {addr_id} not found", "see endpoint show")
        return self.eps.pop(addr_id)

    def endpoint_change(self, addr_id, address, backup, fullmesh):
        self.calls.append(("change", addr_id, address, backup, fullmesh))
        e = self.eps[addr_id]
        e["flags"] = [f for f in e["flags"] if f != "backup"] + (["backup"] if backup else [])
        return e

    def endpoint_flush(self):
        gone = self.endpoints()
        self.eps.clear()
        return gone

    def set_limits(self, subflows, add_addr_accepted):
        self.calls.append(("limits", subflows, add_addr_accepted))
        if subflows is not None:
            self.lim["subflows"] = subflows
        if add_addr_accepted is not None:
            self.lim["add_addr_accepted"] = add_addr_accepted
        return dict(self.lim)


@pytest.fixture
def ctl(monkeypatch):
    d = tempfile.mkdtemp(prefix="mpbe")
    monkeypatch.setenv("MPTCP_BPF_CTL_DIR", d)
    stack = ChangingStack()
    srv = control.ControlServer(stack).start()
    try:
        yield stack
    finally:
        srv.stop()
        shutil.rmtree(d, ignore_errors=True)


def test_control_commands_reach_the_stack(ctl):
    c = control.ControlClient()
    row = c.request("endpoint-add", address="10.0.2.1", flags=["signal", "backup"], port=7000)
    assert row["id"] == 2 and ctl.calls[-1] == ("add", "10.0.2.1", 7000, None, None,
                                                ("signal", "backup"))
    assert [e["id"] for e in c.request("endpoints", id=2)] == [2]
    with pytest.raises(HintedError) as exc:
        c.request("endpoints", id=7)
    assert "no endpoint with id 7" in str(exc.value)
    with pytest.raises(HintedError) as exc:
        c.request("endpoint-add", address="10.0.3.1", id=2)
    assert "in use" in str(exc.value) and exc.value.hint   # the stack's own error
    with pytest.raises(HintedError) as exc:   # checked by the server before the stack
        c.request("endpoint-add", address="10.0.3.1", flags=["signal", "fullmesh"])
    assert "signal and fullmesh" in str(exc.value)
    assert c.request("endpoint-change", id=2, backup=False)["flags"] == ["signal"]
    with pytest.raises(HintedError):
        c.request("endpoint-change", id=2)
    with pytest.raises(HintedError):
        c.request("endpoint-change", id=2, backup="yes")
    assert c.request("endpoint-delete", id=2)["address"] == "10.0.2.1"
    with pytest.raises(HintedError) as exc:
        c.request("endpoint-delete", id=2)
    assert "not found" in str(exc.value)
    assert c.request("limits-set", subflows=2) == {"subflows": 2, "add_addr_accepted": 8}
    with pytest.raises(HintedError) as exc:
        c.request("limits-set", add_addr_accepted=9)
    assert "limit greater than maximum" in str(exc.value)
    assert ctl.calls[-1] == ("limits", 2, None)
    assert [e["id"] for e in c.request("endpoint-flush")] == [1]
    assert c.request("endpoints") == []


def test_cli_add_change_delete_limits(ctl, capsys):
    assert main(["endpoint", "add", "10.0.2.1", "dev", "veth1", "subflow", "fullmesh"]) == 0
    assert capsys.readouterr().out.strip() == "10.0.2.1 id 2 subflow fullmesh dev veth1"
    assert main(["-j", "endpoint", "change", "id", "2", "backup"]) == 0
    assert json.loads(capsys.readouterr().out)["flags"] == ["subflow", "fullmesh", "backup"]
    assert main(["endpoint", "show", "id", "2"]) == 0
    assert "10.0.2.1 id 2" in capsys.readouterr().out
    assert main(["endpoint", "delete", "id", "5"]) == 1
    err = capsys.readouterr().err
    assert "not found" in err and "hint:" in err
    assert main(["endpoint", "del", "id", "2"]) == 0
    capsys.readouterr()
    assert main(["limits", "set", "subflow", "4", "add_addr_accepted", "1"]) == 0
    assert capsys.readouterr().out.strip() == "subflows 4 add_addr_accepted 1"
    assert main(["limits", "set", "subflows", "33"]) == 1
    assert "limit greater than maximum" in capsys.readouterr().err
    assert main(["endpoint", "flush"]) == 0
    assert main(["endpoint", "show"]) == 0
    assert capsys.readouterr().out.strip().endswith("no endpoints")


def test_a_stack_that_only_reports_says_so(monkeypatch):
    d = tempfile.mkdtemp(prefix="mpbe")
    monkeypatch.setenv("MPTCP_BPF_CTL_DIR", d)

    class ReadOnly(ChangingStack):
        endpoint_add = None  # type: ignore[assignment]
    srv = control.ControlServer(ReadOnly()).start()
    try:
        with pytest.raises(HintedError) as exc:
            control.ControlClient().request("endpoint-add", address="10.0.2.1")
        assert "does not change endpoints" in str(exc.value)
    finally:
        srv.stop()
        shutil.rmtree(d, ignore_errors=True)


# ----------------------------------------------------------------- live connections
def cfg() -> StackConfig:
    return StackConfig(reserve_ports=False, fast_path=False, checksum=False)


def wait_for(fn, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture
def pair():
    """Client and server stacks over one socketpair path, one connection established."""
    a, b = SocketpairPort.pair()
    cli = Stack(ports=[a], config=cfg(), name="cli", addresses=["10.0.1.1"])
    srv = Stack(ports=[b], config=cfg(), name="srv", addresses=["10.0.1.2"])
    socks = []
    try:
        lst = MptcpSocket(stack=srv)
        socks.append(lst)
        lst.bind(("", 7100))
        lst.listen()
        lst.settimeout(30)
        c = MptcpSocket(stack=cli)
        socks.append(c)
        c.settimeout(30)
        c.connect(("10.0.1.2", 7100))
        acc, _ = lst.accept()
        socks.append(acc)
        acc.settimeout(30)
        acc.sendall(b"!")   # one byte each way: fully established
        assert c.recv(1) == b"!"
        c.sendall(b"?")
        assert acc.recv(1) == b"?"
        yield cli, srv
    finally:
        for s in socks:
            s.close()
        cli.close()
        srv.close()


def subflows(stack: Stack) -> list[dict]:
    return [sf for c in stack.conn_infos() for sf in c.get("subflows") or []
            if sf.get("state") == "ESTABLISHED"]


def test_endpoint_changes_reach_live_connections(pair):
    cli, srv = pair
    events: list[dict] = []
    unsub = srv.subscribe(events.append)
    try:
        row = srv.endpoint_add("10.0.9.2", flags=["signal"])
        assert row["flags"] == ["signal"] and not row["auto"]
        # the server announces it; the client (fullmesh) joins it
        wait_for(lambda: cli.stats().get("AddAddr", 0) >= 1, "the client's AddAddr")
        wait_for(lambda: any("10.0.9.2" in str(sf["local"]) for sf in subflows(srv)),
                 "a join to the new endpoint")
        with pytest.raises(HintedError):
            srv.endpoint_add("10.0.9.2")          # the address exists
        with pytest.raises(HintedError):
            srv.endpoint_add("10.0.9.3", addr_id=row["id"])   # the id is in use

        srv.endpoint_change(row["id"], backup=True)
        wait_for(lambda: cli.stats().get("MPPrioRx", 0) >= 1, "the client's MPPrioRx")
        assert [e["flags"] for e in srv.endpoints() if e["id"] == row["id"]] == [
            ["signal", "backup"]]
        with pytest.raises(HintedError):
            srv.endpoint_change(row["id"], fullmesh=True)    # signal + fullmesh

        srv.endpoint_delete(row["id"])
        wait_for(lambda: cli.stats().get("RmAddr", 0) >= 1, "the client's RmAddr")
        wait_for(lambda: not any("10.0.9.2" in str(sf["local"]) for sf in subflows(srv)),
                 "the subflow of the deleted endpoint to close")
        with pytest.raises(HintedError):
            srv.endpoint_delete(row["id"])
        # with a port: announced with it, and the join goes to that port (ip-mptcp(8))
        srv.endpoint_add("10.0.9.4", port=7200, flags=["signal"])
        wait_for(lambda: any("10.0.9.4:7200" in str(sf["remote"]) for sf in subflows(cli)),
                 "a join to the endpoint's port")
        kinds = {e.get("type") for e in events}
        assert {"endpoint_added", "announced", "sf_priority", "removed",
                "endpoint_removed"} <= kinds, kinds
    finally:
        unsub()


def test_client_signal_endpoint_and_limits(pair):
    cli, srv = pair
    assert cli.limits() == {"subflows": 32, "add_addr_accepted": 8}
    assert cli.set_limits(add_addr_accepted=0) == {"subflows": 32, "add_addr_accepted": 0}
    # a client announces a signal endpoint too, as the kernel does in either role
    cli.endpoint_add("10.0.8.1", flags=["signal"])
    wait_for(lambda: srv.stats().get("AddAddr", 0) >= 1, "the server's AddAddr")
    # the client accepts no announced address now: no join to it
    srv.endpoint_add("10.0.9.2", flags=["signal"])
    wait_for(lambda: cli.stats().get("AddAddr", 0) >= 1, "the client's AddAddr")
    time.sleep(0.5)
    assert not any("10.0.9.2" in str(sf["remote"]) for sf in subflows(cli))
    assert cli.stats().get("MPJoinSynTx", 0) == 0
    # a subflow endpoint: joins to the peer's initial address, within the subflows limit
    cli.set_limits(subflows=0)
    cli.endpoint_add("10.0.7.1", flags=["subflow"])
    time.sleep(0.5)
    assert cli.stats().get("MPJoinSynTx", 0) == 0
    cli.set_limits(subflows=1)
    row = cli.endpoint_change(None, "10.0.7.1", fullmesh=True)   # a flag change reconsiders
    assert row["flags"] == ["subflow", "fullmesh"]
    wait_for(lambda: any("10.0.7.1" in str(sf["local"]) and "10.0.1.2" in str(sf["remote"])
                         for sf in subflows(cli)), "a join from the subflow endpoint")
    assert len(cli.endpoint_flush()) == 3
    assert cli.endpoints() == []


# ----------------------------------------------------------------- the path manager's rules
class _Conn:
    """Just what the fullmesh path manager reads (see tests/unit/test_pm.py for more)."""

    def __init__(self, role: str, locals_: list, remotes: list, **limits) -> None:
        from types import SimpleNamespace
        self.role, self.token, self.local_port, self.remote_port = role, 1, 40000, 80
        self.locals_, self.remote_addresses, self.subflows = locals_, remotes, []
        self.host = SimpleNamespace(config=SimpleNamespace(**limits))
        self.opened: list[tuple] = []
        self.announced: list[int] = []

    def local_addresses(self):
        return list(self.locals_)

    def open_subflow(self, local_addr, remote_addr, remote_port, local_port=0, backup=False):
        from types import SimpleNamespace
        sf = SimpleNamespace(local=(local_addr, 50000 + len(self.opened)),
                             remote=(remote_addr, remote_port), backup=backup)
        self.opened.append((str(local_addr), str(remote_addr), backup))
        self.subflows.append(sf)
        return sf

    def announce(self, addr_id, address, port=None):
        self.announced.append(addr_id)


def _fullmesh_on(conn: _Conn, initial: tuple) -> None:
    """The connection's initial subflow, then the fullmesh path manager's first decisions."""
    from types import SimpleNamespace
    from mptcp_bpf import plugins
    conn.subflows.append(SimpleNamespace(local=initial[0], remote=initial[1], backup=False))
    plugins.create("pm", "fullmesh").on_established(conn)


def test_fullmesh_follows_endpoint_flags_and_limits():
    import ipaddress
    from mptcp_bpf.mptcp.api import LocalAddr, RemoteAddr
    ip = ipaddress.ip_address
    locals_ = [LocalAddr(0, ip("10.0.1.1")),
               LocalAddr(1, ip("10.0.2.1"), flags=frozenset({"subflow"})),
               LocalAddr(2, ip("10.0.3.1"), True, flags=frozenset({"subflow", "fullmesh"})),
               LocalAddr(3, ip("10.0.4.1"), flags=frozenset({"signal"})),
               LocalAddr(4, ip("10.0.5.1"))]            # found on a device
    remotes = [RemoteAddr(0, ip("10.0.1.2"), 80), RemoteAddr(5, ip("10.0.6.2"), 80)]
    initial = ((ip("10.0.1.1"), 40000), (ip("10.0.1.2"), 80))
    c = _Conn("client", locals_, list(remotes), join_limit=None, add_addr_accepted=None)
    _fullmesh_on(c, initial)
    assert c.announced == [3]   # a client announces signal endpoints only
    assert sorted(c.opened) == sorted([
        ("10.0.1.1", "10.0.6.2", False),                                   # id 0: every address
        ("10.0.2.1", "10.0.1.2", False),                                   # subflow: initial only
        ("10.0.3.1", "10.0.1.2", True), ("10.0.3.1", "10.0.6.2", True),    # fullmesh, backup
        ("10.0.5.1", "10.0.1.2", False), ("10.0.5.1", "10.0.6.2", False)])  # device: mesh
    # limits: no announced address used, one additional subflow
    c = _Conn("client", locals_, list(remotes), join_limit=1, add_addr_accepted=0)
    _fullmesh_on(c, initial)
    assert len(c.opened) == 1 and all(r == "10.0.1.2" for _, r, _ in c.opened)
    # a server announces device addresses and signal endpoints, never subflow-only ones
    s = _Conn("server", locals_, list(remotes[:1]))
    _fullmesh_on(s, ((ip("10.0.1.1"), 80), (ip("10.0.1.2"), 40000)))
    assert sorted(s.announced) == [3, 4] and s.opened == []
