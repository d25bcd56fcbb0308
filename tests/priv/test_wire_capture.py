"""Kernel MPTCP traffic, captured with tcpdump, checked against the wire codec and tshark.

Client and server are the kernel's MPTCP in two namespaces joined by two veth pairs; the
server signals its second address (ADD_ADDR; over IPv4 with a port, over IPv6 without),
the client joins it (MP_JOIN), DSS checksums are on (net.mptcp.checksum_enabled=1). The
checks themselves live in tests/unit/test_wire_kernel.py, which runs them on the committed
fixtures tests/fixtures/wire/kernel_v1.json and kernel_v1_ipv6.json (made by this module:
`python tests/priv/test_wire_capture.py --write-fixture`, as root).
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

pytestmark = pytest.mark.priv

TOP = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = {4: TOP / "tests" / "fixtures" / "wire" / "kernel_v1.json",
            6: TOP / "tests" / "fixtures" / "wire" / "kernel_v1_ipv6.json"}
PORT = 5201
SIGNAL_PORT = {4: 5202, 6: None}  # the signalled endpoint: with a port (v4), without (v6)
C_ADDRS = {4: ("10.71.1.1", "10.71.2.1"), 6: ("fd71:1::1", "fd71:2::1")}
S_ADDRS = {4: ("10.71.1.2", "10.71.2.2"), 6: ("fd71:1::2", "fd71:2::2")}
PREFIX = {4: 24, 6: 64}
TIMEOUT = 30

# tshark fields the checks compare with the codec (raw values, no relative numbering)
TSHARK_FIELDS = [
    "frame.number", "tcp.options.mptcp.subtype", "tcp.options.mptcp.version",
    "tcp.options.mptcp.flags", "tcp.options.mptcp.sendkey", "tcp.options.mptcp.recvkey",
    "tcp.options.mptcp.recvtok", "tcp.options.mptcp.sendrand",
    "tcp.options.mptcp.sendtrunchmac", "tcp.options.mptcp.sendhmac",
    "tcp.options.mptcp.addaddrtrunchmac", "tcp.options.mptcp.rawdataack",
    "tcp.options.mptcp.rawdataseqno", "tcp.options.mptcp.subflowseqno",
    "tcp.options.mptcp.datalvllen", "tcp.options.mptcp.checksum",
    "tcp.options.mptcp.addrid", "tcp.options.mptcp.ipv4", "tcp.options.mptcp.ipv6",
    "tcp.options.mptcp.port",
    "tcp.options.mptcp.echo", "tcp.options.mptcp.datafin.flag", "mptcp.expected_token",
    "mptcp.expected_idsn",
]

SERVER = r"""
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_STREAM,
                  socket.IPPROTO_MPTCP)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
print("ready", flush=True)
s.settimeout(20)
c, _ = s.accept()
c.settimeout(20)
while True:
    d = c.recv(65536)
    if not d:
        break
    c.sendall(d)
c.close()
"""

CLIENT = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_STREAM,
                  socket.IPPROTO_MPTCP)
s.settimeout(20)
s.connect((sys.argv[1], int(sys.argv[2])))

def echo(n, byte):
    s.sendall(bytes((byte + i * 7) & 0xff for i in range(n)))
    got = 0
    while got < n:
        d = s.recv(65536)
        if not d:
            raise SystemExit("server closed early")
        got += len(d)

echo(1001, 0x41)
print("phase1", flush=True)  # the test now adds the server's signal endpoint
# wait for the join to the signalled address (MPTCP_INFO byte 0 = extra subflows)
deadline = time.time() + 15
while time.time() < deadline:
    if s.getsockopt(284, 1, 64)[0] >= 1:
        break
    time.sleep(0.05)
else:
    raise SystemExit("no additional subflow")
time.sleep(0.3)
for i in range(3):
    echo(777 + i, 0x61 + i)
s.shutdown(socket.SHUT_WR)
while s.recv(65536):
    pass
s.close()
print("done", flush=True)
"""


