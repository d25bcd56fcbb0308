"""Send-side hand-off (mptcp.send): one mapping per subflow's free cwnd with the default
scheduler (`fills_subflow`), none to a subflow still holding unsent data, and the data-level
window right edge that only grows (8684 §3.3.5)."""

from __future__ import annotations

import random

from mptcp_bpf.wire.mptcp import Dss, parse_mptcp
from mptcp_bpf.wire.packet import parse_ip_packet
from mptcp_bpf.wire.tcp import parse_tcp_options

from test_mptcp_netsim import Pair, ip


def _map_lengths(rec: list, src: bytes) -> list[int]:
    out = []
    for pkt in rec:
        p = parse_ip_packet(pkt)
        if p.src != src or not p.payload:
            continue
        for o in parse_tcp_options(p.options).mptcp:
            try:
                d = parse_mptcp(o, syn=False, ack=True)
            except Exception:
                continue
            if isinstance(d, Dss) and d.data_len:
                out.append(d.data_len)
    return out


def _run(**opts) -> tuple[Pair, list[int]]:
    p = Pair(seed=3)
    rec: list = []
    p.net.taps.append(lambda pkt, now: rec.append(bytes(pkt)))
    p.client = p.a.connect((p.b_addrs[0], 80), now=p.net.now, **opts)
    assert p.net.run_until(p._accepted, 10)
    data = random.Random(1).randbytes(2_000_000)
    got, _ = p.transfer(data)
    assert got == data
    return p, _map_lengths(rec, ip(p.a_addrs[0])) + _map_lengths(rec, ip(p.a_addrs[1]))


def test_default_scheduler_maps_a_subflows_free_cwnd_at_once():
    p, lens = _run()
    mss = p.client.subflows[0].mss
    assert max(lens) > 4 * mss          # larger than one chunk of chunk_segments MSS
    assert max(lens) <= 0xFFFF          # the 16-bit data-level length


def test_roundrobin_keeps_chunk_sized_mappings():
    p, lens = _run(scheduler="roundrobin")
    mss = p.client.subflows[0].mss
    assert max(lens) <= 4 * mss


def test_no_new_data_for_a_subflow_with_unsent_bytes():
    p = Pair(seed=4)
    c, _ = p.connect()
    p.run(1.0)
    sfs = [s for s in c.subflows if s.established]
    assert len(sfs) >= 2
    blocked = sfs[0]
    blocked.tcp.snd_wnd = 0                       # the peer's TCP window is full
    blocked.tcp.send(b"x" * 1000, None)           # unsent data stays queued there
    before = {s.id: s.bytes_sent for s in sfs}
    c.send(b"y" * 100_000)
    assert blocked.bytes_sent == before[blocked.id]
    assert sum(s.bytes_sent - before[s.id] for s in sfs) > 0   # the others' cwnds took it


def test_data_level_window_edge_only_grows():
    p = Pair(seed=5)
    c, _ = p.connect()
    p.run(1.0)
    msf = c.subflows[0]
    ack = (c.local_idsn + c.snd_una) & (2 ** 64 - 1)
    edge = c.snd_wnd_edge                         # from the peer's last ACK
    assert edge > c.snd_una + (1 << 20)
    c._rx_data_ack(msf, ack, True, 42 * 1024)     # a smaller window on another subflow
    assert c.snd_wnd_edge == edge
    bigger = edge - c.snd_una + (1 << 20)
    c._rx_data_ack(msf, ack, True, bigger)
    assert c.snd_wnd_edge == c.snd_una + bigger
