"""Our sockets against the kernel's MPTCP through two TUN devices (no XDP): the stack runs
in this process on TunPorts; the kernel peer lives in a namespace whose two tun devices
route our two addresses. Both roles, sha256 equal, the kernel's MIB shows a join and no
failures; also the asyncio layer and a refused connect."""

from __future__ import annotations

import hashlib
import os
import socket as pysocket
import subprocess
import uuid

import pytest

from mptcp_bpf.socket import MptcpSocket
from mptcp_bpf.stack import Stack, StackConfig
from test_interop_util import BAD_COUNTERS, PY, delta, finish, kill_all, kpeer_script

pytestmark = pytest.mark.priv

KERNEL = ["10.77.1.1", "10.77.2.1"]
OURS = ["10.77.1.2", "10.77.2.2"]


def nstat(ns: str) -> dict[str, int]:
    out = subprocess.run(["ip", "netns", "exec", ns, "nstat", "-az", "--json"],
                         capture_output=True, text=True, timeout=30).stdout
    import json
    try:
        data = json.loads(out)
    except ValueError:
        return {}
    flat: dict[str, int] = {}
    for table in data.values():
        for k, v in table.items():
            if k.startswith("MPTcpExt"):
                flat[k[len("MPTcpExt"):]] = int(v)
    return flat


@pytest.fixture
def tunlab():
    from mptcp_bpf.datapath.ports import TunPort
    ns = f"mpbs-t-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=30)
    stack = None
    try:
        ex = ["ip", "netns", "exec", ns]
        subprocess.run(ex + ["sysctl", "-qw", "net.mptcp.enabled=1"], check=True, timeout=30)
        subprocess.run(ex + ["ip", "link", "set", "lo", "up"], check=True, timeout=30)
        ports = [TunPort.open(f"mpbst{i}", ns, addrs=[f"{KERNEL[i]}/24"]) for i in range(2)]
        subprocess.run(ex + ["ip", "mptcp", "limits", "set", "subflows", "8",
                             "add_addr_accepted", "8"], check=True, timeout=30)
        subprocess.run(ex + ["ip", "mptcp", "endpoint", "add", KERNEL[1], "signal"],
                       check=True, timeout=30)
        stack = Stack(ports=ports, config=StackConfig(reserve_ports=False, checksum=False),
                      name="tun")
        for i in range(2):
            stack.add_address(OURS[i], ports[i])
        yield ns, stack
    finally:
        if stack is not None:
            stack.close()
        subprocess.run(["ip", "netns", "del", ns], timeout=30)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("size", [1024, 1 << 20, 16 << 20], ids=["1K", "1M", "16M"])
def test_our_client_to_kernel_server(tunlab, tmp_path, size):
    ns, stack = tunlab
    data = os.urandom(size)
    dst = str(tmp_path / "out")
    before = nstat(ns)
    kp = subprocess.Popen(["ip", "netns", "exec", ns, PY, kpeer_script(str(tmp_path)), "listen",
                           "4", "", "7600", "recv", dst, "1"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
    try:
        assert kp.stdout.readline().strip() == b"ready"
        s = MptcpSocket(stack=stack)
        s.settimeout(120)
        s.connect((KERNEL[0], 7600))
        s.sendall(data)
        s.shutdown(pysocket.SHUT_WR)
        assert s.recv(1) == b""
        s.close()
        (rc, err), = finish([kp], 120)
        assert rc == 0, err
    finally:
        kill_all([kp])
    with open(dst, "rb") as f:
        assert _sha(f.read()) == _sha(data)
    mib = delta(nstat(ns), before)
    assert mib.get("MPCapableSYNRX", 0) >= 1, mib
    assert not {k: mib[k] for k in BAD_COUNTERS if mib.get(k)}, mib
    if size >= 1 << 20:
        assert mib.get("MPJoinSynRx", 0) >= 1, f"we did not join the announced address: {mib}"


@pytest.mark.parametrize("size", [1024, 1 << 20], ids=["1K", "1M"])
def test_kernel_client_to_our_server(tunlab, tmp_path, size):
    ns, stack = tunlab
    src = str(tmp_path / "in")
    data = os.urandom(size)
    with open(src, "wb") as f:
        f.write(data)
    srv = MptcpSocket(stack=stack)
    srv.bind(("", 7601))
    srv.listen()
    srv.settimeout(60)
    before = nstat(ns)
    kp = subprocess.Popen(["ip", "netns", "exec", ns, PY, kpeer_script(str(tmp_path)),
                           "connect", "4", OURS[0], "7601", "send", src, "1"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        conn, peer = srv.accept()
        assert peer[0] == KERNEL[0]
        conn.settimeout(120)
        got = bytearray()
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            got += chunk
        conn.close()
        (rc, err), = finish([kp], 120)
        assert rc == 0, err
    finally:
        kill_all([kp])
        srv.close()
    assert _sha(bytes(got)) == _sha(data)
    mib = delta(nstat(ns), before)
    assert mib.get("MPCapableSYNACKRX", 0) >= 1, mib
    assert mib.get("AddAddr", 0) >= 1, f"our ADD_ADDR was not received: {mib}"
    assert not {k: mib[k] for k in BAD_COUNTERS if mib.get(k)}, mib


def test_refused_by_kernel(tunlab):
    ns, stack = tunlab
    s = MptcpSocket(stack=stack)
    s.settimeout(30)
    with pytest.raises(ConnectionRefusedError):
        s.connect((KERNEL[0], 1))
    s.close()


def test_asyncio_against_kernel(tunlab, tmp_path):
    import asyncio
    from mptcp_bpf.socket import aio
    ns, stack = tunlab
    data = os.urandom(300_000)
    dst = str(tmp_path / "out")
    kp = subprocess.Popen(["ip", "netns", "exec", ns, PY, kpeer_script(str(tmp_path)), "listen",
                           "4", "", "7602", "recv", dst, "1"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
    try:
        assert kp.stdout.readline().strip() == b"ready"

        async def main():
            reader, writer = await aio.open_connection(KERNEL[0], 7602, stack=stack, timeout=60)
            writer.write(data)
            writer.write_eof()
            await writer.drain()
            rest = await asyncio.wait_for(reader.read(), 60)
            writer.close()
            return rest
        assert asyncio.run(main()) == b""
        (rc, err), = finish([kp], 60)
        assert rc == 0, err
    finally:
        kill_all([kp])
    with open(dst, "rb") as f:
        assert _sha(f.read()) == _sha(data)
