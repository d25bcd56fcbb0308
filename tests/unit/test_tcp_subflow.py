"""Subflow TCP between two plain-TCP hosts over the in-memory network (virtual time)."""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mptcp_bpf.tcp import subflow as sfm
from mptcp_bpf.tcp.netsim import Net
from mptcp_bpf.tcp.plain import PlainConn, PlainHost
from mptcp_bpf.tcp.subflow import Subflow, SubflowConfig
from mptcp_bpf.timers import TimerWheel
from mptcp_bpf.wire.packet import build_tcp_packet, parse_ip_packet
from mptcp_bpf.wire.tcp import parse_tcp_options

A = bytes([10, 0, 0, 1])
B = bytes([10, 0, 0, 2])
A6 = bytes.fromhex("fd000000000000000000000000000001")
B6 = bytes.fromhex("fd000000000000000000000000000002")


class Pair:
    """Client host on A, server host on B listening on port 80, one link."""

    def __init__(self, seed: int = 1, cfg_a: SubflowConfig | None = None,
                 cfg_b: SubflowConfig | None = None, a: bytes = A, b: bytes = B, **link):
        self.net = Net(seed=seed)
        self.a, self.b = a, b
        self.link = self.net.link(a, b, **({"delay": 0.01} | link))
        self.ha = PlainHost([a], self.net.timers, self.net.send, cfg_a, random.Random(seed))
        self.hb = PlainHost([b], self.net.timers, self.net.send, cfg_b, random.Random(seed + 1))
        self.net.attach(a, self.ha.input)
        self.net.attach(b, self.hb.input)
        self.accepted: list[PlainConn] = []
        self.hb.listen(80, self.accepted.append)
        self.pkts: list[tuple[float, object]] = []
        self.net.taps.append(lambda p, t: self.pkts.append((t, parse_ip_packet(p))))

    def connect(self) -> tuple[PlainConn, PlainConn]:
        c = self.ha.connect(self.a, (self.b, 80), self.net.now)
        assert self.net.run_until(lambda: c.established and self.accepted
                                  and self.accepted[-1].established, 30)
        return c, self.accepted[-1]

    def sent_by(self, addr: bytes, data_only: bool = False):
        return [(t, p) for t, p in self.pkts
                if p.src == addr and (not data_only or len(p.payload))]


