"""Sender behaviour that pooled capacity on shaped paths depends on (issue 5): HyStart++
in slow start, a potentially-failed subflow coming back, full-size segments with DSS
checksums, and a blocking connect() that wakes on establishment."""

from __future__ import annotations

import random

from cc_fake import MSS, Sf
from test_mptcp_netsim import Pair, sha

from mptcp_bpf.tcp.congestion import INFINITE_SSTHRESH, CongestionControl


def _slow_start(base_rtt: float, bdp: int, rounds: int) -> tuple[Sf, int | None]:
    """Reno slow start over a bottleneck: a round's segments see the queue its flight
    built (the flight beyond `bdp`). Returns the subflow and the cwnd when CSS began."""
    cc = CongestionControl()
    sf = Sf()
    cc.init(sf)
    rate = bdp / base_rtt  # bytes per second
    css_at = None
    for _ in range(rounds):
        if sf.ssthresh < INFINITE_SSTHRESH:
            break
        flight = sf.cwnd
        sf.snd_nxt = sf.snd_una + flight
        rtt = base_rtt + max(0, flight - bdp) / rate
        for _ in range(flight // (2 * MSS)):   # one ACK per two segments
            sf.snd_una += 2 * MSS
            cc.on_ack(sf, 2 * MSS, rtt, 0.0)
            if css_at is None and cc.hystart.css_base is not None:
                css_at = sf.cwnd
    return sf, css_at


def test_hystart_leaves_slow_start_when_the_queue_builds():
    # 10 Mbit/s, 50 ms: BDP 62.5 KB. Plain slow start doubles until the first loss;
    # HyStart++ (RFC 9406) slows down (CSS) once the round's min RTT rose by >= 6.25 ms
    # and ends slow start after 5 CSS rounds
    sf, css_at = _slow_start(0.05, 62_500, 40)
    assert css_at is not None and 62_500 <= css_at <= 4 * 62_500
    assert sf.ssthresh < INFINITE_SSTHRESH and sf.cwnd < 4 * css_at


def test_hystart_keeps_slow_start_without_delay_increase():
    sf, css_at = _slow_start(0.05, 10**9, 12)   # no queue: the RTT never grows
    assert css_at is None
    assert sf.ssthresh == INFINITE_SSTHRESH and sf.cwnd > 1000 * MSS


def test_hystart_can_be_turned_off():
    cc = CongestionControl({"hystart": False})
    assert cc.hystart is None


def test_potentially_failed_subflow_is_used_again_after_it_recovers():
    """A path that is down for a while: its subflow's RTO marks it potentially failed and
    its data is re-injected; once its TCP gets an ACK again it must carry data again
    (it used to wait for a data ACK that could never come and stayed idle for good)."""
    p = Pair(seed=3, rate=8e6)
    c, s = p.connect()
    p.run(1.0)
    data = random.Random(2).randbytes(4_000_000)
    state: dict = {}

    def path2(down: bool) -> None:
        for (a, b), link in p.links.items():
            if a == p.a_addrs[1] or b == p.b_addrs[1]:
                link.down = down

    def hook(n: int) -> None:
        if n > 300_000 and "down" not in state:
            state["down"] = p.net.now
            path2(True)
            p.net.call_at(p.net.now + 0.8, lambda now: path2(False))
        sf = c.subflows[1]
        if "down" in state and sf.pf:
            state["pf"] = True
        if state.get("pf") and not sf.pf and "back" not in state:
            state["back"] = sf.tcp.bytes_sent

    got, _ = p.transfer(data, hook=hook, timeout=300)
    assert sha(got) == sha(data)
    assert state.get("pf") and "back" in state, state
    assert c.subflows[1].tcp.bytes_sent - state["back"] > 300_000   # carried data again
    assert p.a.stats.get("pf_recovered", 0) >= 1


def test_checksum_connection_sends_full_size_segments():
    """We advertise MSS - 28 with DSS checksums (room for a kernel's infinite mapping),
    but our own segments are bounded by the peer's MSS, not by what we advertise."""
    p = Pair(paths=1, csum=(True, False))
    p.b.config.tcp = {"mss": 1460}  # the server advertises a full MSS, as a kernel does
    c, s = p.connect()
    tcp = c.subflows[0].tcp
    assert c.csum and tcp.adv_mss == 1460 - 28
    assert tcp.mss == 1460 - 12 - 28   # timestamps + DSS room only


def test_client_connection_reports_established_to_its_socket():
    """on_state(ESTABLISHED) reaches the socket layer: a blocking connect() waited for
    its 1 s poll instead, a second lost before every transfer."""
    p = Pair(paths=1)
    states: list = []
    orig = p.a.connect

    def connect(*a, **kw):
        conn = orig(*a, **kw)
        conn.on_state = states.append
        return conn
    p.a.connect = connect
    p.connect()
    assert "ESTABLISHED" in states


class _FakeFastPath:
    def __init__(self) -> None:
        self.listeners: set = set()
        self.subflows: set = set()

    def add_listener(self, fam, ip, port):
        self.listeners.add((fam, ip, port))

    def remove_listener(self, fam, ip, port):
        self.listeners.discard((fam, ip, port))

    def add_subflow(self, fam, lip, lport, rip, rport, gid, token):
        self.subflows.add((lip, lport, rip, rport))

    def remove_subflow(self, fam, lip, lport, rip, rport):
        self.subflows.discard((lip, lport, rip, rport))

    def release(self, dev):
        pass


def test_stack_close_removes_its_fast_path_entries():
    """A pinned fast path outlives the stack: the listener and subflows it added must go
    with it, or a later kernel server on that port never sees a SYN (the pooled run's
    "stall after an earlier case": our perf server had served that port before)."""
    from mptcp_bpf.stack import Stack, StackConfig
    fp = _FakeFastPath()
    st = Stack(config=StackConfig(reserve_ports=False), fastpath=fp, start=False)
    try:
        st._on_listen(0, None, 10001, True)
        st._on_subflow_add(4, bytes([10, 0, 3, 3]), 10001, bytes([10, 0, 1, 1]), 40000, 0, 7)
        st._on_listen(0, None, 10001, False)      # deferred: a subflow still uses the port
        assert fp.listeners and fp.subflows
    finally:
        st.close()
    assert not fp.listeners and not fp.subflows
