"""Interop over XDP + AF_XDP (issue 4 §Interop tests): our stack (through `mptcp-bpf nc`)
against the kernel's MPTCP in both roles over a two-path lab; sha256 at both ends; the
kernel peer's MIB counters show the handshake, joins, ADD_ADDR and no failures.

Each transfer is time-bound; the 16 MiB ones run once per pair."""

from __future__ import annotations

import itertools
import os
import subprocess
import time

import pytest

from test_interop_util import (BAD_COUNTERS, PY, delta, finish, kill_all, kpeer_script,
                               lab_for, make_file, nc_argv, set_our_sysctl, sha256_file)

pytestmark = pytest.mark.priv

MiB = 1 << 20
_ports = itertools.count(8000)


def kernel_mptcp(lab, csum_kernel: bool = False, ipv6: bool = False) -> None:
    """Kernel MPTCP on both nodes: server signals its 2nd address, client accepts it."""
    fam = 6 if ipv6 else 4
    for node, flag in (("server", "signal"), ("client", "subflow")):
        addrs = lab.addresses(node, fam)
        lab.mptcp(node, limits={"subflows": 8, "add_addr_accepted": 8},
                  endpoints=[f"{a} {flag}" for a in addrs[1:]], checksum=csum_kernel)


def run_pair(lab, tmp, size: int, ours: str, direction: str, port: int,
             fam: int = 4, kernel_mptcp_on: bool = True, timeout: float = 180.0,
             kernel_fam: str | None = None) -> dict:
    """One transfer. ours = 'server'|'client' (the role of our stack); direction =
    'to_kernel'|'from_kernel'. Returns sha256s, exit codes and the kernel's MIB delta."""
    knode = "client" if ours == "server" else "server"
    src = os.path.join(tmp, f"in-{port}")
    dst = os.path.join(tmp, f"out-{port}")
    want = make_file(src, size)
    server_ip = lab.addresses("server", fam)[0]
    script = kpeer_script(tmp)
    before = lab.nstat(knode)
    procs: list[subprocess.Popen] = []
    try:
        kmode = "recv" if direction == "to_kernel" else "send"
        kfile = dst if kmode == "recv" else src
        fam_flag = ["-6"] if fam == 6 else ["-4"]
        kflag = "1" if kernel_mptcp_on else "0"
        # our nc: reads `src` when it sends; when it receives, its stdin stays open until
        # everything arrived (like an interactive ncat), so our DATA_FIN does not come
        # before the kernel had the chance to join (the kernel refuses joins after it)
        if direction == "to_kernel":
            fin = open(src, "rb")
        else:
            fin = subprocess.PIPE
        with open(os.devnull if direction == "to_kernel" else dst, "wb") as fout:
            if ours == "server":
                ours_p = lab.popen("server", nc_argv(*fam_flag, "-l", str(port)),
                                   stdin=fin, stdout=fout, stderr=subprocess.PIPE)
                procs.append(ours_p)
                procs.append(lab.popen("client", [PY, script, "connect", str(fam), server_ip,
                                                  str(port), kmode, kfile, kflag],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
            else:
                kp = lab.popen("server", [PY, script, "listen", kernel_fam or str(fam), "",
                                          str(port), kmode,
                                          kfile, kflag],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                procs.append(kp)
                assert kp.stdout is not None
                assert kp.stdout.readline().strip() == b"ready", "kernel server did not start"
                ours_p = lab.popen("client", nc_argv(*fam_flag, "-w", "30", server_ip,
                                                     str(port)),
                                   stdin=fin, stdout=fout, stderr=subprocess.PIPE)
                procs.append(ours_p)
        if fin is not subprocess.PIPE:
            fin.close()
        else:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and ours_p.poll() is None:
                if os.path.exists(dst) and os.path.getsize(dst) >= size:
                    break
                time.sleep(0.05)
            ours_p.stdin.close()
            ours_p.stdin = None  # communicate() must not flush it again
        results = finish(procs, timeout)
    finally:
        kill_all(procs)
    got = sha256_file(dst) if os.path.exists(dst) else ""
    after = lab.nstat(knode)
    for f in (src, dst):
        if os.path.exists(f):
            os.unlink(f)
    return {"want": want, "got": got, "results": results, "mib": delta(after, before)}


def check_clean(r: dict, size: int) -> None:
    assert r["got"] == r["want"], f"sha256 differs; processes: {r['results']}"
    for rc, err in r["results"]:
        assert rc == 0, f"a peer failed (rc {rc}): {err}"
    bad = {k: r["mib"].get(k, 0) for k in BAD_COUNTERS if r["mib"].get(k, 0)}
    assert not bad, f"kernel saw failures: {bad}"


@pytest.fixture(scope="module")
def lab4():
    with lab_for("mpbs_i4", paths=2) as lab:
        kernel_mptcp(lab)
        yield lab


SIZES = [("1K", 1024), ("1M", MiB), ("16M", 16 * MiB)]


@pytest.mark.parametrize("size", SIZES, ids=[s for s, _ in SIZES])
@pytest.mark.parametrize("ours,direction", [("server", "from_kernel"), ("server", "to_kernel"),
                                            ("client", "to_kernel"), ("client", "from_kernel")])
def test_kernel_interop_v4(lab4, tmp_path, ours, direction, size):
    label, n = size
    r = run_pair(lab4, str(tmp_path), n, ours, direction, next(_ports))
    check_clean(r, n)
    mib = r["mib"]
    if ours == "server":
        assert mib.get("MPCapableSYNACKRX", 0) >= 1, mib
        assert mib.get("AddAddr", 0) >= 1, f"our ADD_ADDR not seen by the kernel: {mib}"
    else:
        assert mib.get("MPCapableSYNRX", 0) >= 1 and mib.get("MPCapableACKRX", 0) >= 1, mib
    if n >= MiB:
        joins = mib.get("MPJoinSynRx", 0) + mib.get("MPJoinSynAckRx", 0)
        assert joins >= 1, f"no join seen by the kernel: {mib}"


@pytest.mark.parametrize("ours_csum", [0, 1])
@pytest.mark.parametrize("kernel_csum", [0, 1])
def test_checksum_pairs(tmp_path, ours_csum, kernel_csum):
    with lab_for(f"mpbs_c{ours_csum}{kernel_csum}", paths=2) as lab:
        kernel_mptcp(lab, csum_kernel=bool(kernel_csum))
        set_our_sysctl(lab, "server", checksum=ours_csum)
        for ours, direction in (("server", "from_kernel"), ("server", "to_kernel")):
            r = run_pair(lab, str(tmp_path), MiB, ours, direction, 8100 + len(direction))
            check_clean(r, MiB)


def test_ipv6(tmp_path):
    with lab_for("mpbs_i6", paths=2, ipv6=True) as lab:
        kernel_mptcp(lab, ipv6=True)
        for i, (ours, direction) in enumerate((("server", "from_kernel"),
                                               ("client", "to_kernel"))):
            r = run_pair(lab, str(tmp_path), MiB, ours, direction, 8200 + i, fam=6)
            check_clean(r, MiB)


def test_fallback_to_plain_tcp(lab4, tmp_path):
    """A plain-TCP kernel peer in each role: the data arrives (8684 §3.7)."""
    for i, (ours, direction) in enumerate((("client", "to_kernel"), ("server", "from_kernel"))):
        r = run_pair(lab4, str(tmp_path), MiB, ours, direction, 8300 + i,
                     kernel_mptcp_on=False)
        assert r["got"] == r["want"], r["results"]
        assert all(rc == 0 for rc, _ in r["results"]), r["results"]


def test_loss_and_path_down(lab4, tmp_path):
    """1% loss on both paths, then path 2 goes down mid-transfer: 16 MiB arrive intact."""
    import threading
    import time
    lab4.link(1, loss=1, seed=7)
    lab4.link(2, loss=1, seed=8)
    stop = threading.Event()

    def cut():
        if not stop.wait(3):
            lab4.link(2, down=True)
    t = threading.Thread(target=cut, daemon=True)
    t.start()
    try:
        r = run_pair(lab4, str(tmp_path), 16 * MiB, "server", "from_kernel", 8400, timeout=280)
    finally:
        stop.set()
        t.join(10)
        lab4.link(1, clear=True)
        lab4.link(2, clear=True)
        lab4.link(2, up=True)
        time.sleep(0.2)
    assert r["got"] == r["want"], r["results"]


@pytest.mark.parametrize("version", [0, 1])
def test_ours_vs_ours(tmp_path, version):
    """Our client (mptcp_version set in its namespace) against our server, which answers
    in the client's version: 1K, 1M and 16M, sha256 equal."""
    with lab_for(f"mpbs_o{version}", paths=2) as lab:
        set_our_sysctl(lab, "client", version=version)
        for size in (1024, MiB, 16 * MiB):
            port = next(_ports)
            src, dst = str(tmp_path / "in"), str(tmp_path / "out")
            want = make_file(src, size)
            with open(dst, "wb") as fout:
                srv = lab.popen("server", nc_argv("-l", str(port)), stdin=subprocess.DEVNULL,
                                stdout=fout, stderr=subprocess.PIPE)
            procs = [srv]
            try:
                time.sleep(0.5)
                with open(src, "rb") as fin:
                    procs.append(lab.popen("client", nc_argv("-w", "30",
                                                             lab.addresses("server")[0],
                                                             str(port)),
                                           stdin=fin, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.PIPE))
                res = finish(procs, 240)
            finally:
                kill_all(procs)
            assert sha256_file(dst) == want, (size, res)
            assert all(rc == 0 for rc, _ in res), (size, res)


def test_v4_start_v6_join(tmp_path):
    """A connection that starts on IPv4 and joins an IPv6 address the kernel announced."""
    import threading
    with lab_for("mpbs_i46", paths=2, ipv6=True) as lab:
        v6 = lab.addresses("server", 6)
        lab.mptcp("server", limits={"subflows": 8, "add_addr_accepted": 8},
                  endpoints=[f"{v6[1]} signal"])
        lab.mptcp("client", limits={"subflows": 8, "add_addr_accepted": 8}, endpoints=[])
        peers: set[str] = set()
        stop = threading.Event()

        def watch():
            while not stop.wait(0.1):
                r = lab.exec("server", ["ss", "-Htn", "state", "established"],
                             capture_output=True, text=True, timeout=30)
                for line in r.stdout.splitlines():
                    f = line.split()
                    if len(f) >= 4:
                        peers.add(f[-1])
        t = threading.Thread(target=watch, daemon=True)
        t.start()
        try:
            # the kernel server listens dual-stack: an AF_INET listener refuses IPv6 joins
            r = run_pair(lab, str(tmp_path), 16 * MiB, "client", "to_kernel", next(_ports),
                         kernel_fam="46")
        finally:
            stop.set()
            t.join(10)
        check_clean(r, 16 * MiB)
        assert r["mib"].get("MPJoinSynRx", 0) >= 1, r["mib"]
        assert any(p.startswith("[") for p in peers), f"no IPv6 subflow seen: {peers}"


SCAPY_JOIN = r'''
import json, sys
from scapy.all import IP, TCP, conf, sr1
sys.path.insert(0, sys.argv[5])
from mptcp_bpf.wire.mptcp import MpJoinAck, MpJoinSyn, emit
src, dst, port, token = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4], 16)
conf.verb = 0
out = {}
def syn(tok, sport):
    o = emit(MpJoinSyn(tok, 0x01020304, 7, False))
    return IP(src=src, dst=dst) / TCP(sport=sport, dport=port, flags="S", seq=1000,
                                      options=[("MSS", 1400), (30, o[2:])])
r = sr1(syn(token ^ 0x5A5A5A5A, 41001), timeout=5)
out["unknown_token"] = None if r is None else str(r[TCP].flags)
r = sr1(syn(token, 41002), timeout=5)
out["synack"] = None if r is None else str(r[TCP].flags)
if r is not None and "S" in str(r[TCP].flags):
    o = emit(MpJoinAck(b"\xee" * 20))
    a = IP(src=src, dst=dst) / TCP(sport=41002, dport=port, flags="A", seq=1001,
                                   ack=r[TCP].seq + 1, options=[(30, o[2:])])
    r2 = sr1(a, timeout=5)
    out["forged_hmac"] = None if r2 is None else str(r2[TCP].flags)
print(json.dumps(out))
'''


def test_forged_joins_refused_over_xdp(lab4, tmp_path):
    """A join with an unknown token and one with a forged HMAC, built with scapy in the
    client namespace, reach our server through the fast path, get a RST, and leave no
    subflow behind (8684 §3.2)."""
    import json
    from mptcp_bpf.control import ControlClient, socket_path
    port = next(_ports)
    src = str(tmp_path / "in")
    make_file(src, 1024)
    dst = str(tmp_path / "out")
    ours = lab4.popen("server", nc_argv("-l", str(port)), stdin=subprocess.PIPE,
                      stdout=open(dst, "wb"), stderr=subprocess.PIPE)
    procs = [ours]
    nft = ["nft", "add", "rule", "inet", "mpbs", "out", "tcp", "dport", str(port),
           "tcp", "flags", "&", "rst", "!=", "0", "drop"]
    try:
        kc = lab4.popen("client", [PY, kpeer_script(str(tmp_path)), "connect", "4",
                                   lab4.addresses("server")[0], str(port), "send", src, "1"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(kc)
        ctl = ControlClient(socket_path(os.stat(f"/var/run/netns/{lab4.ns('server')}").st_ino))
        deadline = time.monotonic() + 60
        conns = []
        while time.monotonic() < deadline:
            assert ours.poll() is None, f"our server exited: {ours.stderr.read().decode()}"
            try:
                conns = [c for c in ctl.request("conns") if c.get("state") != "CLOSED"]
            except Exception:
                conns = []
            if conns and conns[0].get("remote_key"):
                break
            time.sleep(0.2)
        assert conns, "no connection at our server"
        time.sleep(1.0)  # let the kernel's own joins settle
        before = len(ctl.request("conns")[0]["subflows"])
        token = conns[0]["token"]
        for cmd in (["nft", "add", "table", "inet", "mpbs"],
                    ["nft", "add", "chain", "inet", "mpbs", "out",
                     "{ type filter hook output priority 0 ; }"], nft):
            lab4.exec("client", cmd, check=True, timeout=30)
        r = lab4.exec("client", [PY, "-c", SCAPY_JOIN, lab4.addresses("client")[0],
                                 lab4.addresses("server")[0], str(port), token,
                                 os.path.dirname(os.path.dirname(os.path.dirname(
                                     os.path.abspath(__file__))))],
                      capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        res = json.loads(r.stdout.strip().splitlines()[-1])
        assert res["unknown_token"] and "R" in res["unknown_token"], res
        assert res["synack"] and "S" in res["synack"] and "A" in res["synack"], res
        assert res.get("forged_hmac") and "R" in res["forged_hmac"], res
        time.sleep(0.5)
        after = len(ctl.request("conns")[0]["subflows"])
        assert after == before, f"a refused join left a subflow: {before} -> {after}"
    finally:
        lab4.exec("client", ["nft", "delete", "table", "inet", "mpbs"], timeout=30,
                  capture_output=True)
        if ours.stdin:
            ours.stdin.close()
            ours.stdin = None
        finish(procs, 60)
        kill_all(procs)
