"""The redundant scheduler: every chunk on every usable subflow, for the lowest latency."""

from __future__ import annotations

from typing import Any, Sequence

from mptcp_bpf.sched.common import has_room, split_by_priority


class RedundantScheduler:
    """Returns all usable subflows of the best priority level (backups only when no active
    one is usable), rotating which one comes first. Subflows whose window is full are
    included: the connection queues the copy there and forgets it once the data is acked
    at the connection level (REFERENCE.md §3). Waits ([]) when none has window room."""

    name = "redundant"

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        self.params = dict(params or {})
        self._start = 0

    def select(self, conn: Any, candidates: Sequence[Any], reinject: bool = False) -> list[Any]:
        active, backup = split_by_priority(candidates)
        group = active or backup
        if not group or not any(has_room(sf) for sf in group):
            return []
        k = self._start % len(group)
        self._start += 1
        return group[k:] + group[:k]
