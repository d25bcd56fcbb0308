"""AF_XDP socket on a veth pair: RX with metadata, TX to the peer, checksum offload,
no drops with a full fill ring at 100k frames/s, rebinding right after close."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import select
import socket
import struct
import time

import pytest

from mptcp_bpf.datapath.tun import run_in_netns
from mptcp_bpf.datapath.xsk import (REDIRECT_MAGIC, REDIRECT_META, RedirectProgram, XskConfig,
                                    XskSocket, prepare_tx_csum)

pytestmark = pytest.mark.priv

_BENCH = pathlib.Path(__file__).resolve().parents[2] / "tools" / "bench_xsk.py"
_spec = importlib.util.spec_from_file_location("mpbx_bench_xsk", _BENCH)
bench = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(bench)  # type: ignore[union-attr]

from test_tun import csum  # noqa: E402  same directory (rootdir-relative import)

PORT = 9999


@pytest.fixture(scope="module")
def lab():
    with bench.VethLab("mpbx-x") as lab:
        yield lab


@pytest.fixture(scope="module")
def prog(lab):
    """The redirect program on xb (compiled once per module: bcc is slow to compile)."""
    p = RedirectProgram("xb", PORT, netns=lab.b, udp=True, tcp=True)
    try:
        yield p
    finally:
        p.close()


def make_rx(lab, prog, **kw):
    xsk = XskSocket(lab.ifindex_b, 0, XskConfig(meta_len=RedirectProgram.META_LEN, **kw),
                    netns=lab.b)
    prog.set_xsk(0, xsk.fd)
    return xsk


@pytest.fixture
def rx(lab, prog):
    """A socket bound to xb queue 0, registered in the program's map."""
    xsk = make_rx(lab, prog)
    try:
        yield prog, xsk
    finally:
        xsk.close()


def drain(xsk: XskSocket, want: int, timeout: float = 20.0) -> list[tuple[bytes, bytes]]:
    got: list = []
    end = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < end:
        select.select([xsk], [], [], 0.1)
        got += xsk.recv_batch(64)
    return got


def test_zero_copy_views_and_l3_receive(lab, rx):
    """recv_batch(copy=False) lends UMEM views until the next call; recv_l3 strips L2."""
    _, xsk = rx

    def send(payloads) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for p in payloads:
                s.sendto(p, ("10.9.0.2", PORT))

    run_in_netns(lab.a, lambda: send([b"view0", b"view1"]))
    got: list = []
    end = time.monotonic() + 20
    while len(got) < 2 and time.monotonic() < end:
        select.select([xsk], [], [], 0.1)
        got += xsk.recv_batch(8, copy=False)
    assert [type(f) for f, _ in got] == [memoryview, memoryview]
    assert [bytes(f[42:]) for f, _ in got] == [b"view0", b"view1"]
    del got
    run_in_netns(lab.a, lambda: send([b"l3-0"]))
    pkts: list = []
    end = time.monotonic() + 20
    while not pkts and time.monotonic() < end:
        select.select([xsk], [], [], 0.1)
        out, bad = xsk.recv_l3(8, REDIRECT_META.pack(REDIRECT_MAGIC, 0, 0)[:4], 4)
        pkts += out
        assert bad == 0
    (pkt, meta), = pkts
    assert pkt[0] == 0x45 and pkt[28:] == b"l3-0"  # starts at the IP header
    assert REDIRECT_META.unpack(meta)[1] == 14


@pytest.mark.parametrize("dst,l4off", [("10.9.0.2", 34), ("fd09::2", 54)])
def test_frames_from_peer_arrive_with_metadata(lab, rx, dst, l4off):
    prog, xsk = rx
    hits0 = prog.hits()
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET

    def send() -> None:
        with socket.socket(fam, socket.SOCK_DGRAM) as s:
            for i in range(20):
                s.sendto(b"pkt%03d" % i, (dst, PORT))
            s.sendto(b"other port", (dst, PORT + 1))  # not redirected: passes to the kernel

    run_in_netns(lab.a, send)
    got = drain(xsk, 20)
    assert len(got) == 20
    for i, (frame, meta) in enumerate(got):
        magic, l3off, l4 = REDIRECT_META.unpack(meta)
        assert (magic, l3off, l4) == (REDIRECT_MAGIC, 14, l4off)
        assert frame[:6] == bytes.fromhex(lab.mac_b.replace(":", ""))
        assert struct.unpack_from("!H", frame, l4 + 2)[0] == PORT
        assert frame[l4 + 8:] == b"pkt%03d" % i
    time.sleep(0.2)
    assert xsk.recv_batch(64) == []  # the other-port datagram went to the kernel
    assert prog.hits() - hits0 == 20
    st = xsk.statistics()
    assert st["rx_dropped"] == st["rx_ring_full"] == 0


