"""`mptcp-bpf sysctl` in network namespaces: defaults, -w seen by other processes and by the
fast path's map, per-namespace values, JSON, refusals with the reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

pytestmark = pytest.mark.priv

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PY = sys.executable


def cli(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", "netns", "exec", ns, PY, "-m", "mptcp_bpf", *args],
                       capture_output=True, text=True, timeout=240, cwd=TOP)
    if check and r.returncode != 0:
        raise AssertionError(f"{args}: {r.returncode} {r.stdout} {r.stderr}")
    return r


@pytest.fixture
def two_ns():
    from mptcp_bpf.datapath import pins
    tag = uuid.uuid4().hex[:6]
    names = [f"mpbb-{tag}-s1", f"mpbb-{tag}-s2"]
    dirs = []
    try:
        for n in names:
            subprocess.run(["ip", "netns", "add", n], check=True, timeout=60)
            dirs.append(pins.pin_dir(n))
        yield names
    finally:
        for d in dirs:
            pins.remove_dir(d)
        for n in names:
            subprocess.run(["ip", "netns", "del", n], capture_output=True, timeout=60)


def test_defaults_text_and_json(two_ns):
    ns = two_ns[0]
    text = cli(ns, "sysctl").stdout
    assert "net.mptcp.mptcp_version = 1" in text
    assert "net.mptcp.mptcp_path_manager = fullmesh" in text
    assert "net.mptcp.mptcp_scheduler = default" in text
    data = json.loads(cli(ns, "sysctl", "-a", "-j").stdout)
    assert data == {"net.mptcp.mptcp_enabled": 1, "net.mptcp.mptcp_checksum": 1,
                    "net.mptcp.mptcp_syn_retries": 3, "net.mptcp.mptcp_version": 1,
                    "net.mptcp.mptcp_debug": 0, "net.mptcp.mptcp_path_manager": "fullmesh",
                    "net.mptcp.mptcp_scheduler": "default"}
    assert json.loads(cli(ns, "-j", "sysctl", "mptcp_checksum").stdout) == {
        "net.mptcp.mptcp_checksum": 1}
    assert cli(ns, "sysctl", "-n", "net.mptcp.mptcp_syn_retries").stdout.strip() == "3"


def test_write_is_seen_by_other_processes_and_only_in_its_namespace(two_ns):
    a, b = two_ns
    out = cli(a, "sysctl", "-w", "net.mptcp.mptcp_scheduler=roundrobin").stdout
    assert out.strip() == "net.mptcp.mptcp_scheduler = roundrobin"
    cli(a, "sysctl", "-w", "mptcp_checksum=0", "-w", "mptcp_syn_retries=5")
    cli(a, "sysctl", "mptcp_path_manager=ndiffports")              # sysctl(8) style
    got = json.loads(cli(a, "-j", "sysctl").stdout)
    assert got["net.mptcp.mptcp_scheduler"] == "roundrobin"
    assert got["net.mptcp.mptcp_checksum"] == 0 and got["net.mptcp.mptcp_syn_retries"] == 5
    assert got["net.mptcp.mptcp_path_manager"] == "ndiffports"
    # The other namespace keeps its own values.
    other = json.loads(cli(b, "-j", "sysctl").stdout)
    assert other["net.mptcp.mptcp_scheduler"] == "default"
    assert other["net.mptcp.mptcp_checksum"] == 1
    # The Python API of another process reads the same.
    code = ("from mptcp_bpf.sysctl import Sysctl\n"
            "with Sysctl.open() as s: print(s.get('mptcp_scheduler'), s.get('checksum'))")
    r = subprocess.run(["ip", "netns", "exec", a, PY, "-c", code], capture_output=True,
                       text=True, timeout=120, cwd=TOP, check=True)
    assert r.stdout.split() == ["roundrobin", "0"]
    cli(a, "sysctl", "--reset")
    assert json.loads(cli(a, "-j", "sysctl", "scheduler").stdout) == {
        "net.mptcp.mptcp_scheduler": "default"}


@pytest.mark.parametrize("args,why", [
    (["-w", "net.mptcp.mptcp_enabled=7"], "out of range"),
    (["-w", "mptcp_version=two"], "takes an integer"),
    (["-w", "mptcp_scheduler=nosuch"], "no scheduler named 'nosuch'"),
    (["-w", "mptcp_path_manager=redundant"], "no path manager"),
    (["-w", "net.mptcp.nonexistent=1"], "unknown sysctl"),
    (["net.ipv4.tcp_sack"], "unknown sysctl"),
    (["-w", "mptcp_checksum"], "bad assignment"),
])
def test_invalid_refused_with_reason(two_ns, args, why):
    ns = two_ns[0]
    r = cli(ns, "sysctl", *args, check=False)
    assert r.returncode == 1
    assert why in r.stderr and "hint:" in r.stderr


def test_refused_batch_changes_nothing(two_ns):
    ns = two_ns[0]
    r = cli(ns, "sysctl", "-w", "mptcp_checksum=0", "-w", "mptcp_enabled=9", check=False)
    assert r.returncode == 1
    assert json.loads(cli(ns, "-j", "sysctl", "mptcp_checksum").stdout) == {
        "net.mptcp.mptcp_checksum": 1}


def test_fast_path_uses_the_same_map(two_ns):
    """The XDP program references the pinned `sysctl` map that the CLI writes."""
    ns = two_ns[0]
    subprocess.run(["ip", "-n", ns, "link", "add", "mpbbd0", "type", "veth", "peer", "name",
                    "mpbbd1"], check=True, timeout=60)
    subprocess.run(["ip", "-n", ns, "link", "set", "mpbbd0", "up"], check=True, timeout=60)
    cli(ns, "sysctl", "-w", "mptcp_debug=1")
    try:
        cli(ns, "load", "mpbbd0")
        prog = json.loads(cli(ns, "-j", "prog", "show").stdout)[0]
        maps = {m["name"]: m["id"] for m in json.loads(cli(ns, "-j", "map", "show").stdout)}
        assert maps["sysctl"] in prog["map_ids"]
        dump = json.loads(cli(ns, "-j", "map", "dump", "sysctl").stdout)
        assert {"key": 4, "value": 1} in dump          # MPB_SYS_DEBUG slot
    finally:
        cli(ns, "unload", "mpbbd0", check=False)


def test_leftovers_of_a_deleted_namespace_are_not_reused():
    """Namespace inodes are reused; the netns cookie stamped in the maps tells them apart."""
    import struct

    from mptcp_bpf.datapath import pins
    from mptcp_bpf.datapath import structs as S
    from mptcp_bpf.sysctl import Sysctl
    d = f"/run/mptcp-bpf/mpbb-stale-{os.getpid()}"
    try:
        with Sysctl.open(pin_dir=d) as sc:
            assert pins.stored_cookie(d) == pins.netns_cookie()
            sc.set("mptcp_checksum", 0)
            # Pretend another namespace made it.
            sc._ints.update(struct.pack("<I", S.MPB_SYS_COOKIE_LO), struct.pack("<I", 12345))
        assert pins.is_stale(d, pins.netns_cookie())
        with pytest.raises(Exception):
            Sysctl.open(create=False, pin_dir=d)
        with Sysctl.open(pin_dir=d) as sc:
            assert sc.get("mptcp_checksum") == 1            # fresh defaults
        assert not pins.is_stale(d, pins.netns_cookie())
    finally:
        pins.remove_dir(d)