def transfer(pair: Pair, c: PlainConn, s: PlainConn, up: bytes, down: bytes = b"",
             timeout: float = 600) -> tuple[bytes, bytes]:
    """Send `up` client->server and `down` server->client, close both, collect both."""
    got_s, got_c = bytearray(), bytearray()
    now = pair.net.now
    if up:
        c.send(up, now)
    if down:
        s.send(down, now)
    c.close(now)
    s.close(now)

    def done() -> bool:
        got_s.extend(s.recv(1 << 30, pair.net.now))
        got_c.extend(c.recv(1 << 30, pair.net.now))
        return s.eof and c.eof and not s.rbuf and not c.rbuf
    assert pair.net.run_until(done, timeout), (c.sf, s.sf)
    return bytes(got_s), bytes(got_c)


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def payload(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


# --------------------------------------------------------------------------- handshake

def test_handshake_negotiates_everything():
    p = Pair()
    c, s = p.connect()
    syn = p.pkts[0][1]
    o = parse_tcp_options(syn.options)
    assert syn.flags == sfm.SYN
    assert o.mss == 1460 and o.sack_perm and o.ts is not None and o.wscale is not None
    synack = p.pkts[1][1]
    o2 = parse_tcp_options(synack.options)
    assert synack.flags == sfm.SYN | sfm.ACK
    assert o2.sack_perm and o2.ts[1] == o.ts[0] and o2.wscale is not None
    for sf in (c.sf, s.sf):
        assert sf.state == sfm.ESTABLISHED
        assert sf.sack_ok and sf.ts_ok and sf.ws_ok
        assert sf.mss == 1460 - 12
    assert c.sf.snd_wscale == s.sf.rcv_wscale and s.sf.snd_wscale == c.sf.rcv_wscale
    assert c.sf.srtt == pytest.approx(0.02, rel=0.05)
    ti = c.sf.tcp_info()
    assert ti["tcpi_state"] == 1 and ti["tcpi_options"] == 7 and ti["tcpi_snd_mss"] == 1448


def test_handshake_without_options_and_small_mss():
    p = Pair(cfg_a=SubflowConfig(sack=False, timestamps=False, window_scaling=False),
             cfg_b=SubflowConfig(mss=1000))
    c, s = p.connect()
    o = parse_tcp_options(p.pkts[0][1].options)
    assert not o.sack_perm and o.ts is None and o.wscale is None
    o2 = parse_tcp_options(p.pkts[1][1].options)
    assert not o2.sack_perm and o2.ts is None and o2.wscale is None and o2.mss == 1000
    for sf in (c.sf, s.sf):
        assert not sf.sack_ok and not sf.ts_ok and not sf.ws_ok
        assert sf.mss == 1000 and sf.snd_wscale == 0 and sf.rcv_wscale == 0
    up, _ = transfer(p, c, s, payload(200_000))
    assert up == payload(200_000)
    assert max(len(q.payload) for _, q in p.sent_by(A)) <= 1000
    assert max(q.window for _, q in p.sent_by(B)) <= 0xFFFF


def test_ipv6_transfer():
    p = Pair(a=A6, b=B6, cfg_a=SubflowConfig(mss=1440), cfg_b=SubflowConfig(mss=1440))
    c, s = p.connect()
    assert c.sf.mss == 1440 - 12
    up, down = transfer(p, c, s, payload(100_000, 1), payload(50_000, 2))
    assert up == payload(100_000, 1) and down == payload(50_000, 2)


def test_syn_retries_backoff_and_timeout():
    p = Pair()
    p.link.down = True
    calls = []

    class Hooks(PlainConn):
        def syn_options(self, sf):
            calls.append(sf.syn_retransmits)
            return b""

    conn = Hooks(p.ha)
    sf = Subflow((A, 5555), (B, 80), conn, p.net.timers, p.net.send, config=SubflowConfig(),
                 rng=random.Random(3))
    conn.sf = sf
    sf.syn_retries_max = 3
    sf.connect(0.0)
    p.net.run(100)
    syns = [t for t, q in p.sent_by(A)]
    assert calls == [0, 1, 2, 3]
    # RFC 6298 §5.5: 1 s initial RTO, doubled each time
    assert [round(b - a, 6) for a, b in zip(syns, syns[1:])] == [1.0, 2.0, 4.0]
    assert sf.state == sfm.CLOSED and conn.closed_reason == "timeout"


@pytest.mark.parametrize("ts", [False, True])
def test_lost_syn_then_established_with_rfc6298_3s_rto(ts):
    p = Pair(cfg_a=SubflowConfig(timestamps=ts))
    dropped = []
    p.link.set(drop=lambda pkt: not dropped and not dropped.append(1))
    c, s = p.connect()
    assert c.sf.syn_retransmits == 1
    if ts:   # the echoed timestamp says which SYN was answered: a valid sample
        assert c.sf.srtt == pytest.approx(0.02, abs=0.002)
    else:    # Karn: no sample from a retransmitted SYN, RFC 6298 §5.7: RTO 3 s
        assert c.sf.srtt is None and c.sf.rto == 3.0
    assert c.sf.cwnd == c.sf.mss                   # RFC 5681 §3.1 after a lost SYN


def test_connection_refused():
    p = Pair()
    c = p.ha.connect(A, (B, 81), 0.0)
    p.net.run(2)
    assert c.closed_reason == "refused" and c.sf.state == sfm.CLOSED
    assert p.hb.rsts_sent == 1


# ------------------------------------------------------------------------ RTT and RTO

def test_rfc6298_estimator_numbers():
    sf = Subflow((A, 1), (B, 2), None, TimerWheel(), lambda b: None,
                 config=SubflowConfig(min_rto=0.2, max_rto=120.0))
    opts = parse_tcp_options(b"")
    sf._rtt_sample(0.1, 0.0, opts)                  # first: SRTT=R, RTTVAR=R/2
    assert sf.srtt == pytest.approx(0.1) and sf.rttvar == pytest.approx(0.05)
    assert sf.rto == pytest.approx(0.3)             # 0.1 + 4*0.05
    sf._rtt_sample(0.3, 0.0, opts)                  # RTTVAR = 3/4*0.05 + 1/4*|0.1-0.3|
    assert sf.rttvar == pytest.approx(0.0875)
    assert sf.srtt == pytest.approx(0.125)          # 7/8*0.1 + 1/8*0.3
    assert sf.rto == pytest.approx(0.125 + 4 * 0.0875)
    for _ in range(200):
        sf._rtt_sample(0.001, 0.0, opts)
    assert sf.rto == pytest.approx(0.2)             # clamped to the minimum
    for _ in range(5):
        sf._rtt_sample(100.0, 0.0, opts)
    assert sf.rto == 120.0                          # and to the maximum
    assert sf.min_rtt == pytest.approx(0.001)


def test_rto_backoff_doubles_and_karn_keeps_it():
    p = Pair()
    c, s = p.connect()
    t0 = p.net.now
    p.link.down = True
    c.send(b"x" * 100, t0)
    p.net.run(t0 + 6.5)
    tx = [t for t, q in p.sent_by(A, data_only=True)]
    gaps = [round(b - a, 6) for a, b in zip(tx, tx[1:])]
    assert gaps[:4] == [0.2, 0.4, 0.8, 1.6], gaps   # RFC 6298 §5.5 from the 200 ms minimum
    assert c.sf.rto_count == len(tx) - 1 and c.sf.backoff == len(tx) - 1
    rto_backed = c.sf.rto
    p.link.down = False
    p.net.run_until(lambda: c.sf.snd_una == c.sf.snd_nxt, 60)
    # the acked segment was retransmitted: with timestamps the echo gives a valid sample
    assert c.sf.rto < rto_backed


def test_max_retries_times_out():
    p = Pair(cfg_a=SubflowConfig(max_retries=3))
    c, s = p.connect()
    p.link.down = True
    c.send(b"y" * 10, p.net.now)
    p.net.run(p.net.now + 30)
    assert c.closed_reason == "timeout" and c.sf.state == sfm.CLOSED


# --------------------------------------------------------------------------- transfers

@pytest.mark.parametrize("seed,loss,reorder", [(1, 0.0, 0.0), (2, 0.01, 0.0), (3, 0.03, 0.02),
                                                (4, 0.0, 0.1), (5, 0.05, 0.05)])
def test_bulk_both_ways_integrity(seed, loss, reorder):
    p = Pair(seed=seed, delay=0.005, rate=50e6, loss=loss, reorder=reorder)
    c, s = p.connect()
    up, down = payload(600_000, seed), payload(300_000, seed + 100)
    got_up, got_down = transfer(p, c, s, up, down)
    assert sha(got_up) == sha(up) and sha(got_down) == sha(down)
    if loss:
        assert c.sf.total_retrans > 0


@pytest.mark.parametrize("seed", [7, 8])
def test_bulk_newreno_integrity(seed):
    cfg = SubflowConfig(sack=False)
    p = Pair(seed=seed, cfg_a=cfg, cfg_b=cfg, delay=0.005, rate=50e6, loss=0.02, reorder=0.01)
    c, s = p.connect()
    assert not c.sf.sack_ok
    up = payload(500_000, seed)
    got, _ = transfer(p, c, s, up)
    assert got == up and c.sf.recoveries > 0


def test_large_chunks_and_many_small_chunks():
    p = Pair(delay=0.002, rate=100e6)
    c, s = p.connect()
    blob = payload(64 * 1024 * 3)
    for i in range(3):
        c.sf.send(blob[i * 65536:(i + 1) * 65536], ("chunk", i))
    for i in range(500):
        c.sf.send(bytes([i & 0xFF]) * 7, ("small", i))
    c.sf.push(p.net.now)
    got, _ = transfer(p, c, s, b"")
    assert got == blob + b"".join(bytes([i & 0xFF]) * 7 for i in range(500))
    assert all(len(q.payload) <= c.sf.mss for _, q in p.sent_by(A))


def _drop_data_once(pair: Pair, src: bytes, rel_seqs: set[int]):
    """Drop the first transmission of the data segments starting at these ssn values."""
    seen: set[int] = set()

    def drop(pkt: bytes) -> bool:
        q = parse_ip_packet(pkt)
        if q.src != src or not len(q.payload):
            return False
        conn = pair.ha.conns if src == pair.a else pair.hb.conns
        sf = next(iter(conn.values())).sf
        ssn = (q.seq - sf.iss - 1) & 0xFFFFFFFF
        if ssn in rel_seqs and ssn not in seen:
            seen.add(ssn)
            return True
        return False
    pair.link.set(drop=drop)
    return seen


def test_fast_retransmit_without_rto():
    p = Pair(delay=0.01, rate=20e6)
    c, s = p.connect()
    mss = c.sf.mss
    seen = _drop_data_once(p, A, {20 * mss})
    data = payload(400_000)
    got, _ = transfer(p, c, s, data)
    assert got == data and seen
    assert c.sf.rto_count == 0 and c.sf.recoveries == 1
    tx = [t for t, q in p.sent_by(A, data_only=True)
          if (q.seq - c.sf.iss - 1) & 0xFFFFFFFF == 20 * mss]
    assert len(tx) == 2 and tx[1] - tx[0] < 0.2   # well before the 200 ms RTO
    # PRR (RFC 6937): recovery kept sending new data besides the retransmission
    assert c.sf._prr_out > 2 * mss


@pytest.mark.parametrize("sack", [True, False])
def test_multiple_losses_in_one_window(sack):
    cfg = SubflowConfig(sack=sack)
    p = Pair(cfg_a=cfg, cfg_b=cfg, delay=0.02, rate=20e6)
    c, s = p.connect()
    mss = c.sf.mss
    # grow the window first, then lose three segments of one flight
    warm = payload(300_000, 1)
    c.send(warm, p.net.now)
    p.net.run_until(lambda: c.sf.snd_una == c.sf.snd_nxt, 60)
    base = c.sf.snd_nxt - 1
    seen = _drop_data_once(p, A, {base + 5 * mss, base + 9 * mss, base + 14 * mss})
    data = payload(200_000, 2)
    got, _ = transfer(p, c, s, data)
    assert s.rbuf == bytearray() and len(seen) == 3
    assert got == warm + data
    assert c.sf.rto_count == 0                     # SACK (6675) / NewReno (6582) recover
    if sack:
        assert c.sf.recoveries == 1
    t_rec = [t for t, q in p.sent_by(A, data_only=True)
             if (q.seq - c.sf.iss - 1) & 0xFFFFFFFF in seen]
    assert len(t_rec) == 6


def test_sack_blocks_generated_for_holes():
    p = Pair(delay=0.01)
    c, s = p.connect()
    mss = c.sf.mss
    _drop_data_once(p, A, {2 * mss})
    c.send(payload(8 * mss), p.net.now)
    p.net.run(p.net.now + 0.015)
    acks = [q for _, q in p.sent_by(B) if parse_tcp_options(q.options).sack]
    assert acks, "out-of-order data must be answered with SACK blocks"
    blk = parse_tcp_options(acks[0].options).sack[0]
    rel = ((blk[0] - c.sf.iss - 1) & 0xFFFFFFFF, (blk[1] - c.sf.iss - 1) & 0xFFFFFFFF)
    assert rel == (3 * mss, 4 * mss)
    last = parse_tcp_options(acks[-1].options).sack[0]
    assert (last[1] - c.sf.iss - 1) & 0xFFFFFFFF == 8 * mss


# ------------------------------------------------------------------------ flow control

def test_zero_window_probes_then_reopen():
    p = Pair(cfg_b=SubflowConfig(rcv_buf=32768), delay=0.01)
    c, s = p.connect()
    data = payload(200_000)
    c.send(data, p.net.now)
    p.net.run(p.net.now + 20)           # the server's application does not read
    assert c.sf.snd_wnd == 0 and c.sf.probes >= 3
    assert len(s.rbuf) == 32768
    probes = [t for t, q in p.sent_by(A)
              if not len(q.payload) and (q.seq - c.sf.iss) & 0xFFFFFFFF == c.sf.snd_una - 1]
    gaps = [b - a for a, b in zip(probes, probes[1:])]
    assert all(b >= a * 1.9 for a, b in zip(gaps, gaps[1:]))  # exponential backoff
    got = bytearray(s.recv(1 << 30, p.net.now))
    c.close(p.net.now)
    assert p.net.run_until(lambda: got.extend(s.recv(1 << 30, p.net.now)) or s.eof, 120)
    assert bytes(got) == data


def test_window_scaling_large_window():
    p = Pair(cfg_a=SubflowConfig(rcv_buf=8 << 20), cfg_b=SubflowConfig(rcv_buf=8 << 20),
             delay=0.05, rate=1e9, queue=10 << 20)
    c, s = p.connect()
    data = payload(6_000_000)
    got, _ = transfer(p, c, s, data)
    assert got == data
    assert c.sf.snd_wnd > 0xFFFF and max(c.sf.flight_size, c.sf.cwnd) > 0xFFFF


# ------------------------------------------------------------------- FIN, RST, TIME-WAIT

def test_orderly_close_and_time_wait():
    p = Pair(cfg_a=SubflowConfig(time_wait=2.0))
    c, s = p.connect()
    c.close(p.net.now)
    p.net.run_until(lambda: s.eof, 5)
    assert s.sf.state == sfm.CLOSE_WAIT
    p.net.run(p.net.now + 0.1)
    assert c.sf.state == sfm.FIN_WAIT2
    s.close(p.net.now)
    p.net.run(p.net.now + 0.1)
    assert c.sf.state == sfm.TIME_WAIT and s.sf.state == sfm.CLOSED
    assert s.closed_reason == "closed"
    t = p.net.now
    p.net.run(t + 1.5)
    assert c.sf.state == sfm.TIME_WAIT
    p.net.run(t + 2.5)
    assert c.sf.state == sfm.CLOSED and c.closed_reason == "closed"


def test_simultaneous_close_goes_through_closing():
    p = Pair(delay=0.01)
    c, s = p.connect()
    states = []
    c.close(p.net.now)
    s.close(p.net.now)
    p.net.run(p.net.now + 0.015)
    states.append(c.sf.state)
    p.net.run(p.net.now + 5)
    assert states == [sfm.CLOSING]
    assert c.closed_reason == "closed" and s.closed_reason == "closed"


def test_retransmitted_fin_in_time_wait_is_acked():
    p = Pair(delay=0.01)
    c, s = p.connect()
    c.close(p.net.now)
    p.net.run_until(lambda: s.eof, 5)
    # lose the client's final ACK of the server's FIN: the server retransmits its FIN
    p.link.set(drop=lambda pkt: parse_ip_packet(pkt).src == A and not dropped
               and not dropped.append(1))
    dropped: list[int] = []
    s.close(p.net.now)
    p.net.run(p.net.now + 3)
    assert dropped and s.closed_reason == "closed"
    assert c.sf.state in (sfm.TIME_WAIT, sfm.CLOSED)


def test_abort_sends_rst_and_peer_resets():
    p = Pair()
    c, s = p.connect()
    c.abort(p.net.now)
    p.net.run(p.net.now + 1)
    assert c.closed_reason == "aborted" and s.closed_reason == "reset"
    assert s.sf.state == sfm.CLOSED


def _inject(p: Pair, host: PlainHost, src, dst, sport, dport, seq, ack, flags, data=b""):
    host.input(build_tcp_packet(src, dst, sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                                flags, 1000, b"", data), p.net.now)


def test_rfc5961_rst_and_syn_checks():
    p = Pair()
    c, s = p.connect()
    sf = s.sf
    n0 = len(p.sent_by(B))
    # RST in window but not exact: challenge ACK, connection lives
    _inject(p, p.hb, A, B, c.sf.sport, 80, sf.irs + sf.rcv_nxt + 100, 0, sfm.RST)
    assert sf.state == sfm.ESTABLISHED
    p.net.run(p.net.now + 0.001)
    assert len(p.sent_by(B)) == n0 + 1
    # RST far outside the window: silently dropped
    _inject(p, p.hb, A, B, c.sf.sport, 80, sf.irs + sf.rcv_nxt + (1 << 30), 0, sfm.RST)
    assert sf.state == sfm.ESTABLISHED
    # SYN on an established connection: challenge ACK (RFC 5961 §4), no reset
    _inject(p, p.hb, A, B, c.sf.sport, 80, 12345, 0, sfm.SYN)
    assert sf.state == sfm.ESTABLISHED
    # ACK of data never sent: dropped with an ACK, no state change
    _inject(p, p.hb, A, B, c.sf.sport, 80, sf.irs + sf.rcv_nxt, sf.iss + 5000, sfm.ACK, b"zz")
    assert sf.rcv_nxt == 1 and sf.state == sfm.ESTABLISHED
    # the exact RST closes
    _inject(p, p.hb, A, B, c.sf.sport, 80, sf.irs + sf.rcv_nxt, 0, sfm.RST)
    assert sf.state == sfm.CLOSED and s.closed_reason == "reset"


def test_malformed_options_are_counted_not_fatal():
    p = Pair()
    c, s = p.connect()
    sf = s.sf
    bad = bytes([5, 3, 0, 0])   # SACK option with an impossible length
    s_before = sf.dropped
    p.hb.input(build_tcp_packet(A, B, c.sf.sport, 80, (sf.irs + sf.rcv_nxt) & 0xFFFFFFFF,
                                (sf.iss + 1) & 0xFFFFFFFF, sfm.ACK, 1000, bad, b"x"), p.net.now)
    assert sf.dropped == s_before + 1 and sf.rcv_nxt == 1
    up, _ = transfer(p, c, s, b"still fine")
    assert up == b"still fine"


# -------------------------------------------------------------------------- delayed ACK

def test_delayed_ack_every_two_segments_and_timer():
    p = Pair(delay=0.01, rate=100e6)
    c, s = p.connect()
    n0 = len(p.sent_by(B))
    t0 = p.net.now
    c.send(b"q" * 100, t0)
    p.net.run(t0 + 0.2)
    acks = p.sent_by(B)[n0:]
    assert len(acks) == 1
    assert acks[0][0] - t0 == pytest.approx(0.01 + 0.04, abs=0.002)   # 40 ms delayed ACK
    n1 = len(p.sent_by(B))
    data = payload(300_000)
    c.send(data, p.net.now)
    p.net.run_until(lambda: c.sf.snd_una == c.sf.snd_nxt, 30)
    segs = len(p.sent_by(A, data_only=True)) - 1
    acks = len(p.sent_by(B)) - n1
    assert segs / 2 - 3 <= acks <= segs * 0.7, (segs, acks)


# ----------------------------------------------------------------------------- owner API

def test_owner_hooks_see_chunks_meta_and_ssn():
    p = Pair(delay=0.005)
    seen_tx: list[tuple] = []
    seen_rx: list[tuple] = []

    class Owner(PlainConn):
        def ack_options(self, sf, meta, length, flags):
            if length:
                seen_tx.append((meta, sf.tx_ssn, sf.tx_chunk_ssn, length, sf.tx_meta))
            return b"\x01\x01\x01\x01"   # 4 bytes of the owner's options (NOPs)

        def on_segment(self, sf, seg):
            if len(seg.payload):
                seen_rx.append(seg.ssn)

    cfg = SubflowConfig(opt_reserve=4)
    own = Owner(p.ha)
    p.ha.config = cfg
    sf = Subflow((A, 4242), (B, 80), own, p.net.timers, p.net.send, config=cfg,
                 rng=random.Random(5))
    own.sf = sf
    p.ha.conns[(A, 4242, B, 80)] = own
    sf.connect(p.net.now)
    p.net.run_until(lambda: own.established, 5)
    assert sf.mss == 1460 - 12 - 4
    sf.send(b"a" * 3000, "m1")
    sf.send(b"b" * 10, "m2", p.net.now)
    p.net.run(p.net.now + 1)
    assert [x[0] for x in seen_tx] == ["m1", None, None, "m2"]
    assert [x[4] for x in seen_tx] == ["m1", "m1", "m1", "m2"]
    assert [x[1] for x in seen_tx] == [0, 1444, 2888, 3000]
    assert [x[2] for x in seen_tx] == [0, 0, 0, 3000]
    assert p.accepted and bytes(p.accepted[0].rbuf) == b"a" * 3000 + b"b" * 10
    assert sf.pending_chunks() == []            # everything acked
    assert not seen_rx                          # the server sent no data


def test_pending_chunks_for_reinjection():
    p = Pair(delay=0.01)
    c, s = p.connect()
    p.link.down = True
    c.sf.send(b"x" * 5000, "one", p.net.now)
    c.sf.send(b"y" * 10, "two", p.net.now)
    c.sf.send(b"z" * 10, "three")
    pend = c.sf.pending_chunks()
    assert [m for m, _ in pend] == ["one", "two", "three"]
    assert bytes(pend[0][1]) == b"x" * 5000 and bytes(pend[2][1]) == b"z" * 10


def test_cwnd_limited_and_tcp_info_fields():
    p = Pair(delay=0.02, rate=10e6)
    c, s = p.connect()
    c.send(payload(500_000), p.net.now)
    p.net.run(p.net.now + 0.1)
    assert c.sf.cwnd_limited
    ti = c.sf.tcp_info()
    assert ti["tcpi_unacked"] > 0 and ti["tcpi_snd_cwnd"] >= 10
    assert ti["tcpi_rtt"] > 0 and ti["tcpi_rto"] >= 200_000
    assert ti["tcpi_bytes_sent"] > 0 and ti["tcpi_notsent_bytes"] > 0


def test_sequence_wraparound():
    cfg_a = SubflowConfig(isn=0xFFFFFFFF - 5000)
    cfg_b = SubflowConfig(isn=0xFFFFFF00)
    p = Pair(cfg_a=cfg_a, cfg_b=cfg_b, loss=0.02, rate=50e6)
    c, s = p.connect()
    up, down = payload(200_000, 3), payload(100_000, 4)
    got_up, got_down = transfer(p, c, s, up, down)
    assert got_up == up and got_down == down


def test_sacked_scoreboard_survives_random_loss_pattern():
    """A property-style check: pipe accounting never goes negative under heavy loss."""
    p = Pair(seed=11, delay=0.01, rate=30e6, loss=0.08, reorder=0.03)
    c, s = p.connect()
    bad = []

    def check(pkt, now):
        sf = c.sf
        if sf.state != sfm.CLOSED and (sf.sacked_out < 0 or sf.lost_out < 0
                                       or sf.retrans_out < 0 or sf.in_flight < 0):
            bad.append((sf.sacked_out, sf.lost_out, sf.retrans_out))
    p.net.taps.append(check)
    data = payload(400_000, 9)
    got, _ = transfer(p, c, s, data)
    assert got == data and not bad


def test_header_struct_sanity():
    # the packets the subflow builds carry correct checksums
    from mptcp_bpf.wire.packet import tcp_checksum_ok
    p = Pair()
    c, s = p.connect()
    c.send(b"hello", p.net.now)
    p.net.run(p.net.now + 1)
    assert all(tcp_checksum_ok(q) for _, q in p.pkts)


def test_link_down_mid_transfer_recovers_with_rto():
    p = Pair(delay=0.01, rate=20e6)
    c, s = p.connect()
    t0 = p.net.now
    p.net.call_at(t0 + 0.3, lambda now: setattr(p.link, "down", True))
    p.net.call_at(t0 + 3.3, lambda now: setattr(p.link, "down", False))
    data = payload(1_500_000)
    got, _ = transfer(p, c, s, data)
    assert got == data and c.sf.rto_count >= 2


def test_owner_supplied_window_bounds_the_flight():
    p = Pair(delay=0.01, rate=100e6)
    c, s = p.connect()
    s.sf.rcv_window_fn = lambda: 10_000        # e.g. a connection-level receive window
    s.sf.send_ack(p.net.now)
    p.net.run(p.net.now + 0.1)                 # the sender learns the window
    assert c.sf.snd_wnd <= 10_000
    worst = []
    p.net.taps.append(lambda pkt, t: worst.append(c.sf.flight_size))
    data = payload(200_000)
    got, _ = transfer(p, c, s, data)
    assert got == data and max(worst) <= 10_000


def test_on_data_is_in_order_and_on_acked_reports_progress():
    p = Pair(seed=4, delay=0.005, rate=50e6, loss=0.03, reorder=0.05)
    c, s = p.connect()
    chunks: list[tuple[int, int]] = []
    acked: list[int] = []
    orig_on_data = s.on_data

    def on_data(sf, ssn, data):
        assert isinstance(data, (bytes, memoryview))
        chunks.append((ssn, len(data)))
        orig_on_data(sf, ssn, data)
    s.on_data = on_data
    s.sf.hooks = s                      # re-read the hooks (on_data replaced above)
    c.on_acked = lambda sf, n: acked.append(n)
    c.sf.hooks = c
    data = payload(300_000)
    got, _ = transfer(p, c, s, data)
    assert got == data
    assert p.net.run_until(lambda: c.sf.snd_una == c.sf.snd_nxt, 30)
    pos = 0
    for ssn, n in chunks:
        assert ssn == pos
        pos += n
    assert pos == len(data) and sum(acked) == len(data)


def test_can_carry_data_and_send_after_close():
    p = Pair()
    c, s = p.connect()
    assert c.sf.can_carry_data() and c.sf.can_send()
    c.close(p.net.now)
    assert not c.sf.can_carry_data()
    with pytest.raises(BrokenPipeError):
        c.sf.send(b"late")


def test_tcp_info_packs_into_linux_layout():
    from mptcp_bpf import sockopt as so
    p = Pair(delay=0.01)
    c, s = p.connect()
    c.send(payload(50_000), p.net.now)
    p.net.run(p.net.now + 0.05)
    ti = c.sf.tcp_info(p.net.now)
    assert set(k[5:] for k in ti) <= set(so.TcpInfo.__dataclass_fields__)
    info = so.TcpInfo(**{k[5:]: v for k, v in ti.items()})
    raw = info.pack(so.TCP_INFO_SIZE)
    assert len(raw) == so.TCP_INFO_SIZE
    assert ti["tcpi_snd_ssthresh"] == 0x7FFFFFFF          # still in slow start: "infinite"
    assert ti["tcpi_last_data_sent"] < 100 and ti["tcpi_state"] == so.TCP_STATES["ESTABLISHED"]


@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 10_000), sack=st.booleans(), ts=st.booleans(),
       loss=st.sampled_from([0.0, 0.02, 0.08]), reorder=st.sampled_from([0.0, 0.05, 0.2]),
       rcv_buf=st.sampled_from([16384, 65536, 1 << 20]), up=st.integers(1, 120_000),
       down=st.integers(0, 60_000))
