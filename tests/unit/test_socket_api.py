"""Socket API semantics (blocking, non-blocking, timeouts, errors as the stdlib's), the
selector-usable fileno and the asyncio layer, over a fake in-memory host: the protocol is
tested elsewhere; here only the socket layer and the stack's loop/timers/locking are."""

from __future__ import annotations

import asyncio
import errno
import selectors
import socket as pysocket
import threading
import time

import pytest

import mptcp_bpf
from mptcp_bpf import sockopt as so
from mptcp_bpf.socket import MptcpSocket, aio
from mptcp_bpf.stack import Stack, StackConfig


class FakeConn:
    """Implements mptcp.api.ConnectionApi over an in-memory pipe to a peer FakeConn."""

    def __init__(self, host: "FakeHost", local: tuple, remote: tuple, bufsize: int = 65536):
        self.host = host
        self.local, self.remote = local, remote
        self.state = "SYN_SENT"
        self.connected = False
        self.eof = False
        self.error = None
        self.fallback = False
        self.version = 1
        self.token = 1234
        self.path_manager, self.scheduler, self.cc = "fullmesh", "default", "reno"
        self.subflows = []
        self.on_readable = self.on_writable = self.on_state = None
        self.peer: FakeConn | None = None
        self.rx = bytearray()
        self.rx_fin = False
        self.bufsize = bufsize
        self.shut = False

    def _cb(self, name, *a):
        cb = getattr(self, name)
        if cb is not None:
            cb(*a)

    def establish(self, now=0.0):
        self.connected, self.state = True, "ESTABLISHED"
        self._cb("on_state", self.state)

    def send(self, data, now=None):
        if self.shut or self.error or self.peer is None:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")
        room = self.bufsize - len(self.peer.rx)
        n = max(0, min(room, len(data)))
        if n:
            self.peer.rx += bytes(data[:n])
            self.peer._cb("on_readable")
        return n

    def recv(self, n, now=None):
        if self.rx:
            out = bytes(self.rx[:n])
            del self.rx[:n]
            if self.peer is not None:
                self.peer._cb("on_writable")
            return out
        if self.rx_fin:
            self.eof = True
            return b""
        raise BlockingIOError(errno.EAGAIN, "nothing")

    def readable(self):
        return bool(self.rx) or self.rx_fin

    def writable(self):
        return self.peer is not None and len(self.peer.rx) < self.bufsize

    def shutdown(self, now=None):
        self.shut = True
        if self.peer is not None:
            self.peer.rx_fin = True
            self.peer._cb("on_readable")

    def close(self, now=None):
        self.shutdown(now)
        self.state = "CLOSED"

    def abort(self, now=None):
        self.state = "CLOSED"
        if self.peer is not None:
            self.peer.error = errno.ECONNRESET
            self.peer._cb("on_state", "CLOSED")

    def info(self):
        return {"token": self.token, "state": self.state, "subflows": []}


class FakeHost:
    """Listeners and connections on one shared in-memory 'network' (a dict)."""

    def __init__(self, net: dict, ip: str, timers):
        self.net, self.ip, self.timers = net, ip, timers
        self.output = None
        self.conns = []
        self.blackhole = False

    def input(self, packet, now, meta=None):
        pass

    def add_address(self, ip, addr_id=None, backup=False):
        self.ip = ip

    def listen(self, ip, port, backlog=128, on_accept=None, **kw):
        self.net[port] = on_accept
        return type("L", (), {"close": lambda s: self.net.pop(port, None)})()

    def connect(self, remote, local=None, now=0.0, **opts):
        ip, port = remote
        c = FakeConn(self, (self.ip, 40000 + len(self.conns)), remote)
        self.conns.append(c)
        if self.blackhole:
            def fail(t):
                c.error = errno.ETIMEDOUT
                c._cb("on_state", "CLOSED")
            self.timers.schedule(now + 0.3, fail)
            return c

        def done(t):
            acc = self.net.get(port)
            if acc is None:
                c.error = errno.ECONNREFUSED
                c.state = "CLOSED"
                c._cb("on_state", "CLOSED")
                return
            s = FakeConn(self, remote, c.local)
            s.peer, c.peer = c, s
            s.connected, s.state = True, "ESTABLISHED"
            c.establish()
            acc(s)
        self.timers.schedule(now + 0.01, done)
        return c


@pytest.fixture
def stack():
    net: dict = {}

    class _S(Stack):
        def _make_host(self):
            return FakeHost(net, "10.0.0.1", self.timers)
    st = _S(config=StackConfig(reserve_ports=False), name="fake")
    try:
        yield st
    finally:
        st.close()


