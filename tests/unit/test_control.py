"""The control server and the inspection CLI against a fake stack (no root needed)."""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import pytest

from mptcp_bpf import control, plugins
from mptcp_bpf.cli.main import main
from mptcp_bpf.errors import HintedError

CONN = {
    "token": 0x1A2B3C4D, "remote_token": 0x11223344, "version": 1, "state": "ESTABLISHED",
    "role": "client", "csum": False, "local_key": 0x0102030405060708,
    "remote_key": 0x1112131415161718, "pm": "fullmesh", "sched": "default", "cc": "lia",
    "bytes_sent": 1000, "bytes_acked": 900, "bytes_received": 50,
    "local": ["10.0.1.1", 40000], "remote": ["10.0.1.2", 5201],
    "subflows": [
        {"id": 0, "local_id": 0, "remote_id": 0, "local": ["10.0.1.1", 40000],
         "remote": ["10.0.1.2", 5201], "state": "ESTABLISHED", "backup": False,
         "rtt": 0.0012, "cwnd": 14000, "bytes_sent": 600, "bytes_received": 50,
         "mapping": {"dsn": 123456, "ssn": 1, "len": 1400}},
        {"id": 1, "local_id": 1, "remote_id": 0, "local": ["10.0.2.1", 40001],
         "remote": ["10.0.1.2", 5201], "state": "ESTABLISHED", "backup": True,
         "rtt": 0.025, "cwnd": 2800, "bytes_sent": 400, "bytes_received": 0, "mapping": None},
    ],
}


# the shape of mptcp.connection.Connection.info(): tokens and keys as hex text
CONN2 = {"token": "0badcafe", "remote_token": "12345678", "local_key": "00000000000000ff",
         "remote_key": None, "version": 0, "csum": True, "role": "server", "state": "CLOSE_WAIT",
         "fallback": False, "fallback_reason": None, "error": None, "local": "10.0.1.2:5201",
         "remote": "10.0.1.1:40000", "path_manager": "ndiffports", "scheduler": "redundant",
         "cc": "olia", "snd_una": 1, "snd_nxt": 1, "rcv_nxt": 11, "sndbuf": 0,
         "remote_addresses": [{"id": 0, "addr": "10.0.1.1", "port": 40000}],
         "subflows": [{"id": 0, "local": "10.0.1.2:5201", "remote": "10.0.1.1:40000",
                       "local_id": 0, "remote_id": 0, "family": 4, "backup": False,
                       "peer_backup": True, "pf": False, "state": "ESTABLISHED",
                       "rtt": None, "cwnd": 14480, "in_flight": 0, "mss": 1448,
                       "bytes_sent": 0, "bytes_received": 10,
                       "mapping": {"dsn": 5, "ssn": 1, "len": 10, "got": 4}, "error": None}]}


class FakeStack:
    def __init__(self):
        self.subs = []
        self.lock = threading.Lock()

    def conn_infos(self):
        return [CONN, CONN2]

    def stats(self):
        return {"MPCapableSYNRX": 1, "MPJoinAckHMacFailure": 0}

    def endpoints(self):
        return [{"id": 1, "address": "10.0.2.1", "flags": ["signal"], "dev": "veth1"},
                {"id": 2, "address": "10.0.3.1", "port": 7000, "flags": ["subflow"],
                 "backup": True}]

    def limits(self):
        return {"subflows": 32, "add_addr_accepted": 8}

    def subscribe(self, cb):
        with self.lock:
            self.subs.append(cb)

        def unsub():
            with self.lock:
                self.subs.remove(cb)
        return unsub

    def emit(self, ev):
        with self.lock:
            subs = list(self.subs)
        for cb in subs:
            cb(ev)


@pytest.fixture
def server(ctl_dir):
    stack = FakeStack()
    srv = control.ControlServer(stack).start()
    try:
        yield stack, srv
    finally:
        srv.stop()


def test_socket_path_is_per_namespace(ctl_dir):
    path = control.socket_path()
    assert path == os.path.join(ctl_dir, f"{os.stat('/proc/self/ns/net').st_ino}.sock")