def test_random_paths_deliver_and_close(seed, sack, ts, loss, reorder, rcv_buf, up, down):
    cfg = SubflowConfig(sack=sack, timestamps=ts, rcv_buf=rcv_buf)
    p = Pair(seed=seed, cfg_a=cfg, cfg_b=cfg, delay=0.005, rate=20e6, loss=loss,
             reorder=reorder)
    c, s = p.connect()
    a, b = payload(up, seed), payload(down, seed + 1)
    got_up, got_down = transfer(p, c, s, a, b)
    assert got_up == a and got_down == b
    assert p.net.run_until(lambda: c.sf.state == sfm.CLOSED and s.sf.state == sfm.CLOSED, 600)
    assert c.closed_reason == "closed" and s.closed_reason == "closed"


def test_receiver_reneging_on_sacked_data_is_survived():
    p = Pair(delay=0.01, rate=20e6)
    c, s = p.connect()
    mss = c.sf.mss
    _drop_data_once(p, A, {3 * mss})
    data = payload(12 * mss)
    c.send(data, p.net.now)
    p.net.run(p.net.now + 0.015)                  # segments 4.. arrived out of order
    p.net.run(p.net.now + 0.012)                  # their SACKs reached the sender
    assert c.sf.sacked_out > 0
    rs = s.sf                                     # the receiver throws its queue away
    rs._ooo.clear()
    rs._ooo_bytes = 0
    rs._sack_blocks = []
    got, _ = transfer(p, c, s, b"", timeout=60)
    assert got == data
    assert c.sf.rto_count >= 2


