"""The pcapng writer: block layout, and tshark reads TCP/MPTCP packets without complaint."""

from __future__ import annotations

import shutil
import struct
import subprocess

import pytest

from mptcp_bpf import capture


def mptcp_packets():
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6
    cap_syn = b"\x1e\x04\x01\x81"                          # MP_CAPABLE v1 SYN
    cap_ack = b"\x1e\x14\x01\x81" + bytes(range(16))       # MP_CAPABLE ACK, both keys
    dss = b"\x1e\x08\x20\x01" + (1000).to_bytes(4, "big")  # DSS, 4-byte data ACK
    pkts = [
        IP(src="10.0.1.1", dst="10.0.1.2") / TCP(sport=40000, dport=80, flags="S", seq=1,
                                                 options=[("MSS", 1460), ("SAckOK", b""),
                                                          (30, cap_syn[2:])]),
        IP(src="10.0.1.2", dst="10.0.1.1") / TCP(sport=80, dport=40000, flags="SA", seq=7,
                                                 ack=2, options=[("MSS", 1460)]),
        IP(src="10.0.1.1", dst="10.0.1.2") / TCP(sport=40000, dport=80, flags="A", seq=2,
                                                 ack=8, options=[(30, cap_ack[2:])]),
        IP(src="10.0.1.1", dst="10.0.1.2") / TCP(sport=40000, dport=80, flags="PA", seq=2,
                                                 ack=8, options=[(30, dss[2:])]) / (b"x" * 333),
        IPv6(src="fd00::1", dst="fd00::2") / TCP(sport=1, dport=2, flags="A") / b"hello",
    ]
    return [bytes(p) for p in pkts]


def test_blocks_are_well_formed(tmp_path):
    path = tmp_path / "a.pcapng"
    with capture.PcapngWriter(str(path), flush_bytes=64) as w:
        raw = w.interface("raw0")
        eth = w.interface("eth0", capture.LINKTYPE_ETHERNET)
        assert (raw, eth) == (0, 1) and w.interface("raw0") == 0
        w.write(b"\x45" + b"\0" * 18, raw, ts_ns=1_700_000_000_123_456_789,
                direction=capture.OUTBOUND)
        w.write(b"\0" * 14, eth, direction=capture.INBOUND)
    blocks = capture.read_blocks(path.read_bytes())
    assert [b[0] for b in blocks] == [0x0A0D0D0A, 1, 1, 6, 6]
    magic, major, minor = struct.unpack_from("<IHH", blocks[0][1])
    assert (magic, major, minor) == (0x1A2B3C4D, 1, 0)
    assert struct.unpack_from("<H", blocks[1][1])[0] == 101
    assert struct.unpack_from("<H", blocks[2][1])[0] == 1
    if_id, hi, lo, caplen, olen = struct.unpack_from("<IIIII", blocks[3][1])
    assert if_id == 0 and (hi << 32 | lo) == 1_700_000_000_123_456_789 and caplen == olen == 19
    for btype, body in blocks:
        assert len(body) % 4 == 0


def test_batches_writes(tmp_path):
    path = tmp_path / "b.pcapng"
    w = capture.PcapngWriter(str(path), flush_bytes=1 << 20)
    for _ in range(100):
        w.write(b"\x45" * 60)
    assert path.stat().st_size == 0          # still buffered: no write per packet
    w.close()
    w.close()
    assert len(capture.read_blocks(path.read_bytes())) == 1 + 1 + 100
    assert w.packets == 100


def test_direction_keywords(tmp_path):
    path = tmp_path / "d.pcapng"
    with capture.PcapngWriter(str(path)) as w:
        w.write(b"\x45" * 20, outbound=True)
        w.write_many([b"\x45" * 20, b"\x45" * 21], outbound=False)
    epbs = [b for t, b in capture.read_blocks(path.read_bytes()) if t == 6]
    flags = [struct.unpack_from("<I", b, len(b) - 8)[0] for b in epbs]
    assert flags == [capture.OUTBOUND, capture.INBOUND, capture.INBOUND]


def test_snaplen_truncates(tmp_path):
    path = tmp_path / "c.pcapng"
    with capture.PcapngWriter(str(path), snaplen=100) as w:
        w.write(b"\x45" * 1000)
    body = capture.read_blocks(path.read_bytes())[-1][1]
    assert struct.unpack_from("<II", body, 12) == (100, 1000)


def test_tshark_dissects_without_errors(tmp_path):
    tshark = shutil.which("tshark")
    if not tshark:
        pytest.skip("tshark is not installed (tools/bootstrap installs it)")
    path = tmp_path / "m.pcapng"
    pkts = mptcp_packets()
    with capture.PcapngWriter(str(path)) as w:
        i = w.interface("mptcp-bpf")
        for n, p in enumerate(pkts):
            w.write(p, i, ts_ns=1_700_000_000_000_000_000 + n * 1000,
                    direction=capture.OUTBOUND if n % 2 == 0 else capture.INBOUND)
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    run = subprocess.run([tshark, "-n", "-r", str(path), "-T", "fields", "-e", "frame.number",
                          "-e", "tcp.options.mptcp.subtype", "-e", "ip.src", "-e", "ipv6.src"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert len(lines) == len(pkts)
    assert lines[0].split("\t")[1] == "0" and lines[3].split("\t")[1] == "2"
    assert "fd00::1" in lines[4]
    expert = subprocess.run([tshark, "-n", "-r", str(path), "-q", "-z", "expert,warn"],
                            capture_output=True, text=True, timeout=120, env=env)
    assert expert.returncode == 0, expert.stderr
    text = expert.stdout.lower()
    assert "malformed" not in text and "error" not in text.replace("errors:", ""), expert.stdout
    assert "mptcp" not in text, expert.stdout