def test_requests(server):
    stack, srv = server
    c = control.ControlClient()
    assert c.request("hello")["pid"] == os.getpid()
    assert c.request("conns")[0]["token"] == CONN["token"]
    assert c.request("conns", token=5) == []
    assert c.request("conns", token=0x0BADCAFE)[0]["cc"] == "olia"
    assert c.request("conns", token="0badcafe")[0]["cc"] == "olia"
    rows = c.request("subflows", token=CONN["token"])
    assert [r["id"] for r in rows] == [0, 1] and all(r["token"] == CONN["token"] for r in rows)
    assert len(c.request("subflows")) == 3
    assert c.request("stats")["MPCapableSYNRX"] == 1
    assert c.request("limits") == {"subflows": 32, "add_addr_accepted": 8}
    assert len(c.request("endpoints")) == 2
    with pytest.raises(HintedError) as exc:
        c.request("nonsense")
    assert "unknown request" in str(exc.value) and "conns" in exc.value.hint


def test_plugin_params_through_the_socket(server):
    c = control.ControlClient()
    table = c.request("plugin-get")
    assert table["sched"]["roundrobin"]["params"]["num_segments"] == 1
    old = plugins.get("sched", "roundrobin").params["num_segments"]
    try:
        r = c.request("plugin-set", kind="sched", name="roundrobin", param="num_segments",
                      value="3")
        assert r["value"] == 3
        assert plugins.get("sched", "roundrobin").params["num_segments"] == 3
        with pytest.raises(HintedError):
            c.request("plugin-set", kind="sched", name="roundrobin", param="nope", value="1")
        with pytest.raises(HintedError):
            c.request("plugin-set", kind="sched", name="roundrobin", param="num_segments",
                      value="many")
        with pytest.raises(HintedError):
            c.request("plugin-set", kind="bogus", name="x", param="y", value="1")
    finally:
        plugins.set_param("sched", "roundrobin", "num_segments", old)


def test_malformed_requests_are_counted_not_fatal(server):
    stack, srv = server
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(srv.path)
    s.sendall(b"not json\n[1,2]\n{\"cmd\": \"hello\"}\n")
    buf = b""
    while buf.count(b"\n") < 3:
        chunk = s.recv(4096)
        assert chunk
        buf += chunk
    s.close()
    lines = [json.loads(x) for x in buf.splitlines()]
    assert [x["ok"] for x in lines] == [False, False, True]
    assert srv.malformed == 2
    assert control.ControlClient().request("hello")["protocol"] == 1


def test_monitor_streams_events(server):
    stack, srv = server
    got = []
    stop = threading.Event()

    def reader():
        for ev in control.ControlClient().monitor(stop):
            got.append(ev)
            if len(got) == 3:
                break

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    deadline = time.monotonic() + 60
    while not stack.subs and time.monotonic() < deadline:
        time.sleep(0.02)
    assert stack.subs, "monitor client never subscribed"
    for i, kind in enumerate(["created", "established", "sf_established"]):
        stack.emit({"type": kind, "token": CONN["token"], "id": i})
    t.join(timeout=60)
    stop.set()
    assert [e["type"] for e in got] == ["created", "established", "sf_established"]
    deadline = time.monotonic() + 60
    while stack.subs and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not stack.subs, "the server did not unsubscribe after the client left"


def test_second_server_is_refused_and_stale_socket_replaced(ctl_dir):
    first = control.ControlServer(FakeStack()).start()
    try:
        with pytest.raises(HintedError):
            control.ControlServer(FakeStack()).start()
    finally:
        first.stop()
    # a socket file left by a dead process
    path = control.socket_path()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()
    again = control.ControlServer(FakeStack()).start()
    try:
        assert control.ControlClient().request("hello")
    finally:
        again.stop()
    assert not os.path.exists(path)


# ------------------------------------------------------------------------ the CLI

NO_STACK_CMDS = [["conn", "show"], ["subflow", "show"], ["endpoint", "show"],
                 ["limits", "show"], ["monitor"], ["-j", "conn", "show"]]