def test_duplicate_data_is_reported_with_dsack():
    p = Pair()
    c, s = p.connect()
    c.send(b"0123456789", p.net.now)
    p.net.run(p.net.now + 1)
    sf = s.sf
    n0 = len(p.sent_by(B))
    _inject(p, p.hb, A, B, c.sf.sport, 80, sf.irs + 1, sf.iss + 1, sfm.ACK, b"0123456789")
    p.net.run(p.net.now + 0.001)
    ack = p.sent_by(B)[n0][1]
    blocks = parse_tcp_options(ack.options).sack
    assert blocks and blocks[0] == ((sf.irs + 1) & 0xFFFFFFFF, (sf.irs + 11) & 0xFFFFFFFF)
    assert ack.ack == (sf.irs + 11) & 0xFFFFFFFF          # the DSACK block lies below the ACK
    p.net.run(p.net.now + 1)
    assert c.sf.sacked_out == 0 and c.sf.state == sfm.ESTABLISHED   # the sender ignores it


def test_karn_without_timestamps_keeps_backed_off_rto():
    cfg = SubflowConfig(timestamps=False)
    p = Pair(cfg_a=cfg, cfg_b=cfg, delay=0.01)
    c, s = p.connect()
    srtt0 = c.sf.srtt
    t0 = p.net.now
    p.link.down = True
    c.send(b"k" * 100, t0)
    p.net.run(t0 + 0.7)                    # RTOs at +0.2 and +0.6
    assert c.sf.rto_count == 2
    p.link.down = False
    assert p.net.run_until(lambda: c.sf.snd_una == c.sf.snd_nxt, 10)
    assert c.sf.srtt == srtt0              # no sample from a retransmitted segment
    assert c.sf.rto == 0.2 * 2 ** c.sf.rto_count   # Karn: stays backed off...
    c.send(b"m" * 100, p.net.now)
    assert p.net.run_until(lambda: c.sf.snd_una == c.sf.snd_nxt, 10)
    assert c.sf.rto == pytest.approx(0.2)  # ...until a valid sample


