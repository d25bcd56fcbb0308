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

from test_interop_util import (BAD_COUNTERS, KPEER, PY, delta, finish, kill_all, kpeer_script,
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
             fam: int = 4, kernel_mptcp_on: bool = True, timeout: float = 180.0) -> dict:
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
                kp = lab.popen("server", [PY, script, "listen", str(fam), "", str(port), kmode,
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
    with lab_for("mpbsi4", paths=2) as lab:
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
    with lab_for(f"mpbsc{ours_csum}{kernel_csum}", paths=2) as lab:
        kernel_mptcp(lab, csum_kernel=bool(kernel_csum))
        set_our_sysctl(lab, "server", checksum=ours_csum)
        for ours, direction in (("server", "from_kernel"), ("server", "to_kernel")):
            r = run_pair(lab, str(tmp_path), MiB, ours, direction, 8100 + len(direction))
            check_clean(r, MiB)


def test_ipv6(tmp_path):
    with lab_for("mpbsi6", paths=2, ipv6=True) as lab:
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
    with lab_for(f"mpbso{version}", paths=2) as lab:
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
    with lab_for("mpbsi46", paths=2, ipv6=True) as lab:
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
            r = run_pair(lab, str(tmp_path), 16 * MiB, "client", "to_kernel", next(_ports))
        finally:
            stop.set()
            t.join(10)
        check_clean(r, 16 * MiB)
        assert r["mib"].get("MPJoinSynRx", 0) >= 1, r["mib"]
        assert any(p.startswith("[") for p in peers), f"no IPv6 subflow seen: {peers}"