def pair(stack, port=5000):
    srv = MptcpSocket(pysocket.AF_INET, stack=stack)
    srv.bind(("", port))
    srv.listen()
    cli = MptcpSocket(pysocket.AF_INET, stack=stack)
    cli.settimeout(5)
    cli.connect(("10.0.0.1", port))
    srv.settimeout(5)
    acc, addr = srv.accept()
    acc.settimeout(5)
    return srv, cli, acc


def test_connect_accept_send_recv(stack):
    srv, cli, acc = pair(stack)
    with srv, cli, acc:
        assert cli.sendall(b"hello") is None
        assert acc.recv(100) == b"hello"
        buf = bytearray(10)
        acc.sendall(b"world")
        assert cli.recv_into(buf) == 5 and bytes(buf[:5]) == b"world"
        cli.shutdown(pysocket.SHUT_WR)
        assert acc.recv(10) == b""
        assert cli.getpeername() == ("10.0.0.1", 5000)


def test_refused_and_connect_ex(stack):
    s = MptcpSocket(stack=stack)
    s.settimeout(5)
    with pytest.raises(ConnectionRefusedError):
        s.connect(("10.0.0.1", 1))
    s.close()
    s = MptcpSocket(stack=stack)
    assert s.connect_ex(("10.0.0.1", 2)) == errno.ECONNREFUSED
    s.close()


def test_nonblocking_connect_and_recv(stack):
    srv = MptcpSocket(stack=stack)
    srv.bind(("", 5001))
    srv.listen()
    srv.setblocking(False)
    with pytest.raises(BlockingIOError):
        srv.accept()
    cli = MptcpSocket(stack=stack)
    cli.setblocking(False)
    with pytest.raises(BlockingIOError) as ei:
        cli.connect(("10.0.0.1", 5001))
    assert ei.value.errno == errno.EINPROGRESS
    sel = selectors.DefaultSelector()
    sel.register(srv, selectors.EVENT_READ)
    assert sel.select(5), "listening socket's fileno did not become readable"
    acc, _ = srv.accept()
    sel.close()
    deadline = time.monotonic() + 5
    while cli.connect_ex(("10.0.0.1", 5001)) not in (0, errno.EISCONN):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with pytest.raises(BlockingIOError):
        acc.setblocking(False)
        acc.recv(10)
    sel = selectors.DefaultSelector()
    sel.register(acc, selectors.EVENT_READ)
    assert not sel.select(0)
    cli.send(b"x")
    assert sel.select(5)
    assert acc.recv(10) == b"x"
    assert not sel.select(0), "fileno stays readable after the data was read"
    sel.close()
    for s in (srv, cli, acc):
        s.close()


def test_timeouts(stack):
    srv, cli, acc = pair(stack, 5002)
    with srv, cli, acc:
        acc.settimeout(0.2)
        assert acc.gettimeout() == 0.2
        t0 = time.monotonic()
        with pytest.raises(pysocket.timeout):
            acc.recv(10)
        assert time.monotonic() - t0 >= 0.15
        srv.settimeout(0.1)
        with pytest.raises(TimeoutError):
            srv.accept()


def test_blackhole_connect_times_out(stack):
    stack.host.blackhole = True
    s = MptcpSocket(stack=stack)
    s.settimeout(5)
    with pytest.raises(TimeoutError) as ei:
        s.connect(("10.0.0.9", 80))
    assert ei.value.errno == errno.ETIMEDOUT
    s.close()


def test_send_blocks_until_peer_reads(stack):
    srv, cli, acc = pair(stack, 5003)
    with srv, cli, acc:
        data = bytes(range(256)) * 2048  # 512 KiB through a 64 KiB window
        got = bytearray()

        def reader():
            while len(got) < len(data):
                chunk = acc.recv(7000)
                if not chunk:
                    break
                got.extend(chunk)
        t = threading.Thread(target=reader, daemon=True)
        t.start()
        cli.sendall(data)
        t.join(10)
        assert bytes(got) == data
        cli.setblocking(False)
        with pytest.raises(BlockingIOError):
            while True:
                cli.send(b"z" * 65536)


def test_errors_after_close_and_shutdown(stack):
    srv, cli, acc = pair(stack, 5004)
    cli.shutdown(pysocket.SHUT_WR)
    with pytest.raises(BrokenPipeError):
        cli.send(b"x")
    acc.close()
    cli.close()
    assert cli.fileno() == -1
    with pytest.raises(OSError) as ei:
        cli.recv(1)
    assert ei.value.errno == errno.EBADF
    s = MptcpSocket(stack=stack)
    with pytest.raises(OSError) as ei:
        s.recv(1)
    assert ei.value.errno == errno.ENOTCONN
    with pytest.raises(OSError) as ei:
        s.getpeername()
    assert ei.value.errno == errno.ENOTCONN
    s.close()
    srv.close()