def test_fin_wait2_timeout_is_opt_in():
    p = Pair(cfg_a=SubflowConfig(fin_wait2_timeout=5.0))
    c, s = p.connect()
    c.close(p.net.now)
    p.net.run(p.net.now + 1)
    assert c.sf.state == sfm.FIN_WAIT2 and s.sf.state == sfm.CLOSE_WAIT
    p.net.run(p.net.now + 3)
    assert c.sf.state == sfm.FIN_WAIT2     # the server may still send data meanwhile
    s.send(b"late data", p.net.now)
    p.net.run(p.net.now + 0.5)
    assert bytes(c.rbuf) == b"late data"
    p.net.run(p.net.now + 2)
    assert c.sf.state == sfm.CLOSED and c.closed_reason == "timeout"
    assert s.sf.state == sfm.CLOSE_WAIT    # without the option: waits for the FIN for ever


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.integers(0, 60), st.integers(1, 12)), min_size=1, max_size=12))
def test_sack_range_merge_matches_a_set_model(blocks):
    sf = Subflow((A, 1), (B, 2), None, TimerWheel(), lambda b: None)
    covered: set[int] = set()
    for left, ln in blocks:
        new = sf._sack_insert(left, left + ln)
        want = set(range(left, left + ln)) - covered
        got = set()
        for a, b in new:
            assert a < b
            got |= set(range(a, b))
        assert got == want
        covered |= want
        rs = sf._sack_ranges
        assert all(rs[i][1] < rs[i + 1][0] for i in range(len(rs) - 1))  # sorted, disjoint
        assert set().union(*(set(range(a, b)) for a, b in rs)) == covered


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(st.integers(0, 0x1FF), st.integers(-70000, 70000),
                          st.integers(-70000, 70000), st.integers(0, 0xFFFF),
                          st.integers(0, 10).map(lambda n: 4 * n).flatmap(
                              lambda n: st.binary(min_size=n, max_size=n)),
                          st.binary(max_size=64)), min_size=1, max_size=25),
       st.sampled_from(["established", "syn_sent", "syn_recv", "fin_wait"]))
