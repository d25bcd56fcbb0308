"""Minimal built-in path manager (fullmesh) and scheduler (lowest RTT).

The real plug-ins live in mptcp_bpf.pm / mptcp_bpf.sched and are found through the
registry; these stand-ins are used only when the registry has no plug-in of that name, so
that the protocol core works (and is testable) on its own.
"""

from __future__ import annotations

from typing import Any, Sequence

from mptcp_bpf import plugins
from mptcp_bpf.errors import HintedError
from mptcp_bpf.tcp.congestion import CongestionControl


class LowestRttScheduler:
    """REFERENCE.md §3 "default", reduced: lowest srtt with window room, backups last."""

    name = "default"

    def __init__(self, params: dict | None = None) -> None:
        self.params = dict(params or {})

    def select(self, conn: Any, candidates: Sequence[Any], reinject: bool = False) -> list[Any]:
        best = None
        best_key = None
        for sf in candidates:
            if not sf.can_send():
                continue
            key = (_backup(sf), sf.srtt if sf.srtt is not None else 0.0, sf.id)
            if best_key is None or key < best_key:
                best, best_key = sf, key
        if best is None:
            return []
        if _backup(best) and any(not _backup(s) and s.established and not s.pf for s in candidates):
            return []  # an active subflow exists but is full: wait for it
        return [best]


def _backup(sf: Any) -> bool:
    """Backup for us when we asked (MP_JOIN/MP_PRIO B we sent) or the peer did."""
    return bool(sf.backup or getattr(sf, "peer_backup", False))


class FullMeshPm:
    """REFERENCE.md §4 "fullmesh", reduced: server announces, client joins every pair."""

    name = "fullmesh"

    def __init__(self, params: dict | None = None) -> None:
        self.params = dict(params or {})

    def on_established(self, conn: Any) -> None:
        if conn.role == "server":
            for la in conn.local_addresses():
                if la.id != 0 and la.address != conn.local_ip:
                    conn.announce(la.id, la.address, la.port or None)
        else:
            for ra in list(conn.remote_addresses):
                self.on_add_addr(conn, ra)

    def on_add_addr(self, conn: Any, addr: Any) -> None:
        if conn.role != "client" or not conn.fully_established:
            return
        for la in conn.local_addresses():
            if la.address.version != addr.address.version:
                continue
            if conn.has_subflow(la.address, addr.address, addr.port):
                continue
            conn.open_subflow(la.address, addr.address, addr.port, backup=la.backup)


def make_scheduler(name: str) -> Any:
    try:
        return plugins.create("sched", name)
    except (HintedError, ImportError):  # registry without it
        return LowestRttScheduler()


def make_path_manager(name: str) -> Any:
    try:
        return plugins.create("pm", name)
    except (HintedError, ImportError):
        return FullMeshPm() if name in ("fullmesh", "default_fallback") else _NullPm(name)


def make_cc(name: str, group: Any) -> CongestionControl:
    try:
        return plugins.create("cc", name, group=group)
    except (HintedError, ImportError):
        return CongestionControl(group=group)


class _NullPm:
    """Announces nothing and opens nothing (the "default" path manager)."""

    def __init__(self, name: str = "default") -> None:
        self.name = name
