"""Scheduler choices on synthetic subflow states (REFERENCE.md §3)."""

from __future__ import annotations

from dataclasses import dataclass

from mptcp_bpf import plugins

MSS = 1400


@dataclass(eq=False)
class Sf:
    id: int
    srtt: float | None = 0.05
    cwnd: int = 10 * MSS
    in_flight: int = 0
    established: bool = True
    backup: bool = False
    pf: bool = False
    in_recovery: bool = False
    mss: int = MSS

    def can_send(self) -> bool:
        return self.established and not self.pf and self.in_flight < self.cwnd


def sched(name, **params):
    p = dict(plugins.get("sched", name).params)
    p.update(params)
    return plugins.get("sched", name).factory(params=p)


def test_registry():
    assert set(plugins.names("sched")) >= {"default", "roundrobin", "redundant"}
    assert plugins.get("sched", "roundrobin").params == {"num_segments": 1, "cwnd_limited": True}


def test_default_picks_lowest_srtt_with_room():
    a, b, c = Sf(1, srtt=0.05), Sf(2, srtt=0.01), Sf(3, srtt=0.02)
    s = sched("default")
    assert s.select(None, [a, b, c]) == [b]
    b.in_flight = b.cwnd                      # full
    assert s.select(None, [a, b, c]) == [c]
    c.in_recovery = True                      # temporarily full
    assert s.select(None, [a, b, c]) == [a]
    a.in_flight = a.cwnd
    assert s.select(None, [a, b, c]) == []    # everyone full: wait


def test_default_skips_pf_and_unestablished():
    a, b = Sf(1, srtt=0.01, pf=True), Sf(2, srtt=0.09)
    s = sched("default")
    assert s.select(None, [a, b]) == [b]
    a.pf = False
    assert s.select(None, [a, b]) == [a]
    a.established = False
    assert s.select(None, [a, b]) == [b]


def test_default_backup_only_when_no_active_usable():
    act, bak = Sf(1, srtt=0.2), Sf(2, srtt=0.01, backup=True)
    s = sched("default")
    assert s.select(None, [act, bak]) == [act]
    act.in_flight = act.cwnd                  # active usable but full: wait, not backup
    assert s.select(None, [act, bak]) == []
    act.pf = True                             # active failed: the backup takes over
    assert s.select(None, [act, bak]) == [bak]
    assert s.select(None, [act, bak], reinject=True) == [bak]
    assert s.select(None, []) == []


def test_default_probes_subflow_without_rtt_sample():
    a, b = Sf(1, srtt=0.01), Sf(2, srtt=None)
    assert sched("default").select(None, [a, b]) == [b]


def test_roundrobin_alternates_num_segments():
    a, b = Sf(1), Sf(2)
    s = sched("roundrobin")
    picks = [s.select(None, [a, b])[0].id for _ in range(6)]
    assert picks == [1, 2, 1, 2, 1, 2]
    s = sched("roundrobin", num_segments=3)
    picks = [s.select(None, [a, b])[0].id for _ in range(9)]
    assert picks == [1, 1, 1, 2, 2, 2, 1, 1, 1]


def test_roundrobin_cwnd_limited():
    a, b = Sf(1), Sf(2, in_flight=10 * MSS)
    s = sched("roundrobin")
    assert [s.select(None, [a, b])[0].id for _ in range(3)] == [1, 1, 1]
    s = sched("roundrobin", cwnd_limited=False)
    assert [s.select(None, [a, b])[0].id for _ in range(4)] == [1, 2, 1, 2]
    a.in_flight = a.cwnd
    assert sched("roundrobin").select(None, [a, b]) == []


def test_roundrobin_backup_and_pf():
    a, b, c = Sf(1), Sf(2, backup=True), Sf(3, pf=True)
    s = sched("roundrobin")
    assert [s.select(None, [a, b, c])[0].id for _ in range(3)] == [1, 1, 1]
    a.pf = True
    assert s.select(None, [a, b, c])[0].id == 2


def test_redundant_sends_on_every_usable_subflow():
    a, b, c = Sf(1), Sf(2), Sf(3, pf=True)
    s = sched("redundant")
    first = s.select(None, [a, b, c])
    second = s.select(None, [a, b, c])
    assert {x.id for x in first} == {1, 2} and {x.id for x in second} == {1, 2}
    assert first[0] is not second[0]          # round-robin order of start
    d = Sf(4, backup=True)
    assert {x.id for x in s.select(None, [a, b, d])} == {1, 2}
    a.pf = b.pf = True
    assert [x.id for x in s.select(None, [a, b, d])] == [4]
    d.in_flight = d.cwnd
    assert s.select(None, [a, b, d]) == []


def test_peer_backup_counts_as_backup():
    act, peer_bak = Sf(1, srtt=0.2), Sf(2, srtt=0.01)
    peer_bak.peer_backup = True               # the peer sent MP_PRIO B=1 / joined with B
    for name in ("default", "roundrobin", "redundant"):
        assert [x.id for x in sched(name).select(None, [act, peer_bak])] == [1], name