def test_random_segments_never_crash(segs, where):
    """Malformed or hostile segments (random flags, sequence and ack numbers around the
    live ones, garbage options) are counted or answered, never an exception."""
    p = Pair(delay=0.001)
    if where == "syn_sent":
        p.link.down = True
        conn = p.ha.connect(A, (B, 80), 0.0)
        target, host, peer_port = conn.sf, p.ha, 80
    else:
        c, s = p.connect()
        c.send(b"d" * 5000, p.net.now)
        p.net.run(p.net.now + 0.0005)
        if where == "fin_wait":
            c.close(p.net.now)
        target, host, peer_port = c.sf, p.ha, 80
        if where == "syn_recv":
            syn = build_tcp_packet(A, B, 5555, 80, 1000, 0, sfm.SYN, 1000,
                                   bytes.fromhex("020405b4"), b"")
            p.hb.input(syn, p.net.now)
            target, host = p.hb.conns[(B, 80, A, 5555)].sf, p.hb
            peer_port = 5555
    src, dst = (B, A) if host is p.ha else (A, B)
    for flags, dseq, dack, win, opts, data in segs:
        seq = (target.irs + target.rcv_nxt + dseq) & 0xFFFFFFFF
        ack = (target.iss + target.snd_una + dack) & 0xFFFFFFFF
        sport, dport = (peer_port, target.sport)
        pkt = build_tcp_packet(src, dst, sport, dport, seq, ack, flags, win, opts, data)
        host.input(pkt, p.net.now)
        p.net.run(p.net.now + 0.01)
    p.net.run(p.net.now + 5)
    assert target.state in sfm.STATE_NUMBERS


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.integers(0, 0x1FF), st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFF),
       st.integers(0, 10).map(lambda n: 4 * n).flatmap(
           lambda n: st.binary(min_size=n, max_size=n)), st.binary(max_size=32))
