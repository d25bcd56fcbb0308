"""TCP Vegas in BPF (bpf/tcp_vegas.bpf.c via mptcp_bpf.lab.bpf_cc): it registers, a kernel
TCP flow in a lab runs with it (getsockopt and `ss -ti` name it), and it is gone after the
block, also when the block fails; a stale registration of the same name is replaced."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mptcp_bpf.lab import bpf_cc
from mptcp_bpf.lab.testing import checked_lab

pytestmark = pytest.mark.priv

SERVER = r"""
import json, socket, sys
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("", 5301)); ls.listen(1); ls.settimeout(60)
print(json.dumps({"ready": True}), flush=True)
c, _ = ls.accept(); c.settimeout(60); n = 0
while True:
    d = c.recv(65536)
    if not d: break
    n += len(d)
print(json.dumps({"bytes": n}), flush=True)
"""

CLIENT = r"""
import json, socket, subprocess, sys
s = socket.socket(); s.settimeout(60)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, sys.argv[2].encode())
s.connect((sys.argv[1], 5301))
block = b"x" * 65536
for _ in range(48):
    s.sendall(block)
cc = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).rstrip(b"\0").decode()
ss = subprocess.run(["ss", "-tin", "dport", "5301"], capture_output=True, text=True, timeout=20).stdout
s.shutdown(socket.SHUT_WR); s.recv(1); s.close()
print(json.dumps({"cc": cc, "ss": ss}))
"""


def _name() -> str:
    return f"mpbwv{os.getpid() % 100000}"


@pytest.mark.timeout(300)
def test_bpf_vegas_registers_carries_a_flow_and_goes_away():
    name = _name()
    with checked_lab(f"mpbwcc{os.getpid() % 10000}", paths=1) as lab:
        lab.link(1, dir="up", rate="20mbit", delay=5)
        with bpf_cc.registered_vegas(name, alpha=10, beta=10) as got:
            assert got == name and name in bpf_cc.available()
            assert len(bpf_cc.struct_ops_ids(name)) == 1
            server = lab.popen("server", [sys.executable, "-c", SERVER], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
            try:
                assert server.stdout is not None
                assert '"ready"' in server.stdout.readline()
                out = lab.exec("client", [sys.executable, "-c", CLIENT, lab.addresses("server")[0], name],
                               capture_output=True, text=True, timeout=120)
                assert out.returncode == 0, out.stderr[-2000:]
                doc = json.loads(out.stdout.strip().splitlines()[-1])
                srv = json.loads(server.communicate(timeout=60)[0].strip().splitlines()[-1])
            finally:
                if server.poll() is None:
                    server.kill()
                    server.wait(10)
            assert doc["cc"] == name
            assert name in doc["ss"], doc["ss"]
            assert srv["bytes"] == 48 * 65536
    assert name not in bpf_cc.available()
    assert bpf_cc.struct_ops_ids(name) == []


@pytest.mark.timeout(120)
def test_bpf_vegas_replaces_a_stale_one_and_unregisters_on_error():
    name = _name()
    obj = bpf_cc.build_vegas(name, 2, 4)
    try:
        bpf_cc.register(obj, name)            # as a killed run would leave it
        with pytest.raises(RuntimeError):
            with bpf_cc.registered_vegas(name) as got:
                assert bpf_cc.available().count(got) == 1
                assert len(bpf_cc.struct_ops_ids(got)) == 1
                raise RuntimeError("the block fails")
        assert name not in bpf_cc.available()
    finally:
        bpf_cc.unregister(name)
    assert bpf_cc.struct_ops_ids(name) == []
