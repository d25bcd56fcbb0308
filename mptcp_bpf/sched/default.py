"""The default scheduler: lowest smoothed RTT among subflows with congestion-window room."""

from __future__ import annotations

from typing import Any, Sequence

_INF = float("inf")


class DefaultScheduler:
    """Lowest srtt first; backups only when no active subflow is usable (REFERENCE.md §3).

    When an active subflow is usable but its window is full we wait for it ([]) rather
    than spill onto a backup, as the reference kernel does: backup paths are for failures.
    Potentially-failed subflows are skipped until a data ACK clears the tag. Re-injected
    chunks arrive with the subflows they were not yet sent on (the connection filters).
    """

    name = "default"
    # select() keeps choosing a subflow until its cwnd is full (nothing else changes while
    # the connection hands out data), so the connection may give it that room in one
    # mapping (mptcp.send._fill_room)
    fills_subflow = True

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        self.params = dict(params or {})

    def select(self, conn: Any, candidates: Sequence[Any], reinject: bool = False) -> list[Any]:
        # one pass (this runs once per chunk on the send path)
        best = best_backup = None
        best_rtt = backup_rtt = _INF
        active_usable = backup_usable = False
        for sf in candidates:
            if not sf.established or sf.pf:
                continue
            backup = sf.backup or getattr(sf, "peer_backup", False)
            if backup:
                backup_usable = True
            else:
                active_usable = True
            if sf.in_recovery or sf.in_flight >= sf.cwnd:
                continue
            rtt = sf.srtt
            if rtt is None:
                rtt = 0.0  # no sample yet: use it, so that it gets measured
            if backup:
                if rtt < backup_rtt:
                    best_backup, backup_rtt = sf, rtt
            elif rtt < best_rtt:
                best, best_rtt = sf, rtt
        if active_usable:
            return [best] if best is not None else []
        if backup_usable and best_backup is not None:
            return [best_backup]
        return []