def test_random_syns_to_a_listener_never_crash(flags, seq, win, opts, data):
    p = Pair()
    pkt = build_tcp_packet(A, B, 6000, 80, seq, 0, flags | sfm.SYN, win, opts, data)
    p.hb.input(pkt, 0.0)
    p.net.run(30)
    assert p.hb.dropped + p.hb.rsts_sent + len(p.accepted) >= 1


def _opt_fields(o):
    return (o.mss, o.wscale, o.sack_perm, o.sack, o.ts, o.mptcp)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.one_of(st.binary(max_size=44),
                 st.tuples(st.binary(min_size=8, max_size=8), st.integers(0, 40),
                           st.binary(max_size=30)).map(
                     lambda t: b"\x01\x01\x08\x0a" + t[0] + bytes([30, t[1]]) + t[2])))
def test_fast_option_parser_matches_the_generic_one(raw):
    from mptcp_bpf.tcp.common import _fast_opts
    from mptcp_bpf.wire.errors import WireError
    try:
        want = _opt_fields(parse_tcp_options(raw))
    except WireError:
        with pytest.raises(WireError):
            _fast_opts(raw)
        return
    assert _opt_fields(_fast_opts(raw)) == want


def test_rto_during_fast_recovery_keeps_recovery_ssthresh():
    """A lost fast retransmission ends in an RTO while in recovery: like Linux
    (tcp_enter_loss) ssthresh stays what recovery set; recomputed from PRR's shrunken
    window it was ~2 MSS and the subflow crawled back linearly for seconds."""
    p = Pair(delay=0.02, rate=20e6)
    c, s = p.connect()
    mss = c.sf.mss
    warm = payload(300_000, 1)
    c.send(warm, p.net.now)
    p.net.run_until(lambda: c.sf.snd_una == c.sf.snd_nxt, 60)
    target = c.sf.snd_nxt - 1 + 5 * mss
    drops = {"n": 0, "until": 0.0}

    def drop(pkt: bytes) -> bool:   # the segment, its fast retransmission, then 0.5 s of all
        q = parse_ip_packet(pkt)
        if q.src != A:
            return False
        if p.net.now < drops["until"]:
            return True
        if len(q.payload) and (q.seq - c.sf.iss - 1) & 0xFFFFFFFF == target and drops["n"] < 2:
            drops["n"] += 1
            if drops["n"] == 2:
                drops["until"] = p.net.now + 0.5   # nothing delivered: only the RTO helps
            return True
        return False
    p.link.set(drop=drop)
    seen = []
    orig = c.sf.cc.on_rto

    def on_rto(sf, now, first=True):
        before = sf.ssthresh
        rec = sf.in_recovery
        orig(sf, now, first)
        seen.append((rec, before, sf.ssthresh))
    c.sf.cc.on_rto = on_rto
    data = payload(300_000, 2)
    got, _ = transfer(p, c, s, data)
    assert got == warm + data and drops["n"] == 2
    assert seen and seen[0][0], seen             # the RTO fired during fast recovery
    assert seen[0][2] == seen[0][1] > 4 * mss    # ssthresh kept from recovery entry