def test_reset_reported(stack):
    srv, cli, acc = pair(stack, 5005)
    with srv, cli, acc:
        stack.call(acc.connection.abort)
        with pytest.raises(ConnectionResetError):
            cli.recv(10)


def test_family_and_type_checks(stack):
    with pytest.raises(OSError) as ei:
        MptcpSocket(pysocket.AF_UNIX, stack=stack)
    assert ei.value.errno == errno.EAFNOSUPPORT
    with pytest.raises(OSError):
        MptcpSocket(pysocket.AF_INET, pysocket.SOCK_DGRAM, stack=stack)
    s = MptcpSocket(stack=stack)
    with pytest.raises(OverflowError):
        s.bind(("", 70000))
    with pytest.raises(TypeError):
        s.connect("10.0.0.1")
    s.close()


def test_sockopts_before_connect(stack):
    s = MptcpSocket(stack=stack)
    s.setsockopt(so.SOL_TCP, mptcp_bpf.MPTCP_SCHEDULER, b"roundrobin")
    assert s.getsockopt(so.SOL_TCP, mptcp_bpf.MPTCP_SCHEDULER, 16).rstrip(b"\0") == b"roundrobin"
    with pytest.raises(OSError) as ei:
        s.setsockopt(so.SOL_TCP, mptcp_bpf.MPTCP_PATH_MANAGER, b"nonesuch")
    assert ei.value.errno == errno.ENOENT
    with pytest.raises(OSError) as ei:
        s.setsockopt(so.SOL_TCP, mptcp_bpf.MPTCP_SCHEDULER, b"")
    assert ei.value.errno == errno.EINVAL
    s.setsockopt(so.SOL_TCP, mptcp_bpf.MPTCP_ENABLED, 1)
    assert s.getsockopt(so.SOL_TCP, mptcp_bpf.MPTCP_ENABLED) == 1
    s.setsockopt(pysocket.SOL_SOCKET, pysocket.SO_REUSEADDR, 1)
    with pytest.raises(OSError) as ei:
        s.setsockopt(99, 1, 1)
    assert ei.value.errno == errno.ENOPROTOOPT
    s.close()


def test_enabled_modes(stack):
    s = MptcpSocket(stack=stack)
    stack.config.enabled = 2
    assert s._conn_options()["mptcp"] is False
    s.setsockopt(so.SOL_TCP, mptcp_bpf.MPTCP_ENABLED, 1)
    assert s._conn_options()["mptcp"] is True
    stack.config.enabled = 0
    with pytest.raises(OSError) as ei:
        s.setsockopt(so.SOL_TCP, mptcp_bpf.MPTCP_ENABLED, 1)
    assert ei.value.errno == errno.EPERM
    assert s._conn_options()["mptcp"] is False
    stack.config.enabled = 1
    s.close()


def test_module_is_callable():
    assert callable(mptcp_bpf.socket)
    assert mptcp_bpf.MPTCP_GET_SUB_IDS == 66 and mptcp_bpf.MPTCP_SUB_SETSOCKOPT == 72


def test_asyncio_streams(stack):
    async def main():
        async def handle(reader, writer):
            data = await reader.read()
            writer.write(data.upper())
            await writer.drain()
            writer.close()

        server = await aio.start_server(handle, "", 5010, stack=stack)
        reader, writer = await aio.open_connection("10.0.0.1", 5010, stack=stack, timeout=5)
        writer.write(b"abc" * 30000)
        await writer.drain()
        writer.write_eof()
        got = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        server.close()
        await server.wait_closed()
        return got

    assert asyncio.run(main()) == b"ABC" * 30000


def test_port_reservation_blocks_kernel_collisions():
    from mptcp_bpf.stack import PortReservations
    res = PortReservations(True)
    try:
        port = res.reserve(4, 0)
        k = pysocket.socket()
        try:
            with pytest.raises(OSError) as ei:
                k.bind(("0.0.0.0", port))
            assert ei.value.errno == errno.EADDRINUSE
        finally:
            k.close()
        with pytest.raises(OSError):
            kl = pysocket.socket()
            kl.bind(("127.0.0.1", 0))
            kl.listen()
            try:
                res.reserve(4, kl.getsockname()[1])
            finally:
                kl.close()
        res.release(4, port)
        k = pysocket.socket()
        k.bind(("0.0.0.0", port))
        k.close()
    finally:
        res.close()
