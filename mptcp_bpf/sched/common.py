"""Subflow predicates shared by the schedulers (REFERENCE.md §3, mptcp_sched.c semantics).

Schedulers only read a subflow's `established`, `pf`, `backup`, `srtt`, `cwnd`,
`in_flight`, `in_recovery` and `mss` (mptcp.api.SchedSubflow), so tests can pass any
object with those attributes.
"""

from __future__ import annotations

from typing import Any, Sequence


def usable(sf: Any) -> bool:
    """Established (or pre-established) and not potentially failed."""
    return bool(sf.established) and not sf.pf


def has_room(sf: Any) -> bool:
    """Not temporarily full: outside loss recovery and in_flight below the window."""
    return not sf.in_recovery and sf.in_flight < sf.cwnd


def is_backup(sf: Any) -> bool:
    """Backup priority asked by either side (our flag, or the peer's MP_PRIO / join B bit)."""
    return bool(sf.backup or getattr(sf, "peer_backup", False))


def split_by_priority(candidates: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """(active, backup) among the usable candidates, order kept."""
    active, backup = [], []
    for sf in candidates:
        if usable(sf):
            (backup if is_backup(sf) else active).append(sf)
    return active, backup
