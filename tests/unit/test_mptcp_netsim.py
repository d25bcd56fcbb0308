"""Our MPTCP host against itself over the in-memory network (tcp.netsim), v0 and v1."""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import random

import pytest

from mptcp_bpf.mptcp import api
from mptcp_bpf.mptcp.host import Host, HostConfig
from mptcp_bpf.tcp.netsim import Net
from mptcp_bpf.wire.mptcp import MpJoinAck, MpJoinSyn, emit, parse_mptcp
from mptcp_bpf.wire.packet import build_tcp_packet, parse_ip_packet
from mptcp_bpf.wire.tcp import ACK, SYN, RST, parse_tcp_options


def ip(s: str) -> bytes:
    return ipaddress.ip_address(s).packed


class Pair:
    """Client host A and server host B, `paths` addresses each, every pair linked."""

    def __init__(self, version: int = 1, csum: tuple[bool, bool] = (False, False), paths: int = 2,
                 loss: float = 0.0, reorder: float = 0.0, seed: int = 1, v6: bool = False,
                 server_opts: dict | None = None, client_cfg: dict | None = None,
                 server_cfg: dict | None = None, rate: float = 100e6) -> None:
        self.net = Net(seed=seed)
        self.a_addrs = [f"10.0.{i}.1" for i in range(1, paths + 1)]
        self.b_addrs = [f"10.0.{i}.2" for i in range(1, paths + 1)]
        if v6:
            self.a_addrs.append("fd00::1")
            self.b_addrs.append("fd00::2")
        self.links = {}
        for i, a in enumerate(self.a_addrs):
            for j, b in enumerate(self.b_addrs):
                if ipaddress.ip_address(a).version != ipaddress.ip_address(b).version:
                    continue
                self.links[(a, b)] = self.net.link(ip(a), ip(b), delay=0.005 * (1 + i + j),
                                                   rate=rate, loss=loss, reorder=reorder)
        tcp = {"time_wait": 0.2}
        self.a = Host(HostConfig(version=version, checksum=csum[0], tcp=tcp, **(client_cfg or {})),
                      self.net.timers, self.net.send, random.Random(seed))
        self.b = Host(HostConfig(version=version, checksum=csum[1], tcp=tcp, **(server_cfg or {})),
                      self.net.timers, self.net.send, random.Random(seed + 100))
        for h, addrs in ((self.a, self.a_addrs), (self.b, self.b_addrs)):
            for x in addrs:
                h.add_address(x)
                self.net.attach(ip(x), lambda pkt, now, h=h: h.input(pkt, now))
        self.events: list[tuple[str, dict]] = []
        self.a.on_event = lambda e: self.events.append(("A", e))
        self.b.on_event = lambda e: self.events.append(("B", e))
        self.lst = self.b.listen(None, 80, **(server_opts or {}))
        self.server = None

    def connect(self, **opts):
        self.client = self.a.connect((self.b_addrs[0], 80), now=self.net.now, **opts)
        ok = self.net.run_until(self._accepted, 10)
        assert ok, "no connection accepted"
        return self.client, self.server

    def _accepted(self) -> bool:
        if self.server is None:
            self.server = self.lst.accept()
        return self.server is not None and self.client.connected

    def run(self, seconds: float) -> None:
        self.net.run(self.net.now + seconds)

    def transfer(self, c2s: bytes, s2c: bytes = b"", timeout: float = 120.0,
                 hook=None) -> tuple[bytes, bytes]:
        """Send both ways, shut down after, read until both ends see EOF."""
        c, s = self.client, self.server
        st = {"c": 0, "s": 0}
        got_s, got_c = bytearray(), bytearray()

        def side(conn, data, key, got) -> None:
            if conn.connected and st[key] < len(data) and conn.error is None:
                st[key] += conn.send(data[st[key]:st[key] + 65536])
            if st[key] >= len(data) and not conn._shut_wr and conn.error is None:
                conn.shutdown()
            try:
                while True:
                    b = conn.recv(1 << 20)
                    if not b:
                        break
                    got.extend(b)
            except BlockingIOError:
                pass

        def pump() -> bool:
            side(c, c2s, "c", got_c)
            side(s, s2c, "s", got_s)
            if hook is not None:
                hook(len(got_s))
            return (c.eof and s.eof) or c.error is not None or s.error is not None

        assert self.net.run_until(pump, timeout), (c.info(), s.info(), self.a.stats, self.b.stats)
        return bytes(got_s), bytes(got_c)


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def used_subflows(conn) -> int:
    return sum(1 for s in conn.info()["subflows"] + conn.past_subflows if s["bytes_sent"])


# ------------------------------------------------------------------ handshakes

@pytest.mark.parametrize("version", [0, 1])
@pytest.mark.parametrize("csum", [(False, False), (True, False), (False, True), (True, True)])
def test_handshake(version, csum):
    p = Pair(version=version, csum=csum)
    c, s = p.connect()
    p.run(1.0)
    assert c.version == s.version == version
    assert not c.fallback and not s.fallback
    assert c.remote_key == s.local_key and s.remote_key == c.local_key
    assert c.remote_token == s.token and s.remote_token == c.token
    assert c.csum == s.csum == (csum[0] or csum[1])
    assert c.fully_established and s.fully_established
    assert len(c.subflows) == 4 and len(s.subflows) == 4      # fullmesh 2x2
    kinds = [e["type"] for _, e in p.events]
    assert "created" in kinds and "established" in kinds and "sf_established" in kinds
    assert "announced" in kinds