def _run(*cmd: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    full = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    return subprocess.run(full, capture_output=True, text=True, timeout=TIMEOUT, check=check)


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")


def capture_kernel_transfer(workdir: pathlib.Path, family: int = 4) -> tuple[pathlib.Path, dict]:
    """Run the transfer in fresh namespaces; return the pcap path and facts about the run.
    Removes the namespaces and processes it made, also on failure."""
    tag = f"mpbw{os.getpid() % 100000}v{family}"
    c_addrs, s_addrs, plen = C_ADDRS[family], S_ADDRS[family], PREFIX[family]
    ns_c, ns_s = f"{tag}c", f"{tag}s"
    pcap = workdir / "kernel.pcap"
    procs: list[subprocess.Popen] = []
    try:
        _run("ip", "netns", "add", ns_c)
        _run("ip", "netns", "add", ns_s)
        for i in range(2):
            _run("ip", "link", "add", f"c{i}", "netns", ns_c, "type", "veth",
                 "peer", "name", f"s{i}", "netns", ns_s)
            nodad = ["nodad"] if family == 6 else []  # usable at once, no duplicate detection
            _run("ip", "addr", "add", f"{c_addrs[i]}/{plen}", "dev", f"c{i}", *nodad, ns=ns_c)
            _run("ip", "addr", "add", f"{s_addrs[i]}/{plen}", "dev", f"s{i}", *nodad, ns=ns_s)
            _run("ip", "link", "set", f"c{i}", "up", ns=ns_c)
            _run("ip", "link", "set", f"s{i}", "up", ns=ns_s)
            for ns, dev in ((ns_c, f"c{i}"), (ns_s, f"s{i}")):
                # MTU-sized segments in the capture (no GSO super-packets)
                _run("ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off", ns=ns, check=False)
        for ns in (ns_c, ns_s):
            _run("ip", "link", "set", "lo", "up", ns=ns)
            _run("sysctl", "-qw", "net.mptcp.enabled=1", ns=ns)
            _run("sysctl", "-qw", "net.mptcp.checksum_enabled=1", ns=ns)
            _run("ip", "mptcp", "limits", "set", "subflows", "2", "add_addr_accepted", "2", ns=ns)

        tcpdump = subprocess.Popen(
            ["ip", "netns", "exec", ns_c, "tcpdump", "-i", "any", "-n", "-s", "0", "-U", "--immediate-mode",
             "-w", str(pcap), "tcp"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        procs.append(tcpdump)
        _wait_line(tcpdump.stderr, "listening on", "tcpdump")
        server = subprocess.Popen(
            ["ip", "netns", "exec", ns_s, sys.executable, "-c", SERVER, "::" if family == 6 else "0.0.0.0",
             str(PORT)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(server)
        _wait_line(server.stdout, "ready", "server")
        client = subprocess.Popen(
            ["ip", "netns", "exec", ns_c, sys.executable, "-c", CLIENT, s_addrs[0], str(PORT)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(client)
        # The signal endpoint is added once the connection carries data, so the first data
        # goes out before any ADD_ADDR (MP_CAPABLE with data, 8684 §3.1) and the in-kernel
        # path manager then announces the address on the established connection.
        _wait_line(client.stdout, "phase1", "client")
        port = [] if SIGNAL_PORT[family] is None else ["port", str(SIGNAL_PORT[family])]
        _run("ip", "mptcp", "endpoint", "add", s_addrs[1], "dev", "s1", *port, "signal", ns=ns_s)
        try:
            _, err = client.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError("kernel MPTCP client timed out") from None
        if client.returncode != 0:
            raise AssertionError(f"kernel MPTCP client failed: {err}")
        server.wait(timeout=TIMEOUT)
        time.sleep(1.0)  # let tcpdump write the last segments
        nstat = _run("nstat", "-asz", ns=ns_s, check=False).stdout  # -s: leave the history file alone
        facts = {"kernel": os.uname().release,
                 "server_mib": {line.split()[0]: int(line.split()[1]) for line in nstat.splitlines()
                                if line.startswith("MPTcpExt") and line.split()[1] != "0"}}
        return pcap, facts
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGINT if p is procs[0] else signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=10)
        for ns in (ns_c, ns_s):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=TIMEOUT)


def _wait_line(stream, needle: str, what: str) -> None:
    """Wait (bounded) until a child prints `needle`; reads the raw fd so that nothing
    sits unseen in a Python buffer."""
    import select
    fd = stream.fileno()
    deadline = time.time() + TIMEOUT
    seen = b""
    while time.time() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            seen += chunk
            if needle.encode() in seen:
                return
    raise AssertionError(f"{what} did not start: {seen!r}")


def pcap_records(pcap: pathlib.Path, family: int) -> list[dict]:
    """One record per captured TCP segment: addresses, ports, flags, MPTCP options, payload."""
    from scapy.all import IP, IPv6, rdpcap, raw  # noqa: PLC0415

    from mptcp_bpf.wire.packet import parse_ip_packet
    from mptcp_bpf.wire.tcp import parse_tcp_options

    layer = IP if family == 4 else IPv6
    records = []
    for frame, pkt in enumerate(rdpcap(str(pcap)), start=1):
        if layer not in pkt:
            continue
        p = parse_ip_packet(raw(pkt[layer]))
        opts = parse_tcp_options(p.options)
        src, dst = str(ipaddress.ip_address(p.src)), str(ipaddress.ip_address(p.dst))
        records.append({
            "frame": frame, "src": src, "dst": dst, "sport": p.sport, "dport": p.dport,
            "dir": "c2s" if src in C_ADDRS[family] else "s2c", "seq": p.seq, "ack": p.ack,
            "flags": p.flags, "options": [o.hex() for o in opts.mptcp],
            "payload": bytes(p.payload).hex(),
        })
    return records


def tshark_fields(pcap: pathlib.Path) -> dict[int, dict[str, list[str]]]:
    """tshark's MPTCP dissection, by frame number (raw sequence numbers)."""
    cmd = ["tshark", "-r", str(pcap), "-T", "json",
           "-o", "mptcp.relative_sequence_numbers:FALSE", "-o", "mptcp.analyze_mptcp:TRUE"]
    for f in TSHARK_FIELDS:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    res = {}
    for entry in json.loads(out):
        layers = entry["_source"]["layers"]
        res[int(layers["frame.number"][0])] = {k: v for k, v in layers.items() if k != "frame.number"}
    return res


def make_fixture(workdir: pathlib.Path, family: int = 4) -> dict:
    pcap, facts = capture_kernel_transfer(workdir, family)
    records = pcap_records(pcap, family)
    ts = tshark_fields(pcap)
    for r in records:
        r["tshark"] = ts.get(r["frame"], {})
    return {
        "about": f"Kernel MPTCP v1 transfer over IPv{family} (checksums on, ADD_ADDR signal, "
                 "one MP_JOIN) captured by tests/priv/test_wire_capture.py; tshark fields "
                 "from the same capture. Options are whole MPTCP options in hex.",
        "kernel": facts["kernel"], "family": family, "port": PORT,
        "signal_port": SIGNAL_PORT[family], "client_addrs": list(C_ADDRS[family]),
        "server_addrs": list(S_ADDRS[family]), "server_mib": facts["server_mib"],
        "packets": records,
    }


def _checks():
    path = TOP / "tests" / "unit" / "test_wire_kernel.py"
    spec = importlib.util.spec_from_file_location("wire_kernel_checks", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module", params=[4, 6], ids=["ipv4", "ipv6"])
def live_capture(request):
    for tool in ("tcpdump", "tshark"):
        _need(tool)
    if not pathlib.Path("/proc/sys/net/mptcp/enabled").exists():
        pytest.skip("kernel without MPTCP")
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="mpbw"))
    try:
        yield make_fixture(tmp, request.param)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_capture_has_every_expected_option(live_capture):
    summary = _checks().check_capture(live_capture)
    assert summary["MP_JOIN"] >= 3 and summary["ADD_ADDR"] >= 1
    adds = [o for r in live_capture["packets"] for o in r["options"] if o[4:5] == "3"]
    assert len(adds) >= 2, "ADD_ADDR and its echo"
    mib = live_capture["server_mib"]  # what the kernel server saw (non-zero counters only)
    assert mib.get("MPTcpExtMPJoinAckRx", 0) >= 1 and mib.get("MPTcpExtAddAddrTx", 0) >= 1
    assert mib.get("MPTcpExtDataCsumErr", 0) == 0


def test_capture_agrees_with_tshark(live_capture):
    n = _checks().check_tshark(live_capture)
    assert n >= 10


def test_capture_dss_checksums_verify(live_capture):
    n = _checks().check_dss_checksums(live_capture)
    assert n >= 4


def test_no_namespace_left(live_capture):
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [line for line in out.splitlines() if line.startswith(f"mpbw{os.getpid() % 100000}v")]


if __name__ == "__main__":
    if "--write-fixture" not in sys.argv:
        sys.exit("usage: python tests/priv/test_wire_capture.py --write-fixture  (as root)")
    sys.path.insert(0, str(TOP))
    for fam, path in FIXTURES.items():
        tmp = pathlib.Path(tempfile.mkdtemp(prefix="mpbw"))
        try:
            data = make_fixture(tmp, fam)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1) + "\n")
        print(f"wrote {path} ({len(data['packets'])} packets)")