def test_frames_sent_arrive_at_peer(lab, rx):
    _, xsk = rx
    sock = run_in_netns(lab.a, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    with sock:
        sock.bind(("10.9.0.1", 7000))
        sock.settimeout(10)
        frames = []
        for i in range(100):
            payload = b"tx%04d" % i
            f = bytearray(bench.udp_frame(lab.mac_b, lab.mac_a, payload, dport=7000))
            struct.pack_into("!H", f, 40, csum(bytes(f[26:34]) + b"\0\x11" + f[38:40] +
                                               bytes(f[34:])))  # full UDP checksum
            frames.append(bytes(f))
        assert xsk.send_batch(frames) == 100
        got = [sock.recvfrom(100)[0] for _ in range(100)]
    assert got == [b"tx%04d" % i for i in range(100)]
    for _ in range(100):
        if xsk.reap() or xsk.tx_free() == xsk.config.tx_size:
            break
        time.sleep(0.05)
    assert xsk.tx_free() == xsk.config.tx_size  # every frame completed and came back
    assert xsk.statistics()["tx_invalid_descs"] == 0


@pytest.fixture(params=["offload", "software"])
def csum_xsk(request, lab, prog):
    xsk = make_rx(lab, prog, tx_csum=request.param == "offload")
    try:
        if request.param == "offload" and not xsk.tx_csum:
            pytest.skip("kernel refused XDP_UMEM_TX_METADATA_LEN (TX checksum offload)")
        assert xsk.tx_csum == (request.param == "offload")
        yield xsk
    finally:
        xsk.close()


def test_batch_larger_than_tx_ring(lab, prog):
    """More frames than TX frames in one call: the batch is handed over in parts."""
    xsk = make_rx(lab, prog, rx_size=256, tx_size=64)
    sock = run_in_netns(lab.a, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.bind(("10.9.0.1", 7002))
        sock.settimeout(10)
        frames = [bench.udp_frame(lab.mac_b, lab.mac_a, b"big%04d" % i, dport=7002)
                  for i in range(1000)]
        assert xsk.send_batch(frames) == 1000
        got = [sock.recvfrom(100)[0] for _ in range(1000)]
        assert got == [b"big%04d" % i for i in range(1000)]
        assert xsk.statistics()["tx_dropped"] == 0
    finally:
        sock.close()
        xsk.close()


def test_tx_checksum_offload(lab, csum_xsk):
    """The kernel (or our fallback without offload) fills the UDP checksum from the
    pseudo-header sum we leave in the field."""
    xsk = csum_xsk
    sock = run_in_netns(lab.a, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    cap = run_in_netns(lab.a, lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW,
                                                    socket.htons(0x0800)))
    with sock, cap:
        sock.bind(("10.9.0.1", 7001))
        sock.settimeout(10)
        cap.bind(("xa", 0))
        cap.settimeout(10)
        payload = bytes(range(256)) * 3 + b"odd"
        good = bytearray(bench.udp_frame(lab.mac_b, lab.mac_a, payload, dport=7001))
        assert prepare_tx_csum(good) == (34, 6)
        bad = bytearray(good)
        bad[40:42] = b"\x12\x34"  # not the pseudo-header sum: the result must be wrong
        assert xsk.send_batch([good, bad], [(34, 6), (34, 6)]) == 2
        data, _ = sock.recvfrom(2000)
        assert data == payload
        with pytest.raises(socket.timeout):
            sock.settimeout(1.0)
            sock.recvfrom(2000)  # the bad one failed the kernel's checksum check
        seen = []
        while len(seen) < 2:
            f = cap.recv(4000)
            if f[23] == 17 and f[36:38] == b"\x1b\x59":  # UDP to 7001
                seen.append(f)
        ph = seen[0][26:34] + b"\0\x11" + seen[0][38:40]
        assert csum(ph + seen[0][34:]) == 0  # a valid checksum on the wire


def test_full_fill_ring_drops_nothing_at_100k(lab, prog):
    # 16k frames in the fill ring: a 160 ms stall of this process on a busy machine is
    # absorbed; the test checks that the refills keep it full enough for that.
    xsk = make_rx(lab, prog, rx_size=16384, tx_size=256)
    try:
        _check_100k(lab, prog, xsk)
    finally:
        xsk.close()


def _check_100k(lab, prog, xsk):
    count = 200_000
    hits0 = prog.hits()
    p = lab.blaster(PORT, count=count, rate=100_000, size=18)
    got = 0
    seq_ok = True
    expect = 0
    quiet_since: float | None = None
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            select.select([xsk], [], [], 0.05)
            for frame, _ in xsk.recv_batch(256):
                seq = struct.unpack_from("!I", frame, 42)[0]
                seq_ok &= seq >= expect
                expect = seq + 1
                got += 1
            if p.poll() is not None and xsk.rx_pending() == 0:
                # the sender is done; frames may still be on their way through veth's
                # NAPI (late on a busy machine): stop once all redirected ones are read
                if prog.hits() - hits0 == got:
                    if quiet_since is None:
                        quiet_since = time.monotonic()
                    elif time.monotonic() - quiet_since > 0.5:
                        break
                else:
                    quiet_since = None
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    sender = json.loads(out)
    st = xsk.statistics()
    hits = prog.hits() - hits0
    info = f"sender {sender}, received {got}, redirected {hits}, stats {st}"
    print(info)
    assert sender["sent"] == count, info
    # what this module guarantees: nothing redirected to the socket is lost
    assert st["rx_dropped"] == st["rx_ring_full"] == st["rx_fill_ring_empty_descs"] == 0, info
    assert got == hits, info
    assert seq_ok, info
    # veth itself may drop a few before XDP when its NAPI is starved on a busy machine
    assert got >= count * 0.99, info
    # the rate was really in the 100k/s range (generous: the machine is shared)
    assert sender["pps"] > 30_000, info


def test_rebind_right_after_close(lab, prog):
    for i in range(8):
        xsk = XskSocket(lab.ifindex_b, 0, XskConfig(rx_size=256, tx_size=256,
                                                    meta_len=8), netns=lab.b)
        try:
            prog.set_xsk(0, xsk.fd)

            def send(i=i) -> None:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.sendto(b"round%d" % i, ("10.9.0.2", PORT))

            run_in_netns(lab.a, send)
            got = drain(xsk, 1)
            assert [bytes(f[42:]) for f, _ in got] == [b"round%d" % i]
        finally:
            xsk.close()
        assert xsk.closed
        xsk.close()  # twice is harmless


def test_bad_device_is_hinted(lab):
    from mptcp_bpf.errors import HintedError

    with pytest.raises(HintedError):
        XskSocket(99999, 0, XskConfig(rx_size=256, tx_size=256), netns=lab.b)