def test_server_answers_in_client_version():
    p = Pair(version=1, client_cfg={}, server_cfg={})
    p.a.config.version = 0
    c, s = p.connect()
    assert c.version == 0 and s.version == 0 and not s.fallback


# ------------------------------------------------------------------ data

@pytest.mark.parametrize("version", [0, 1])
@pytest.mark.parametrize("csum", [False, True])
def test_transfer_loss_reorder(version, csum):
    p = Pair(version=version, csum=(csum, False), loss=0.01, reorder=0.02, seed=3)
    p.connect()
    rng = random.Random(7)
    up, down = rng.randbytes(1_500_000), rng.randbytes(700_001)
    got_s, got_c = p.transfer(up, down)
    assert sha(got_s) == sha(up) and sha(got_c) == sha(down)
    assert used_subflows(p.client) >= 2 and used_subflows(p.server) >= 2
    assert p.a.stats["rx_csum_fail"] == 0 and p.b.stats["rx_csum_fail"] == 0


def test_data_fin_both_ways_and_release():
    p = Pair()
    c, s = p.connect()
    got_s, got_c = p.transfer(b"hello", b"world")
    assert got_s == b"hello" and got_c == b"world"
    assert c.recv(10) == b"" and s.recv(10) == b""
    p.run(5.0)
    assert c.closed and s.closed and c.error is None and s.error is None
    assert not p.a.conns and not p.b.conns and not p.a._sfs and not p.b._sfs


def test_half_close_keeps_receiving():
    p = Pair()
    c, s = p.connect()
    c.shutdown()
    p.run(1.0)
    assert s.eof and s.state == api.CLOSE_WAIT and c.state == api.FIN_WAIT
    data = random.Random(1).randbytes(200_000)
    got_s, got_c = p.transfer(b"", data)
    assert got_c == data


def test_send_buffer_is_bounded():
    p = Pair(client_cfg={"sndbuf": 100_000})
    c, s = p.connect()
    assert c.send(b"x" * 300_000) == 100_000
    assert c.send(b"y") == 0 and not c.writable()


def test_receive_buffer_bounds_memory():
    p = Pair(server_cfg={"rcvbuf": 64_000})
    c, s = p.connect()
    sent = 0
    data = b"z" * 1_000_000
    for _ in range(200):
        sent += c.send(data[sent:])
        p.run(0.05)
    assert s._rcv_queued + s._ooo_bytes <= 64_000
    assert c.snd_una - 1 <= 64_000  # nothing unread beyond the receive buffer was acked
    got = bytearray()
    while True:
        try:
            b = s.recv(1 << 20)
        except BlockingIOError:
            b = b""
        got += b
        sent += c.send(data[sent:])
        p.run(0.05)
        if len(got) == len(data):
            break
    assert bytes(got) == data


# ------------------------------------------------------------------ joins and limits

def test_join_limit_32():
    p = Pair()
    c, s = p.connect()
    p.run(1.0)
    opened = 0
    for _ in range(40):
        if c.open_subflow(p.a_addrs[0], p.b_addrs[0], 80) is not None:
            opened += 1
    p.run(2.0)
    assert len(c.subflows) <= api.MAX_SUBFLOWS
    assert len(s.subflows) <= api.MAX_SUBFLOWS
    assert opened == api.MAX_SUBFLOWS - 4


def _forge(p: Pair, token: int, hmac_ok: bool) -> list:
    """Send an MP_JOIN SYN from a fresh port, then a third ACK; return what B answered."""
    seen: list = []
    src, dst = ip(p.a_addrs[1]), ip(p.b_addrs[0])
    sport = 40000
    p.net.detach(src)
    p.net.attach(src, lambda pkt, now: seen.append(parse_ip_packet(pkt)))
    syn_opts = emit(MpJoinSyn(token, 1234, 5, False))
    p.net.send(build_tcp_packet(src, dst, sport, 80, 1000, 0, SYN, 65535, syn_opts, b""))
    p.run(0.5)
    synack = [x for x in seen if x.flags & SYN]
    if synack:
        sa = synack[0]
        hm = b"\x00" * 20
        if hmac_ok:
            raise AssertionError("only forged HMACs here")
        p.net.send(build_tcp_packet(src, dst, sport, 80, 1001, (sa.seq + 1) & 0xFFFFFFFF, ACK,
                                    65535, emit(MpJoinAck(hm)), b""))
        p.run(0.5)
    return seen


def test_join_unknown_token_refused():
    p = Pair()
    c, s = p.connect()
    p.run(1.0)
    n = len(s.subflows)
    seen = _forge(p, (s.token + 1) & 0xFFFFFFFF, False)
    assert seen and seen[0].flags & RST and not seen[0].flags & SYN
    assert len(s.subflows) == n and not p.b._pending
    assert p.b.stats["join_syn_unknown_token"] == 1


def test_join_forged_hmac_refused():
    p = Pair()
    c, s = p.connect()
    p.run(1.0)
    n = len(s.subflows)
    seen = _forge(p, s.token, False)
    assert any(x.flags & SYN for x in seen)           # SYN/ACK with MP_JOIN
    assert seen[-1].flags & RST                        # then RST after the bad HMAC
    assert len(s.subflows) == n and not p.b._pending
    assert p.b.stats["join_ack_hmac_fail"] == 1
    assert all(k[1] != 40000 for k in p.b._sfs)


# ------------------------------------------------------------------ signals

