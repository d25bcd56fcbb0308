"""The round-robin scheduler: num_segments chunks on one subflow, then the next."""

from __future__ import annotations

from typing import Any, Sequence

from mptcp_bpf.sched.common import has_room, split_by_priority


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

    def _available(self, sf: Any) -> bool:
        return has_room(sf) if self.cwnd_limited else not sf.in_recovery

    def select(self, conn: Any, candidates: Sequence[Any], reinject: bool = False) -> list[Any]:
        active, backup = split_by_priority(candidates)
        group = active or backup
        avail = [sf for sf in group if self._available(sf)]
        if not avail:
            return []
        n = self.num_segments
        for attempt in range(2):
            for sf in avail:  # a subflow in the middle of its quota keeps the turn
                q = self.quota.get(sf.id, 0)
                if 0 < q < n:
                    self.quota[sf.id] = q + 1
                    return [sf]
            for sf in avail:
                if self.quota.get(sf.id, 0) == 0:
                    self.quota[sf.id] = 1
                    return [sf]
            for sf in group:  # everyone has used its quota: a new round
                self.quota[sf.id] = 0
        return []