@pytest.mark.parametrize("argv", NO_STACK_CMDS, ids=" ".join)
def test_cli_says_when_no_stack_runs(ctl_dir, capsys, argv):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "no mptcp-bpf stack runs in this network namespace" in err
    assert "hint:" in err


def test_cli_text_and_json(server, capsys):
    assert main(["conn", "show"]) == 0
    out = capsys.readouterr().out
    assert "token 0x1a2b3c4d ESTABLISHED v1" in out and "local_key 0x0102030405060708" in out
    assert "pm fullmesh sched default cc lia" in out
    assert main(["-j", "conn", "show"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["token"] == CONN["token"]
    assert "token 0x0badcafe CLOSE_WAIT v0 server" in out
    assert "remote_token 0x12345678 local_key 0x00000000000000ff remote_key - csum on" in out
    assert "pm ndiffports sched redundant cc olia bytes_sent 0 bytes_acked 0 " \
        "bytes_received 10 subflows 1" in out and "snd_una 1" in out
    assert "fallback_reason" not in out
    assert main(["conn", "show", "0x1a2b3c4d"]) == 0
    assert "0badcafe" not in capsys.readouterr().out
    assert main(["conn", "show", "0badcafe"]) == 0
    assert "0x1a2b3c4d" not in capsys.readouterr().out
    assert main(["conn", "show", "0x5"]) == 1
    assert "no connection with token" in capsys.readouterr().err

    assert main(["subflow", "show"]) == 0
    out = capsys.readouterr().out
    assert "10.0.1.1:40000 -> 10.0.1.2:5201 ids 0/0 ESTABLISHED" in out
    assert "rtt 1.20ms cwnd 14000" in out and "mapping dsn 123456 ssn 1 len 1400" in out
    assert "10.0.2.1:40001 -> 10.0.1.2:5201 ids 1/0 ESTABLISHED backup" in out
    assert "token 0x0badcafe sf 0 10.0.1.2:5201 -> 10.0.1.1:40000 ids 0/0 ESTABLISHED" in out
    assert "rtt - cwnd 14480" in out and "mapping dsn 5 ssn 1 len 10 got 4" in out
    assert main(["-p", "subflow", "show", "0x1a2b3c4d"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2 and rows[1]["backup"] is True

    assert main(["endpoint", "show"]) == 0
    out = capsys.readouterr().out
    assert "10.0.2.1 id 1 signal dev veth1" in out
    assert "10.0.3.1 port 7000 id 2 subflow backup" in out
    assert main(["-j", "endpoint", "show"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2

    assert main(["limits", "show"]) == 0
    assert capsys.readouterr().out.strip() == "subflows 32 add_addr_accepted 8"
    assert main(["-j", "limits"]) == 0
    assert json.loads(capsys.readouterr().out)["subflows"] == 32


def test_cli_monitor(server, capsys):
    stack, srv = server

    def feed():
        deadline = time.monotonic() + 60
        while not stack.subs and time.monotonic() < deadline:
            time.sleep(0.02)
        stack.emit({"type": "created", "token": CONN["token"], "local": ["10.0.1.1", 1]})
        stack.emit({"type": "sf_established", "token": "0badcafe", "time": 1.5, "sf_id": 1,
                    "locid": 1, "remid": 0, "saddr": "fd00::1", "daddr": "10.0.1.2",
                    "sport": 40001, "dport": 80, "backup": 0})
        stack.emit({"type": "closed", "token": CONN["token"]})

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    assert main(["monitor", "-n", "3"]) == 0
    t.join(timeout=60)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("[         CREATED] token=1a2b3c4d") and "10.0.1.1:1" in out[0]
    assert out[1] == ("[  SF_ESTABLISHED] token=0badcafe remid=0 locid=1 saddr6=fd00::1 "
                      "daddr4=10.0.1.2 sport=40001 dport=80 backup=0 sf_id=1")
    assert out[2].startswith("[          CLOSED]")
