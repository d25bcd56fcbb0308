"""Ours against ours, end to end through the real stack (Host, loop, timers, sockets):
two in-process stacks joined by two 'paths' of AF_UNIX socketpairs, no root needed.
Covers transfers in v0/v1 with checksums on/off, joins, a path dying mid-transfer, and the
enhanced socket API (sub ids, tuples, open/close a subflow, TCP_INFO, IP_TOS on the wire)."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import socket as pysocket
import threading
import time

import pytest

import mptcp_bpf
from mptcp_bpf import sockopt as so
from mptcp_bpf.socket import MptcpSocket
from mptcp_bpf.stack import SocketpairPort, Stack, StackConfig

pytest.importorskip("mptcp_bpf.mptcp.host")

CLI = ["10.0.1.1", "10.0.2.1"]
SRV = ["10.0.1.2", "10.0.2.2"]


class Net:
    """Two stacks, two paths; `ports[i]` = (client end, server end) of path i."""

    def __init__(self, cli_cfg: StackConfig, srv_cfg: StackConfig) -> None:
        self.ports = [SocketpairPort.pair() for _ in range(2)]
        self.seen: list[bytes] = []
        self.cli = Stack(ports=[a for a, _ in self.ports], config=cli_cfg, name="cli")
        self.srv = Stack(ports=[b for _, b in self.ports], config=srv_cfg, name="srv")
        for i in range(2):
            self.cli.add_address(CLI[i], self.ports[i][0])
            self.srv.add_address(SRV[i], self.ports[i][1])

    def close(self) -> None:
        self.cli.close()
        self.srv.close()


def cfg(**kw) -> StackConfig:
    base = dict(reserve_ports=False, fast_path=False, checksum=False)
    base.update(kw)
    return StackConfig(**base)


@pytest.fixture
def net_factory():
    nets = []

    def make(cli=None, srv=None):
        n = Net(cli or cfg(), srv or cfg())
        nets.append(n)
        return n
    yield make
    for n in nets:
        n.close()


def sha256_until_eof(sock: MptcpSocket) -> str:
    h = hashlib.sha256()
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return h.hexdigest()
        h.update(chunk)


def transfer(net: Net, size: int, port: int = 7000, reverse: bool = False,
             during=None, timeout: float = 120.0) -> tuple[str, str, MptcpSocket]:
    """Send `size` random bytes client->server (or back); returns both sha256 and the
    client socket (still open, for inspection)."""
    data = os.urandom(size)
    srv = MptcpSocket(stack=net.srv)
    srv.bind(("", port))
    srv.listen()
    srv.settimeout(timeout)
    result: dict = {}

    def server():
        conn, _ = srv.accept()
        srv.close()  # closing the listener leaves accepted connections alone
        conn.settimeout(timeout)
        with conn:
            if reverse:
                conn.sendall(data)
                conn.shutdown(pysocket.SHUT_WR)
                result["srv_eof"] = conn.recv(1)
            else:
                result["got"] = sha256_until_eof(conn)
                conn.shutdown(pysocket.SHUT_WR)

    t = threading.Thread(target=server, daemon=True)
    t.start()
    cli = MptcpSocket(stack=net.cli)
    cli.settimeout(timeout)
    cli.connect((SRV[0], port))
    if during is not None:
        threading.Thread(target=during, args=(cli,), daemon=True).start()
    if reverse:
        result["got"] = sha256_until_eof(cli)
        cli.shutdown(pysocket.SHUT_WR)
    else:
        cli.sendall(data)
        cli.shutdown(pysocket.SHUT_WR)
        assert cli.recv(1) == b""
    t.join(timeout)
    srv.close()
    assert not t.is_alive(), "server thread did not finish"
    return hashlib.sha256(data).hexdigest(), result.get("got", ""), cli


def connected(net: Net, port: int) -> tuple[MptcpSocket, MptcpSocket, MptcpSocket]:
    """(listener, client, accepted), fully established: one byte went each way."""
    srv = MptcpSocket(stack=net.srv)
    srv.bind(("", port))
    srv.listen()
    srv.settimeout(30)
    cli = MptcpSocket(stack=net.cli)
    cli.settimeout(30)
    cli.connect((SRV[0], port))
    acc, _ = srv.accept()
    acc.settimeout(30)
    acc.sendall(b"!")  # a data exchange: the connection becomes fully established
    assert cli.recv(1) == b"!"
    cli.sendall(b"?")
    assert acc.recv(1) == b"?"
    return srv, cli, acc


@pytest.mark.parametrize("version", [0, 1])
@pytest.mark.parametrize("csum", [(False, False), (True, False), (False, True), (True, True)],
                         ids=["csum-off", "csum-cli", "csum-srv", "csum-both"])
def test_transfer_versions_and_checksums(net_factory, version, csum):
    net = net_factory(cfg(version=version, checksum=csum[0]), cfg(version=version,
                                                                  checksum=csum[1]))
    want, got, cli = transfer(net, 1 << 20)
    with cli:
        assert got == want
        info = cli.info()
        assert info.get("version") == version
        if "csum" in info:
            assert bool(info["csum"]) == (csum[0] or csum[1])


def test_both_directions_and_joins(net_factory):
    net = net_factory()
    seen: dict = {}

    def watch(sock):
        seen["n"] = sock.wait_subflows(2, timeout=20)
        seen["ids"] = sock.sub_ids()

    want, got, cli = transfer(net, 4 << 20, reverse=True, during=watch)
    with cli:
        assert got == want
        assert seen.get("n", 0) >= 2, f"expected a join over the second path: {seen}"
        assert all(s.attached for s in seen["ids"])


def test_small_and_empty(net_factory):
    net = net_factory()
    want, got, cli = transfer(net, 1024, port=7001)
    cli.close()
    assert got == want
    want, got, cli = transfer(net, 0, port=7002)
    cli.close()
    assert got == want


def test_path_dies_mid_transfer(net_factory):
    net = net_factory()

    def kill_path2(sock):
        sock.wait_subflows(2, timeout=20)
        time.sleep(0.3)
        for end in net.ports[1]:
            end.drop = lambda p: True

    want, got, cli = transfer(net, 4 << 20, port=7003, during=kill_path2)
    cli.close()
    assert got == want


def test_refused_and_no_mptcp_fallback(net_factory):
    net = net_factory()
    s = MptcpSocket(stack=net.cli)
    s.settimeout(30)
    with pytest.raises(ConnectionRefusedError):
        s.connect((SRV[0], 1))
    s.close()
    # mptcp_enabled=0 on the server: plain TCP, the data still arrives
    net2 = net_factory(cfg(), cfg(enabled=0))
    want, got, cli = transfer(net2, 300_000, port=7004)
    with cli:
        assert got == want
        assert cli.info().get("fallback") is True
        with pytest.raises(OSError) as ei:
            cli.sub_ids()
        assert ei.value.errno == errno.EOPNOTSUPP


def test_enhanced_api(net_factory):
    """The seed's C examples, line by line: list subflows, read tuples, open a subflow from
    another source port, close one by id (no data lost), TCP_INFO, IP_TOS on the wire."""
    net = net_factory(cfg(path_manager="default"), cfg(path_manager="default"))
    srv, cli, acc = connected(net, 7100)
    try:
        # getsockopt(MPTCP_GET_SUB_IDS) with a too small buffer: EINVAL
        with pytest.raises(OSError) as ei:
            cli.getsockopt(so.SOL_TCP, mptcp_bpf.MPTCP_GET_SUB_IDS, 1)
        assert ei.value.errno == errno.EINVAL
        raw = cli.getsockopt(so.SOL_TCP, mptcp_bpf.MPTCP_GET_SUB_IDS, 2 + 2 * 32)
        ids = so.unpack_sub_ids(raw)
        assert len(ids) == 1
        first = ids[0].id
        # GET_SUB_TUPLE: struct with the id in, tuple out
        buf = bytearray(so.SUB_TUPLE_V4_SIZE)
        buf[0] = first
        cli.getsockopt(so.SOL_TCP, mptcp_bpf.MPTCP_GET_SUB_TUPLE, buf)
        tup = so.SubTuple.unpack(bytes(buf))
        assert tup.remote.host == SRV[0] and tup.remote.port == 7100
        assert tup.local.host == CLI[0]
        with pytest.raises(OSError) as ei:
            cli.getsockopt(so.SOL_TCP, mptcp_bpf.MPTCP_GET_SUB_TUPLE, bytes([first]) + bytes(10))
        assert ei.value.errno == errno.EINVAL
        # OPEN_SUB_TUPLE: duplicate the subflow from another source port, and one on path 2
        with pytest.raises(OSError) as ei:
            cli.setsockopt(so.SOL_TCP, mptcp_bpf.MPTCP_OPEN_SUB_TUPLE, bytes(20))
        assert ei.value.errno == errno.EINVAL
        cli.open_subflow((CLI[0], 0), (SRV[0], 7100))
        cli.open_subflow((CLI[1], 0), (SRV[1], 7100))
        assert cli.wait_subflows(3, timeout=30) >= 3
        tuples = [cli.sub_tuple(s.id) for s in cli.sub_ids()]
        assert len({(t.local.host, t.local.port) for t in tuples}) == 3
        # TCP_INFO of a subflow through MPTCP_SUB_GETSOCKOPT (pointers, as in C)
        info = cli.subflow_tcp_info(first)
        assert info.state == so.TCP_STATES["ESTABLISHED"]
        assert info.snd_mss > 0
        with pytest.raises(OSError) as ei:
            cli.getsockopt(so.SOL_TCP, mptcp_bpf.MPTCP_SUB_GETSOCKOPT, bytes(31))
        assert ei.value.errno == errno.EINVAL
        # IP_TOS on one subflow, seen on the wire
        seen_tos: list[int] = []
        port1 = net.ports[0][0]
        port1.drop = lambda p: (seen_tos.append(p[1]) if p[0] >> 4 == 4 else None) and False
        cli.set_subflow_option(first, so.SOL_IP, so.IP_TOS, 0x28)
        # CLOSE_SUB_ID while data flows: nothing is lost
        data = os.urandom(1 << 20)
        got = bytearray()

        def reader():
            while len(got) < len(data):
                chunk = acc.recv(65536)
                if not chunk:
                    break
                got.extend(chunk)
        t = threading.Thread(target=reader, daemon=True)
        t.start()
        cli.sendall(data[:300_000])
        victim = [s.id for s in cli.sub_ids() if s.id != first][0]
        cli.close_subflow(victim)
        with pytest.raises(OSError) as ei:
            cli.close_subflow(200)
        assert ei.value.errno == errno.EINVAL
        cli.sendall(data[300_000:])
        t.join(60)
        assert bytes(got) == data
        assert victim not in [s.id for s in cli.sub_ids()]
        assert 0x28 in seen_tos, "IP_TOS set on the subflow never appeared on the wire"
        # MPTCP_INFO: struct mptcp_info points at our buffers, as in the C example
        meta = ctypes.create_string_buffer(so.MPTCP_META_INFO_SIZE)
        subs = ctypes.create_string_buffer(8 * so.TCP_INFO_SIZE)
        addrs = ctypes.create_string_buffer(8 * so.MPTCP_SUB_INFO_SIZE)
        req = so.MptcpInfo(tcp_info_len=so.TCP_INFO_SIZE, sub_len=len(subs),
                           meta_len=len(meta), sub_info_len=so.MPTCP_SUB_INFO_SIZE,
                           total_sub_info_len=len(addrs), meta_info=ctypes.addressof(meta),
                           subflows=ctypes.addressof(subs), subflow_info=ctypes.addressof(addrs))
        # the reader has every byte, but the last data ACK may still be on its way back
        deadline = time.monotonic() + 10
        while True:
            out = so.MptcpInfo.unpack(cli.getsockopt(so.SOL_TCP, mptcp_bpf.MPTCP_INFO,
                                                     req.pack()))
            m = so.MptcpMetaInfo.unpack(meta.raw)
            if m.bytes_acked >= len(data) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        live = cli.sub_ids()
        assert out.meta_len == so.MPTCP_META_INFO_SIZE
        assert out.sub_len == len(live) * so.TCP_INFO_SIZE
        assert out.total_sub_info_len == len(live) * so.MPTCP_SUB_INFO_SIZE
        assert m.state == so.TCP_STATES["ESTABLISHED"] and m.bytes_acked >= len(data)
        first_info = so.SubInfo.unpack(addrs.raw[:so.MPTCP_SUB_INFO_SIZE])
        assert first_info.dst.port == 7100
        assert so.TcpInfo.unpack(subs.raw[:so.TCP_INFO_SIZE]).snd_mss > 0
        with pytest.raises(OSError) as ei:
            cli.getsockopt(so.SOL_TCP, mptcp_bpf.MPTCP_INFO, 4)
        assert ei.value.errno == errno.EINVAL
    finally:
        for s in (cli, acc, srv):
            s.close()


def test_asyncio_over_real_stack(net_factory):
    import asyncio
    from mptcp_bpf.socket import aio
    net = net_factory()

    async def main():
        async def echo(reader, writer):
            writer.write(await reader.read())
            await writer.drain()
            writer.close()
        server = await aio.start_server(echo, "", 7200, stack=net.srv)
        reader, writer = await aio.open_connection(SRV[0], 7200, stack=net.cli, timeout=30)
        payload = os.urandom(200_000)
        writer.write(payload)
        writer.write_eof()
        back = await asyncio.wait_for(reader.read(), 60)
        writer.close()
        server.close()
        return back == payload

    assert asyncio.run(main())


def test_forged_joins_refused(net_factory):
    """8684 §3.2: a join with an unknown token, or with a wrong HMAC in its third ACK, is
    answered with a RST and leaves no subflow behind (segments built with scapy)."""
    scapy = pytest.importorskip("scapy.all")
    from mptcp_bpf.wire.mptcp import MpJoinAck, MpJoinSyn, emit, parse_mptcp
    from mptcp_bpf.wire.packet import parse_ip_packet
    from mptcp_bpf.wire.tcp import parse_tcp_options

    net = net_factory(cfg(path_manager="default"), cfg(path_manager="default"))
    atk, victim = SocketpairPort.pair()
    atk.sock.setblocking(True)
    atk.sock.settimeout(10)
    net.srv.add_port(victim, ["10.0.3.2"])
    srv, cli, acc = connected(net, 7300)
    try:
        token = int(acc.info()["token"], 16)
        conn = acc.connection

        def syn(tok: int, sport: int) -> bytes:
            opt = emit(MpJoinSyn(tok, 0x11223344, 5, False))
            pkt = scapy.IP(src="10.0.3.1", dst="10.0.3.2") / scapy.TCP(
                sport=sport, dport=7300, flags="S", seq=1000, window=65535,
                options=[("MSS", 1400), (30, opt[2:])])
            return bytes(pkt)

        def reply():
            while True:
                p = parse_ip_packet(atk.sock.recv(65536))
                if p.dst == bytes([10, 0, 3, 1]):
                    return p

        def nsub() -> int:
            with net.srv.lock:
                return len(conn.subflows) + len(net.srv.host._pending_joins_of(conn))

        before = nsub()
        atk.send_batch([syn(token ^ 0x5A5A5A5A, 40001)])
        r = reply()
        assert r.flags & 0x04, "unknown token: expected a RST"
        assert nsub() == before
        # valid token, then a third ACK with a forged HMAC
        atk.send_batch([syn(token, 40002)])
        r = reply()
        assert r.flags & 0x12 == 0x12, "valid token: expected a SYN/ACK"
        subs = [parse_mptcp(o, syn=True, ack=True) for o in parse_tcp_options(r.options).mptcp]
        assert subs, "SYN/ACK without MP_JOIN"
        opt = emit(MpJoinAck(b"\xee" * 20))
        ack = scapy.IP(src="10.0.3.1", dst="10.0.3.2") / scapy.TCP(
            sport=40002, dport=7300, flags="A", seq=1001, ack=(r.seq + 1) & 0xFFFFFFFF,
            window=65535, options=[(30, opt[2:])])
        atk.send_batch([bytes(ack)])
        r = reply()
        assert r.flags & 0x04, "forged HMAC: expected a RST"
        deadline = time.monotonic() + 5
        while nsub() != before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert nsub() == before, "a refused join left a subflow behind"
        # the connection still works
        acc.sendall(b"still here")
        assert cli.recv(64) == b"still here"
    finally:
        for s in (cli, acc, srv):
            s.close()
        atk.close()


def test_pcap_of_a_transfer_dissects_cleanly(net_factory, tmp_path):
    """--pcap (StackConfig.pcap): what the stack sent and received, read by tshark with
    no malformed packets and no MPTCP expert errors."""
    import shutil
    import subprocess
    pcap = str(tmp_path / "cli.pcapng")
    net = net_factory(cfg(pcap=pcap, checksum=True), cfg())
    want, got, cli = transfer(net, 200_000, port=7400)
    cli.close()
    assert got == want
    net.cli.close()
    assert os.path.getsize(pcap) > 200_000
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark is not installed (tools/bootstrap installs it)")
    r = subprocess.run([tshark, "-r", pcap, "-q", "-z", "expert"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Errors (" not in r.stdout and "Malformed" not in r.stdout, r.stdout[-2000:]
    r = subprocess.run([tshark, "-r", pcap, "-Y", "mptcp", "-T", "fields", "-e", "frame.number"],
                       capture_output=True, text=True, timeout=120)
    assert len(r.stdout.split()) > 10, "no MPTCP packets dissected"


def test_blocked_accept_fails_when_the_stack_stops():
    """A thread blocked in accept() must not outlive its stack (it would hang the process
    at exit): stopping the stack wakes it with ENETDOWN."""
    net = Net(cfg(), cfg())
    srv = MptcpSocket(stack=net.srv)
    srv.bind(("", 7600))
    srv.listen()
    errors: list[OSError] = []

    def blocked() -> None:
        try:
            srv.accept()
        except OSError as e:
            errors.append(e)

    t = threading.Thread(target=blocked, daemon=True)
    t.start()
    time.sleep(0.2)
    net.close()
    t.join(10)
    assert not t.is_alive(), "accept() still blocked after the stack stopped"
    assert errors and errors[0].errno == errno.ENETDOWN
