"""The round-robin scheduler: num_segments chunks on one subflow, then the next."""

from __future__ import annotations

from typing import Any, Sequence

from mptcp_bpf.sched.common import split_by_priority


class RoundRobinScheduler:
    """Per-subflow quotas (REFERENCE.md §3): a subflow part-way through its quota keeps the
    turn, else the first one with quota 0 takes it; when every candidate used its quota,
    all quotas reset. cwnd_limited=False ignores window room so alternation stays strict
    on unequal paths (the chunk then waits in that subflow's queue)."""

    name = "roundrobin"

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        self.params = dict(params or {})
        self.num_segments = max(1, int(self.params.get("num_segments", 1)))
        self.cwnd_limited = bool(self.params.get("cwnd_limited", True))
        self.quota: dict[int, int] = {}

    def select(self, conn: Any, candidates: Sequence[Any], reinject: bool = False) -> list[Any]:
        active, backup = split_by_priority(candidates)
        group = active or backup
        if not group:
            return []
        n = self.num_segments
        quota = self.quota
        limited = self.cwnd_limited
        fresh = None
        any_avail = False
        for sf in group:
            if sf.in_recovery or (limited and sf.in_flight >= sf.cwnd):
                continue
            any_avail = True
            q = quota.get(sf.id, 0)
            if 0 < q < n:               # part-way through its quota: keeps the turn
                quota[sf.id] = q + 1
                return [sf]
            if q == 0 and fresh is None:
                fresh = sf
        if not any_avail:
            return []
        if fresh is None:               # every candidate used its quota: a new round
            for sf in group:
                quota[sf.id] = 0
            for sf in group:
                if not (sf.in_recovery or (limited and sf.in_flight >= sf.cwnd)):
                    fresh = sf
                    break
        quota[fresh.id] = 1
        return [fresh]