def _tap(host) -> list:
    """Record the packets `host` sends (still delivering them)."""
    seen = []
    out = host.output

    def tap(pkt):
        seen.append(bytes(pkt))
        out(pkt)
    host.output = tap
    return seen


def _rst_subs(pkts: list) -> list:
    """MPTCP suboptions on the RSTs among `pkts` (one list per RST)."""
    from mptcp_bpf.mptcp.options import mptcp_options
    out = []
    for pkt in pkts:
        q = parse_ip_packet(pkt)
        if q.flags & RST:
            out.append([parse_mptcp(o, syn=False, ack=True) for o in mptcp_options(bytes(q.options))])
    return out


@pytest.mark.parametrize("side", ["remover", "receiver"])
def test_remove_addr_closes_subflows_without_mp_tcprst(side):
    """8684 §3.4.2 REMOVE_ADDR: the subflows of the address close without MP_TCPRST (the
    kernel's selftests expect MPRstTx = MPRstRx = 0 for removals)."""
    from mptcp_bpf.wire.mptcp import MpTcpRst
    p = Pair(paths=2)
    c, s = p.connect()
    p.run(1.0)
    seen_b, seen_a = _tap(p.b), _tap(p.a)
    gone = p.b.addresses[1]
    s.remove_addr([gone.id])
    p.run(2.0)
    assert all(str(sf.remote_addr) != str(gone.address) for sf in c.subflows)
    rsts = _rst_subs(seen_b if side == "remover" else seen_a)
    assert not [r for r in rsts if any(isinstance(o, MpTcpRst) for o in r)], rsts
    assert p.a.stats["rm_addr_rx"] == 1


def test_join_synack_backup_flag_is_our_own():
    """8684 §3.2: B in the MP_JOIN SYN/ACK is the sender's own wish (the backup flag of
    its address), not an echo of the SYN's."""
    from mptcp_bpf.wire.mptcp import MpJoinSynAck
    p = Pair(paths=2)
    p.b.addresses[1].backup = True
    seen = _tap(p.b)
    c, s = p.connect()
    p.run(1.0)
    flags = {}
    for pkt in seen:
        q = parse_ip_packet(pkt)
        if q.flags & SYN and q.flags & ACK:
            for sub in _mptcp_subs(pkt):
                if isinstance(sub, MpJoinSynAck):
                    flags[str(ipaddress.ip_address(q.src))] = sub.backup
    assert flags == {p.b_addrs[0]: False, p.b_addrs[1]: True}, flags
    # the client's view: the subflows to the backup address are backup for it
    assert all(sf.peer_backup == (str(sf.remote_addr) == p.b_addrs[1]) for sf in c.subflows)


def test_add_addr_remove_addr():
    p = Pair(paths=2)
    c, s = p.connect()
    p.run(1.0)
    assert {str(r.address) for r in c.remote_addresses} == set(p.b_addrs)
    assert p.b.stats["add_addr_echo_rx"] >= 1          # v1 echo stopped retransmission
    assert not s._add_addr_pending
    gone = p.b.addresses[1]
    s.remove_addr([gone.id])
    p.run(1.0)
    assert all(str(sf.remote_addr) != str(gone.address) for sf in c.subflows)
    assert all(r.id != gone.id for r in c.remote_addresses)
    data = random.Random(2).randbytes(300_000)
    got_s, _ = p.transfer(data)
    assert got_s == data


def test_add_addr_one_in_flight_until_echo():
    """SB6: the next ADD_ADDR waits for the previous one's echo (kernel pm->addr_signal)."""
    p = Pair(paths=3)
    c, s = p.connect()
    p.run(1.0)
    assert {str(r.address) for r in c.remote_addresses} == set(p.b_addrs)
    assert p.b.stats["add_addr_tx"] == 2          # no retransmission was needed
    assert p.b.stats["add_addr_echo_rx"] == 2
    assert not s._add_addr_pending and not s._add_addr_queue
    # two more at once: the second is queued until the first is echoed
    s.announce(20, ipaddress.ip_address("10.0.1.2"), 8080)
    s.announce(21, ipaddress.ip_address("10.0.2.2"), 8080)
    assert list(s._add_addr_pending) == [20]
    assert [q[0] for q in s._add_addr_queue] == [21]
    p.run(1.0)
    assert not s._add_addr_pending and not s._add_addr_queue
    assert {r.id for r in c.remote_addresses} >= {20, 21}
    assert p.b.stats["add_addr_tx"] == 4


def test_add_addr_queue_moves_on_after_give_up():
    """SB6: an ADD_ADDR never echoed holds the queue only until its timer gives up."""
    p = Pair(paths=1)
    c, s = p.connect()
    p.run(0.5)
    key = s.remote_key
    s.remote_key ^= 1  # wrong HMAC: the peer drops it and never echoes
    s.announce(9, ipaddress.ip_address("10.9.9.9"))
    s.remote_key = key
    s.announce(10, ipaddress.ip_address("10.0.1.2"), 8080)
    assert [q[0] for q in s._add_addr_queue] == [10]
    p.run(40.0)   # 1 + 2 + 4 + 8 + 16 s of retransmissions, then the next one
    assert not s._add_addr_queue and not s._add_addr_pending
    assert any(r.id == 10 for r in c.remote_addresses)
    assert all(r.id != 9 for r in c.remote_addresses)


