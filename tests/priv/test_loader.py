"""The loader and the inspection CLI in network namespaces: load/unload, pins seen from
`ip netns exec`, loading twice, text and JSON output, classified live traffic, errors."""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import time
import sys
import threading
import uuid

import pytest

pytestmark = pytest.mark.priv

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PY = sys.executable
T = 240   # seconds for one command (a cold cache compiles with clang on a loaded machine)


def sh(*cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=T, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{cmd} failed ({r.returncode}): {r.stdout}\n{r.stderr}")
    return r


def cli(ns: str, *args: str, check: bool = True, env: dict | None = None,
        prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return sh("ip", "netns", "exec", ns, *prefix, PY, "-m", "mptcp_bpf", *args, check=check,
              cwd=TOP, env=env)


@pytest.fixture(scope="module")
def veth():
    """Namespaces A (fast path on `va`, 10.88.0.1) and B (`vb`, 10.88.0.2)."""
    from mptcp_bpf.datapath import pins
    tag = uuid.uuid4().hex[:6]
    a, b = f"mpbb-{tag}-a", f"mpbb-{tag}-b"
    pin_a = None
    try:
        sh("ip", "netns", "add", a)
        sh("ip", "netns", "add", b)
        pin_a = pins.pin_dir(a)
        sh("ip", "link", "add", "va", "netns", a, "type", "veth", "peer", "name", "vb",
           "netns", b)
        for ns, dev, ip in ((a, "va", "10.88.0.1/24"), (b, "vb", "10.88.0.2/24")):
            sh("ip", "-n", ns, "addr", "add", ip, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield a, b, pin_a
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=60)
        if pin_a:
            pins.remove_dir(pin_a)


@pytest.fixture(scope="module")
def loaded(veth):
    a, b, pin = veth
    r = cli(a, "load", "va")
    assert "va (native)" in r.stdout and pin in r.stdout
    return a, b, pin


def test_load_pins_visible_from_ip_netns_exec(loaded):
    a, _, pin = loaded
    assert set(os.listdir(pin)) >= {"prog_xdp", "subflows", "listeners", "xsks", "devices",
                                    "counters", "subflow_stats", "sysctl", "sysctl_str", "owners"}
    # The same directory is what a process inside the namespace computes.
    r = sh("ip", "netns", "exec", a, PY, "-c",
           "from mptcp_bpf.datapath import pins; print(pins.pin_dir())", cwd=TOP)
    assert r.stdout.strip() == pin
    link = sh("ip", "-n", a, "-d", "link", "show", "dev", "va").stdout
    assert "xdp" in link


def test_load_twice_is_harmless(loaded):
    a, _, _ = loaded
    before = json.loads(cli(a, "-j", "prog", "show").stdout)[0]["id"]
    r = cli(a, "-j", "load", "va")
    data = json.loads(r.stdout)
    assert data["prog_id"] == before
    assert [d["name"] for d in data["devices"]] == ["va"]


def test_prog_show_text_and_json(loaded):
    a, _, pin = loaded
    text = cli(a, "prog", "show").stdout
    assert "xdp" in text and "xdp_main" in text and "va" in text
    info = json.loads(cli(a, "-j", "prog", "show").stdout)[0]
    assert info["type"] == "xdp" and info["pinned"] == f"{pin}/prog_xdp"
    assert info["devices"][0]["name"] == "va"
    pretty = cli(a, "-p", "prog", "show").stdout
    assert pretty.startswith("[\n") and json.loads(pretty)[0]["id"] == info["id"]


def test_map_show_and_dump(loaded):
    a, _, _ = loaded
    maps = json.loads(cli(a, "-j", "map", "show").stdout)
    names = {m["name"] for m in maps}
    assert {"subflows", "listeners", "xsks", "devices", "counters", "sysctl"} <= names
    assert "percpu_array" in cli(a, "map", "show").stdout
    devs = json.loads(cli(a, "-j", "map", "dump", "devices").stdout)
    idx = int(sh("ip", "netns", "exec", a, "cat", "/sys/class/net/va/ifindex").stdout)
    assert devs == [{"key": idx, "value": 0}]
    assert "Found 1 element" in cli(a, "map", "dump", "devices").stdout
    sysctl = json.loads(cli(a, "-j", "map", "dump", "sysctl_str").stdout)
    assert {"key": 5, "value": "fullmesh"} in sysctl
    bad = cli(a, "map", "dump", "nosuchmap", check=False)
    assert bad.returncode == 1 and "no map named" in bad.stderr and "subflows" in bad.stderr


def _serve_once(ns: str, port: int) -> subprocess.Popen:
    code = (f"import socket;s=socket.create_server(('10.88.0.1',{port}));s.settimeout(60);"
            "c,_=s.accept();c.sendall(c.recv(100).upper());c.close()")
    return subprocess.Popen(["ip", "netns", "exec", ns, PY, "-c", code])


def _connect(ns: str, port: int) -> str:
    code = (f"import socket,time\nfor i in range(100):\n try:\n"
            f"  c=socket.create_connection(('10.88.0.1',{port}),timeout=10);break\n"
            " except OSError: time.sleep(0.2)\n"
            "c.sendall(b'hello');print(c.recv(100).decode())")
    return sh("ip", "netns", "exec", ns, PY, "-c", code).stdout.strip()


def test_kernel_traffic_passes_and_is_classified(loaded):
    a, b, _ = loaded
    from mptcp_bpf.datapath.loader import FastPath
    fp = FastPath.open_pinned(netns=a)
    try:
        # A listener entry that passes to the kernel when no XSK is bound: the SYN is
        # classified as ours, yet the kernel's server still answers.
        fp.add_listener(socket.AF_INET, None, 7001, pass_no_xsk=True)
        before = fp.counters()
        srv = _serve_once(a, 7001)
        try:
            assert _connect(b, 7001) == "HELLO"
        finally:
            srv.wait(timeout=60)
        c = fp.counters()
        assert c["listener_syn"] - before["listener_syn"] >= 1
        assert c["tcp"] - before["tcp"] >= 3 and c["not_owned"] > before["not_owned"]
        stats = json.loads(cli(a, "-j", "stats", "--fastpath-only").stdout)
        assert stats["fastpath"]["counters"]["listener_syn"] >= 1
        text = cli(a, "stats", "--fastpath-only").stdout
        assert "listener_syn" in text and "subtype" in text
    finally:
        fp.remove_listener(socket.AF_INET, None, 7001)
        fp.close()


def test_owned_subflow_without_xsk_is_dropped_not_reset(loaded):
    a, b, _ = loaded
    from mptcp_bpf.datapath.loader import FastPath
    with FastPath.open_pinned(netns=a) as fp:
        fp.add_listener(socket.AF_INET, "10.88.0.1", 7002)        # owned, no XSK: dropped
        before = fp.counters()
        code = ("import socket\ns=socket.socket();s.settimeout(2)\n"
                "try:\n s.connect(('10.88.0.1',7002));print('connected')\n"
                "except socket.timeout: print('timeout')\n"
                "except ConnectionRefusedError: print('refused')")
        out = sh("ip", "netns", "exec", b, PY, "-c", code).stdout.strip()
        fp.remove_listener(socket.AF_INET, "10.88.0.1", 7002)
        c = fp.counters()
    assert out == "timeout"                     # the kernel never saw the SYN: no RST
    assert c["no_xsk"] > before["no_xsk"] and c["owned"] > before["owned"]


def test_claim_names_the_owner(loaded):
    a, _, _ = loaded
    from mptcp_bpf.datapath.loader import FastPath
    from mptcp_bpf.errors import HintedError
    other = subprocess.Popen(["sleep", "120"])
    try:
        deadline = time.monotonic() + 10  # until exec: the child is still named "python"
        while time.monotonic() < deadline:
            with open(f"/proc/{other.pid}/comm") as f:
                if f.read().strip() == "sleep":
                    break
            time.sleep(0.01)
        with FastPath.open_pinned(netns=a) as fp:
            fp.claim("va", other.pid)
            assert fp.owner("va") == other.pid
            fp.claim("va", other.pid)                         # same owner again: fine
            with pytest.raises(HintedError) as exc:
                fp.claim("va", os.getpid())
            assert str(other.pid) in str(exc.value) and "sleep" in str(exc.value)
            r = cli(a, "unload", "va", check=False)           # a live owner blocks unload
            assert r.returncode == 1 and str(other.pid) in r.stderr
            other.kill()
            other.wait(timeout=30)
            fp.claim("va", os.getpid())                       # a dead owner's claim is stale
            assert fp.owner("va") == os.getpid()
            fp.release("va")
            assert fp.owner("va") is None
    finally:
        if other.poll() is None:
            other.kill()
            other.wait(timeout=30)


def test_errors_are_clear(loaded, tmp_path):
    a, _, _ = loaded
    r = cli(a, "load", "nosuchdev", check=False)
    assert r.returncode == 1 and "no such device 'nosuchdev'" in r.stderr and "hint" in r.stderr
    r = cli(a, "load", "va", check=False, prefix=("setpriv", "--reuid=65534", "--regid=65534",
                                                  "--clear-groups"))
    assert r.returncode == 1 and "needs root" in r.stderr
    env = dict(os.environ, MPTCP_BPF_PIN_ROOT=str(tmp_path))
    r = cli(a, "load", "va", check=False, env=env)
    assert r.returncode == 1 and "no bpffs mounted" in r.stderr and "mount -t bpf" in r.stderr
    r = cli(a, "prog", "show", check=False, env=env)
    assert r.returncode == 1 and "bpffs" in r.stderr


def test_missing_clang_and_verifier_rejection(monkeypatch, tmp_path):
    from mptcp_bpf.datapath import build, loader, pins
    from mptcp_bpf.errors import HintedError
    monkeypatch.setattr(build.shutil, "which", lambda name: None)
    with pytest.raises(HintedError) as exc:
        build.object_for(loader.XDP_SOURCE, str(tmp_path / "cache"))
    assert "clang is not installed" in str(exc.value) and "bootstrap" in exc.value.hint
    monkeypatch.undo()
    monkeypatch.setattr(build, "CACHE_DIR", str(tmp_path / "cache"))
    bad = tmp_path / "bad.bpf.c"
    (tmp_path / "mpb_bpf.h").write_text((pathlib.Path(TOP) / "bpf" / "mpb_bpf.h").read_text())
    bad.write_text('#include "mpb_bpf.h"\n'
                   "struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 16);\n"
                   "         __type(key, u32); __type(value, u32); } sysctl SEC(\".maps\");\n"
                   'SEC("xdp") int xdp_main(struct xdp_md *ctx) {\n'
                   "  unsigned char *p = (void *)(long)ctx->data;\n"
                   "  return p[100];   /* no bounds check: the verifier refuses */\n}\n"
                   'char _license[] SEC("license") = "GPL";\n')
    d = f"/run/mptcp-bpf/mpbb-bad-{os.getpid()}"
    try:
        pins.ensure_dir(d)
        for m in pins.sysctl_maps(d):
            m.close()
        with pytest.raises(HintedError) as exc:
            loader.load_object(d, str(bad))
        assert "invalid access to packet" in str(exc.value)
        assert "verifier" in exc.value.hint
        bad.write_text("this is not C\n")
        with pytest.raises(HintedError) as exc:
            loader.load_object(d, str(bad))
        assert "clang failed" in str(exc.value) and "error" in str(exc.value)
    finally:
        pins.remove_dir(d)


def test_z_unload_removes_everything(loaded):
    a, _, pin = loaded
    r = cli(a, "-j", "unload", "va")
    assert json.loads(r.stdout)["unpinned"] is True
    assert not os.path.exists(pin)
    assert "xdp" not in sh("ip", "-n", a, "-d", "link", "show", "dev", "va").stdout.split("\n")[0]
    r = cli(a, "prog", "show", check=False)
    assert r.returncode == 1 and "not loaded" in r.stderr and "mptcp-bpf load" in r.stderr


def test_threads_of_one_process_share_the_namespace_dir(veth):
    a, _, pin = veth
    from mptcp_bpf.datapath import pins
    got = []
    t = threading.Thread(target=lambda: got.append(pins.pin_dir(a)), daemon=True)
    t.start()
    t.join(timeout=30)
    assert got == [pin]


def test_zz_generic_mode_and_modes_reported(veth):
    a, _, pin = veth
    try:
        data = json.loads(cli(a, "-j", "load", "--generic", "va").stdout)
        assert data["devices"][0]["mode"] == "generic"
        assert "xdpgeneric" in sh("ip", "-n", a, "link", "show", "dev", "va").stdout
        assert "generic" in cli(a, "prog", "show").stdout
    finally:
        cli(a, "unload", "va", check=False)
    assert not os.path.exists(pin)


def test_damaged_cached_object_is_rebuilt(monkeypatch, tmp_path):
    from mptcp_bpf.datapath import bpfsys, build, loader, pins
    cache = str(tmp_path / "cache")
    monkeypatch.setattr(build, "CACHE_DIR", cache)
    obj = build.object_for(loader.XDP_SOURCE)
    with open(obj, "wb") as f:
        f.write(b"not an ELF file")
    d = f"/run/mptcp-bpf/mpbb-dmg-{os.getpid()}"
    try:
        for m in pins.sysctl_maps(d):
            m.close()
        with loader.load_object(d) as o:
            info = bpfsys.prog_info(o.prog_fd("xdp_main"))
        assert info["type"] == "xdp" and info["verified_insns"] > 1000
        assert open(obj, "rb").read(4) == b"\x7fELF"
    finally:
        pins.remove_dir(d)