def test_add_addr_queue_dropped_by_remove_addr():
    p = Pair(paths=1)
    c, s = p.connect()
    p.run(0.5)
    s.remote_key ^= 1
    s.announce(9, ipaddress.ip_address("10.9.9.9"))
    s.announce(10, ipaddress.ip_address("10.0.1.2"), 8080)
    s.remove_addr([10])
    assert not s._add_addr_queue
    s.remove_addr([9])
    assert not s._add_addr_pending


def test_join_limit_rejects_at_third_ack():
    """HostConfig.join_limit (kernel `limits subflow`): joins over it get their SYN/ACK and
    are reset at the third ACK with MP_TCPRST reason 3; the data still flows."""
    p = Pair(paths=2, server_cfg={"join_limit": 1})
    c, s = p.connect()
    p.run(2.0)
    assert p.b.stats["join_rejected"] >= 1
    assert sum(1 for sf in s.subflows if sf.join) == 1
    data = random.Random(3).randbytes(200_000)
    got_s, _ = p.transfer(data)
    assert got_s == data


def test_deny_join_id0_sets_flag_c():
    """HostConfig.deny_join_id0: our SYN/ACK says C (8684 §3.1); the client does not join
    our initial address+port, other addresses still work."""
    p = Pair(paths=2, server_cfg={"deny_join_id0": True})
    c, s = p.connect()
    p.run(2.0)
    assert c.no_initial_join
    assert p.b.stats.get("join_denied_id0", 0) == 0
    assert all(not (sf.join and str(sf.remote_addr) == p.b_addrs[0]) for sf in c.subflows)
    assert any(sf.join for sf in c.subflows)


def test_checksum_connections_advertise_room_for_the_infinite_mapping():
    """With DSS checksums we advertise MSS - 28: a kernel sender that fell back after
    MP_FAIL (8684 §3.7) reserves no option space but adds the 28-byte infinite mapping."""
    p = Pair(paths=1, csum=(True, True))
    c, s = p.connect()
    assert c.subflows[0].tcp.adv_mss == 1460 - 28
    assert s.subflows[0].tcp.adv_mss == 1460 - 28
    q = Pair(paths=1)
    c2, s2 = q.connect()
    assert c2.subflows[0].tcp.adv_mss == 1460 and s2.subflows[0].tcp.adv_mss == 1460


def test_add_addr_bad_hmac_dropped():
    p = Pair(paths=1)
    c, s = p.connect()
    p.run(0.5)
    s.remote_key ^= 1  # the HMAC is keyed with both keys: now it is wrong
    s.announce(9, ipaddress.ip_address("10.9.9.9"))
    p.run(0.5)
    assert p.a.stats["add_addr_hmac_fail"] >= 1
    assert all(r.id != 9 for r in c.remote_addresses)


def test_mp_prio_backup():
    p = Pair()
    c, s = p.connect()
    p.run(1.0)
    victim = s.subflows[1]
    s.set_prio(victim, True)
    p.run(0.5)
    peer = [sf for sf in c.subflows if sf.remote == victim.local and sf.local == victim.remote][0]
    assert peer.peer_backup and not peer.backup   # the peer's wish; ours unchanged
    assert p.a.stats["mp_prio_rx"] == 1


def test_mp_prio_ours_after_peers():
    """Both ends set the same subflow to backup ("mpc switch to backup both sides"): the
    peer's MP_PRIO must not stop ours (it set only peer_backup), and each side counts one
    received, as the kernel does."""
    p = Pair(paths=1)
    c, s = p.connect()
    p.run(1.0)
    s.set_prio(s.subflows[0], True)
    p.run(0.5)
    assert c.subflows[0].peer_backup and not c.subflows[0].backup
    c.set_prio(c.subflows[0], True)
    p.run(0.5)
    assert p.a.stats["mp_prio_rx"] == 1 and p.b.stats["mp_prio_rx"] == 1
    assert s.subflows[0].peer_backup and s.subflows[0].backup


def test_remove_addr_counts_each_id():
    """One REMOVE_ADDR with several ids (a flush, 8684 §3.4.2): RmAddr / RmAddrTx count
    each id, as the kernel's MIB does (its selftests expect 3 for a 3-address flush)."""
    p = Pair(paths=3)
    c, s = p.connect()
    p.run(1.0)
    gone = [a.id for a in p.b.addresses[1:]]
    s.remove_addr(gone)
    p.run(2.0)
    assert p.b.stats["rm_addr_tx"] == len(gone) == 2
    assert p.a.stats["rm_addr_rx"] == 2
    assert {str(sf.remote_addr) for sf in c.subflows} == {p.b_addrs[0]}


def test_fastclose():
    from mptcp_bpf.wire.mptcp import MpFastclose, MpTcpRst
    p = Pair()
    c, s = p.connect()
    p.run(1.0)
    seen = _tap(p.a)
    c.abort()
    p.run(1.0)
    rsts = _rst_subs(seen)
    # as the kernel: MP_TCPRST next to MP_FASTCLOSE on every RST (its MPRstRx counts it)
    assert rsts and all({type(o) for o in r} == {MpFastclose, MpTcpRst} for r in rsts), rsts
    assert s.error == errno.ECONNRESET and s.closed
    assert p.b.stats["fastclose_rx"] >= 1
    assert not p.b.conns and not p.b._sfs
    with pytest.raises(BrokenPipeError):
        c.send(b"x")


# ------------------------------------------------------------------ fallback

def test_fallback_server_without_mptcp():
    p = Pair(server_opts={"mptcp": False})
    c, s = p.connect()
    assert c.fallback and s.fallback
    data = random.Random(3).randbytes(400_000)
    got_s, got_c = p.transfer(data, b"back")
    assert got_s == data and got_c == b"back"


def test_fallback_client_without_mptcp():
    p = Pair()
    c, s = p.connect(mptcp=False)
    assert c.fallback and s.fallback
    got_s, got_c = p.transfer(b"plain" * 1000, b"tcp")
    assert got_s == b"plain" * 1000 and got_c == b"tcp"


def test_fallback_after_syn_retries():
    """MP_CAPABLE SYNs dropped by a middlebox: the client retries without it (8684 §3.7)."""
    p = Pair(client_cfg={"syn_retries": 1})

    def drop_mpc_syn(pkt: bytes) -> bool:
        q = parse_ip_packet(pkt)
        return bool(q.flags & SYN) and b"\x1e" in q.options and len(parse_tcp_options(q.options).mptcp) > 0

    for link in p.links.values():
        link.set(drop=drop_mpc_syn)
    c, s = p.connect()
    assert c.fallback and s.fallback
    got_s, _ = p.transfer(b"through")
    assert got_s == b"through"


# ------------------------------------------------------------------ failures

def test_reinjection_when_path_dies():
    p = Pair(seed=5)
    c, s = p.connect()
    p.run(1.0)
    data = random.Random(9).randbytes(3_000_000)
    killed = {}

    def hook(n: int) -> None:
        if n > 500_000 and not killed:
            for (a, b), link in p.links.items():
                if a == p.a_addrs[1] or b == p.b_addrs[1]:
                    link.down = True
            killed["at"] = n

    got_s, _ = p.transfer(data, hook=hook, timeout=300)
    assert killed and sha(got_s) == sha(data)


def test_close_subflow_reinjects():
    p = Pair()
    c, s = p.connect()
    p.run(1.0)
    data = random.Random(4).randbytes(1_000_000)
    done = {}

    def hook(n: int) -> None:
        if n > 100_000 and not done:
            done["id"] = c.subflows[1].id
            assert c.close_subflow(done["id"])

    got_s, _ = p.transfer(data, hook=hook)
    p.run(1.0)   # the closed subflow may still sit in TIME_WAIT when the transfer ends
    assert got_s == data and c.subflow_by_id(done["id"]) is None


def test_dss_checksum_failure_resets_subflow():
    p = Pair(csum=(True, True), seed=2)
    c, s = p.connect()
    p.run(1.0)
    state = {"n": 0}
    orig = p.net.send

    def corrupt(pkt):
        q = parse_ip_packet(pkt)
        if len(q.payload) > 100 and q.sport != 80 and state["n"] < 1 and q.src == ip(p.a_addrs[1]):
            state["n"] += 1
            pl = bytearray(q.payload)
            pl[10] ^= 0xFF
            pkt = build_tcp_packet(q.src, q.dst, q.sport, q.dport, q.seq, q.ack, q.flags,
                                   q.window, q.options, bytes(pl))
        orig(pkt)

    p.a.output = corrupt
    data = random.Random(6).randbytes(1_000_000)
    got_s, _ = p.transfer(data)
    assert state["n"] == 1
    assert sha(got_s) == sha(data)
    assert p.b.stats["rx_csum_fail"] == 1


def test_malformed_input_is_counted_not_fatal():
    p = Pair()
    c, s = p.connect()
    rng = random.Random(11)
    sf = s.subflows[0]
    good = build_tcp_packet(ip(p.a_addrs[0]), ip(p.b_addrs[0]), sf.remote[1], 80, 0, 0, ACK,
                            100, b"", b"x")
    for _ in range(3000):
        kind = rng.randrange(3)
        if kind == 0:
            pkt = rng.randbytes(rng.randrange(0, 80))
        elif kind == 1:
            b = bytearray(good)
            for _ in range(3):
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            pkt = bytes(b)
        else:
            opt = bytes([30, rng.randrange(2, 40)]) + rng.randbytes(rng.randrange(0, 20))
            opt = (opt + b"\x01" * 3)[: (len(opt) + 3) // 4 * 4]
            pkt = build_tcp_packet(ip(p.a_addrs[0]), ip(p.b_addrs[0]), rng.randrange(1, 65535), 80,
                                   rng.getrandbits(32), rng.getrandbits(32),
                                   rng.choice([ACK, SYN, ACK | 0x01, RST]), 100, opt[:40], b"")
        p.b.input(pkt, p.net.now)
    data = b"still alive" * 100
    got_s, _ = p.transfer(data)
    assert got_s == data


def test_ipv6_subflow_in_ipv4_connection():
    p = Pair(paths=1, v6=True)
    c, s = p.connect()
    p.run(1.0)
    fams = {sf.family for sf in c.subflows}
    assert fams == {4, 6}
    data = random.Random(8).randbytes(500_000)
    got_s, _ = p.transfer(data)
    assert got_s == data


def test_info_shape():
    p = Pair()
    c, s = p.connect()
    p.run(1.0)
    i = c.info()
    for k in ("token", "local_key", "remote_key", "version", "csum", "subflows", "path_manager",
              "scheduler", "cc", "state"):
        assert k in i
    sf = i["subflows"][0]
    for k in ("id", "local", "remote", "backup", "state", "rtt", "cwnd", "bytes_sent", "mapping"):
        assert k in sf


def test_dss_parse_matches_wire():
    """The connection's fast DSS builder agrees with the generic codec."""
    from mptcp_bpf.mptcp.options import dss_bytes
    for args in [(5, None), (5, 1 << 40, 7, 1000, None, False), (5, 99, 1, 1, 0xBEEF, True),
                 (None, 99, 1, 10, None, False)]:
        raw = dss_bytes(*args)
        assert len(raw) % 4 == 0
        opt = raw.rstrip(b"\x01") if raw[-2:] == b"\x01\x01" else raw
        d = parse_mptcp(opt)
        assert d.data_ack == args[0]
        if len(args) > 2:
            assert (d.dsn, d.ssn, d.data_len, d.checksum, d.data_fin) == args[1:]


class _Meta:
    __slots__ = ("payload_sum",)

    def __init__(self, s: int) -> None:
        self.payload_sum = s


def _xdp_meta(payload_sum: int, length: int) -> bytes:
    """struct mpb_meta as an XDP port hands it to the host (raw bytes)."""
    from mptcp_bpf.datapath import structs as S
    m = S.MpbMeta(magic=S.MPB_META_MAGIC, flags=S.MPB_F_OWNED | S.MPB_F_SUM_VALID,
                  csum=payload_sum, payload_len=length)
    return bytes(m)


@pytest.mark.parametrize("form", ["object", "xdp"])
@pytest.mark.parametrize("lie", [False, True])
def test_fast_path_payload_sums(lie, form):
    """The receiver uses the per-segment payload sums a fast path hands in `meta`
    (an object with payload_sum, or the XDP port's raw struct mpb_meta bytes)."""
    from mptcp_bpf.wire.checksum import csum_partial
    p = Pair(csum=(True, True), paths=1)
    c, s = p.connect()
    state = {"lied": 0}

    def with_meta(pkt, now):
        q = parse_ip_packet(pkt)
        ps = csum_partial(q.payload)
        if lie and len(q.payload) and not state["lied"]:
            state["lied"] = 1
            ps ^= 0x0101
        p.b.input(pkt, now, _Meta(ps) if form == "object" else _xdp_meta(ps, len(q.payload)))

    p.net.attach(ip(p.b_addrs[0]), with_meta)
    data = random.Random(12).randbytes(200_000)
    if lie:
        c.send(data)
        p.run(3.0)
        assert p.b.stats["rx_csum_fail"] == 1   # the sum from meta was used
    else:
        got_s, _ = p.transfer(data)
        assert got_s == data and p.b.stats["rx_csum_fail"] == 0


@pytest.mark.parametrize("enabled,ask,mptcp", [(0, None, False), (1, None, True), (2, None, False),
                                               (2, True, True), (1, False, False)])
def test_enabled_setting(enabled, ask, mptcp):
    p = Pair(client_cfg={"enabled": enabled})
    opts = {} if ask is None else {"mptcp": ask}
    c, s = p.connect(**opts)
    assert c.fallback == (not mptcp) and s.fallback == (not mptcp)


def _mptcp_subs(pkt: bytes) -> list:
    q = parse_ip_packet(pkt)
    out = []
    for o in parse_tcp_options(q.options).mptcp:
        out.append(parse_mptcp(o, syn=bool(q.flags & SYN)))
    return out


def test_v1_data_on_third_ack_and_fourth_ack_rule():
    """8684 §3.1: the first data carries MP_CAPABLE with the data-level length; the
    client repeats MP_CAPABLE on its ACKs until the server's DSS arrives."""
    from mptcp_bpf.wire.mptcp import Dss, MpCapable
    p = Pair(paths=1)
    seen: list = []
    p.net.taps.append(lambda pkt, now: seen.append((now, pkt)))
    c = p.a.connect((p.b_addrs[0], 80), now=p.net.now)
    c.send(b"early data")
    p.net.run_until(lambda: p.lst.accept() is not None or False, 5)
    p.run(1.0)
    client_src = ip(p.a_addrs[0])
    out = [(parse_ip_packet(x), _mptcp_subs(x)) for _, x in seen if parse_ip_packet(x).src == client_src]
    data = [(q, subs) for q, subs in out if len(q.payload)]
    q0, subs0 = data[0]
    mpc = [x for x in subs0 if isinstance(x, MpCapable)]
    assert mpc and mpc[0].data_len == len(b"early data") and mpc[0].receiver_key is not None
    third = [subs for q, subs in out if not q.flags & SYN and not len(q.payload)][0]
    assert any(isinstance(x, MpCapable) and x.receiver_key is not None for x in third)
    # after the server's DSS the client uses DSS only
    assert not c.mpc_ack_pending and c.fully_established
    n = len(seen)
    c.send(b"later data")
    p.run(1.0)
    late = [_mptcp_subs(x) for _, x in seen[n:] if parse_ip_packet(x).src == client_src]
    assert late and all(isinstance(x, Dss) for subs in late for x in subs)


def test_half_open_connections_free_the_backlog():
    """SYNs whose handshake never completes time out and do not fill the listener."""
    p = Pair(paths=1)
    p.lst.backlog = 3
    src, dst = ip(p.a_addrs[0]), ip(p.b_addrs[0])
    p.net.detach(src)                      # SYN/ACKs go nowhere
    from mptcp_bpf.wire.mptcp import MpCapable
    for port in range(50000, 50003):
        p.net.send(build_tcp_packet(src, dst, port, 80, 7, 0, SYN, 65535,
                                    emit(MpCapable(1, 0x01)), b""))
    p.run(1.0)
    assert p.lst.pending == 3
    p.run(120.0)
    assert p.lst.pending == 0 and not p.b.conns
    p.net.attach(src, lambda pkt, now: p.a.input(pkt, now))
    c, s = p.connect()
    assert c.connected and s is not None


def test_fallback_when_a_middlebox_strips_options_after_the_handshake():
    """8684 §3.7: MP_CAPABLE survives the SYNs, then every MPTCP option is removed: both
    ends notice the missing DSS and carry on as plain TCP."""
    p = Pair(paths=1, client_cfg={"path_manager": "default"})

    def strip(out):
        def send(pkt):
            q = parse_ip_packet(pkt)
            if not q.flags & SYN and q.options:
                o = parse_tcp_options(q.options)
                if o.mptcp:
                    keep = b"" if o.ts is None else bytes((1, 1, 8, 10)) + o.ts[0].to_bytes(4, "big") \
                        + o.ts[1].to_bytes(4, "big")
                    pkt = build_tcp_packet(q.src, q.dst, q.sport, q.dport, q.seq, q.ack, q.flags,
                                           q.window, keep, bytes(q.payload))
            out(pkt)
        return send

    p.a.output = strip(p.net.send)
    p.b.output = strip(p.net.send)
    c, s = p.connect()
    data = random.Random(13).randbytes(300_000)
    got_s, got_c = p.transfer(data, b"reply")
    assert got_s == data and got_c == b"reply"
    assert c.fallback and s.fallback


# ------------------------------------------------------------------ redundant scheduling

def _two_rates(sched: str, pm: str, size: int) -> tuple[float, object, list[int]]:
    """Client -> server over path 1 (20 Mbit/s) and path 2 (2 Mbit/s, 10x slower); returns
    (virtual seconds for the transfer, client connection, samples of the slow subflow's
    unsent bytes)."""
    net = Net(seed=5)
    cfg = dict(path_manager=pm, scheduler=sched, tcp={"time_wait": 0.2})
    a = Host(HostConfig(**cfg), net.timers, net.send, random.Random(5))
    b = Host(HostConfig(**cfg), net.timers, net.send, random.Random(6))
    for h, addrs in ((a, ["10.0.1.1", "10.0.2.1"]), (b, ["10.0.1.2", "10.0.2.2"])):
        for x in addrs:
            h.add_address(x)
            net.attach(ip(x), lambda pkt, now, h=h: h.input(pkt, now))
    net.link(ip("10.0.1.1"), ip("10.0.1.2"), delay=0.01, rate=20e6)
    net.link(ip("10.0.2.1"), ip("10.0.2.2"), delay=0.01, rate=2e6)
    lst = b.listen(None, 80)
    c = a.connect(("10.0.1.2", 80), ("10.0.1.1", 0), now=net.now)
    assert net.run_until(lambda: bool(lst.queue), 10)
    s = lst.accept()
    if pm == "fullmesh":
        assert net.run_until(lambda: sum(1 for x in c.subflows if x.established) >= 2, 10)
    data = random.Random(7).randbytes(size)
    t0, sent, got, unsent = net.now, 0, bytearray(), []
    while net.now < t0 + 60 and len(got) < size:
        if sent < size:
            sent += c.send(data[sent:sent + 65536], net.now)
        try:
            while chunk := s.recv(1 << 20, net.now):
                got += chunk
        except BlockingIOError:
            pass
        unsent += [x.unsent for x in c.subflows if x.established and str(x.local_addr) == "10.0.2.1"]
        net.run(net.now + 0.01)
    assert bytes(got) == data, (len(got), c.info())
    return net.now - t0, c, unsent


def test_redundant_slow_path_does_not_hold_the_transfer():
    """8684 leaves scheduling open; REFERENCE.md §3: a redundant copy is forgotten once the
    data is acknowledged at connection level, so a 10x slower path neither slows the
    transfer nor piles up stale data in its queue."""
    size = 3_000_000
    single, _, _ = _two_rates("default", "default", size)
    red, c, unsent = _two_rates("redundant", "fullmesh", size)
    assert red <= single * 1.3 + 0.2, (red, single)
    slow = [x for x in c.subflows if str(x.local_addr) == "10.0.2.1" and x.bytes_sent]
    assert slow, c.info()
    assert 0 < slow[0].bytes_sent < size // 2          # it sent copies, but not everything
    assert max(unsent) <= 256 << 10, max(unsent)       # no pile of queued copies
    assert c.host.stats["redundant_copy_dropped"] > 0


def test_closed_listener_keeps_taking_joins_for_its_connections():
    """ncat-style servers close the listening socket after accept(); the connection's
    MP_JOINs (8684 §3.2) still arrive on that port, so the fast path's claim of it
    (on_listen) is dropped only when the listener's last connection is gone."""
    p = Pair(paths=2)
    calls = []
    p.b.on_listen = lambda *a: calls.append(a)
    c, s = p.connect()
    p.lst.close()
    assert calls == []
    p.run(2.0)
    assert sum(1 for x in s.subflows if x.established) == 4      # joins still accepted
    c2 = p.a.connect((p.b_addrs[0], 80), now=p.net.now)          # a new connection is refused
    p.run(2.0)
    assert c2.error == errno.ECONNREFUSED and p.b.stats["rx_syn_no_listener"] >= 1
    got_s, got_c = p.transfer(b"x" * 100_000, b"y" * 1000)
    assert got_s == b"x" * 100_000 and got_c == b"y" * 1000
    p.run(5.0)
    assert s.closed and calls == [(0, None, 80, False)], (calls, s.info())


@pytest.mark.parametrize("towards", ["server", "client"])
@pytest.mark.parametrize("version", [0, 1])
def test_mp_fail_single_subflow_falls_back_with_infinite_mapping(version, towards):
    """8684 §3.7: a DSS checksum failure on the only subflow -> MP_FAIL; the sender
    answers with an infinite mapping (on a data segment, where the kernel looks for it)
    and both fall back to TCP. Both streams go on intact except the corrupted byte,
    delivered as received (nothing can re-send it: TCP acked it), which is also what the
    kernel's selftests expect."""
    p = Pair(version=version, csum=(True, True), paths=1)
    p.connect()
    state = {"n": 0}
    rx = p.b if towards == "server" else p.a
    tx = p.a if towards == "server" else p.b
    addr = p.b_addrs[0] if towards == "server" else p.a_addrs[0]

    def corrupt(pkt, now):
        q = parse_ip_packet(pkt)
        if len(q.payload) > 100:
            state["n"] += 1
            if state["n"] == 30:   # the middle of the transfer; TCP's checksum is fixed up
                b = bytearray(pkt)
                b[len(pkt) - len(q.payload) + 10] ^= 0xFF
                pkt = bytes(b)
        rx.input(pkt, now)

    p.net.attach(ip(addr), corrupt)
    big, small = random.Random(3).randbytes(400_000), random.Random(4).randbytes(50_000)
    up, down = (big, small) if towards == "server" else (small, big)
    got_s, got_c = p.transfer(up, down, timeout=60)
    got, want = (got_s, up) if towards == "server" else (got_c, down)
    assert (got_c if towards == "server" else got_s) == (down if towards == "server" else up)
    assert len(got) == len(want)
    diffs = [i for i in range(len(want)) if got[i] != want[i]]
    assert len(diffs) == 1 and got[diffs[0]] == want[diffs[0]] ^ 0xFF
    assert rx.stats["rx_csum_fail"] == 1 and rx.stats["mp_fail_tx"] == 1
    assert tx.stats["mp_fail_rx"] == 1 and tx.stats["infinite_map_tx"] == 1
    assert rx.stats["rx_infinite_map"] == 1
    assert p.client.fallback and p.server.fallback


class _Sum:
    """Fast-path-like metadata: the payload's ones'-complement sum (Host.fast_sum)."""

    def __init__(self, s: int) -> None:
        self.payload_sum = s


def _batched_transfer(batch: bool, sums: int | None = None,
                      **impair: float) -> tuple[bool, int, dict]:
    """1.5 MB client -> server; the server's packets are handed over every 2 ms, as one
    input_batch (or one by one). sums: give each data packet its payload sum as metadata,
    plus `sums` (0: right, else wrong). Returns (intact, packets the server sent, stats)."""
    from mptcp_bpf.wire.checksum import csum_add, csum_partial
    p = Pair(paths=1, csum=(True, True), **impair)
    p.connect()
    q: list = []
    sent = _tap(p.b)

    def collect(pkt, now):
        meta = None
        if sums is not None:
            pl = parse_ip_packet(pkt).payload
            if len(pl):
                meta = _Sum(csum_add(csum_partial(pl), sums) if sums else csum_partial(pl))
        q.append((bytes(pkt), meta))

    def tick(now):
        items, q[:] = list(q), []
        if batch:
            p.b.input_batch(items, now)
        else:
            for pkt, meta in items:
                p.b.input(pkt, now, meta)
        p.net.call_at(now + 0.002, tick)

    p.net.attach(ip(p.b_addrs[0]), collect)
    p.net.call_at(p.net.now + 0.002, tick)
    data = random.Random(8).randbytes(1_500_000)
    n0 = len(sent)
    got_s, _ = p.transfer(data)
    return got_s == data, len(sent) - n0, dict(p.b.stats)


def test_input_batch_acks_once_per_batch():
    """Host.input_batch: same stream, fewer ACKs (one per subflow and batch); garbage in
    a batch is counted and skipped."""
    ok1, acks1, _ = _batched_transfer(False)
    ok2, acks2, _ = _batched_transfer(True)
    assert ok1 and ok2
    assert acks2 < acks1, (acks1, acks2)
    h = Host()
    h.input_batch([b"\x45garbage", (b"", None), b"\x60" * 3], 1.0)
    assert h.stats["rx_malformed_packet"] == 3


def test_input_batch_coalesces_in_order_runs():
    """Runs of in-order segments of a batch go in merged (wire.gro): the stream stays
    intact with DSS checksums on (summed over the merged payload)."""
    ok, _, stats = _batched_transfer(True)
    assert ok and stats["rx_coalesced"] > 0, stats
    # with per-packet payload sums (as the fast path gives), merged runs add them up
    ok, _, stats = _batched_transfer(True, sums=0)
    assert ok and stats["rx_coalesced"] > 0 and not stats.get("rx_csum_fail"), stats
    ok, _, stats = _batched_transfer(True, sums=1)   # wrong sums: the DSS check uses them
    assert stats.get("rx_csum_fail", 0) >= 1, stats
    # loss and reordering: merged runs land in the out-of-order queue and holes fill
    ok, _, stats = _batched_transfer(True, sums=0, loss=0.02, reorder=0.02, seed=5)
    assert ok and stats["rx_coalesced"] > 0 and not stats.get("rx_csum_fail"), stats
