"""The ndiffports path manager: num_subflows subflows over the initial address pair, each
from its own ephemeral source port, so ECMP hashing spreads them over the paths."""

from __future__ import annotations

from typing import Any

from mptcp_bpf.pm.common import (CLIENT, MAX_SUBFLOWS, BasePathManager, Retries,
                                 after_third_ack, conn_now, ip, wake_at)

_KEY = "initial-pair"


class NDiffPortsPathManager(BasePathManager):
    """Client only: keep num_subflows (default 2) subflows on the initial pair."""

    name = "ndiffports"

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        super().__init__(params)
        self.num_subflows = max(1, min(MAX_SUBFLOWS, int(self.params.get("num_subflows", 2))))
        self.retries = Retries()
        self.pending: dict[int, Any] = {}
        self.pair: tuple[Any, Any, int] | None = None
        self.closed_on_purpose = 0

    def on_established(self, conn: Any) -> None:
        if conn.role != CLIENT or not conn.subflows:
            return
        first = conn.subflows[0]
        self.pair = (ip(first.local[0]), ip(first.remote[0]), int(first.remote[1]))
        after_third_ack(conn, lambda: self.reconcile(conn))

    def reconcile(self, conn: Any) -> int:
        if self.pair is None or self.retries.blocked(_KEY):
            return 0
        seen = {id(sf) for sf in conn.subflows}
        have = len(conn.subflows) + sum(1 for k in self.pending if k not in seen)
        want = self.num_subflows - self.closed_on_purpose
        opened = 0
        local, remote, port = self.pair
        while have < want:
            sf = conn.open_subflow(local, remote, port, local_port=0)
            self.retries.attempted(_KEY)
            if sf is None:
                break
            self.pending[id(sf)] = sf
            have += 1
            opened += 1
        return opened

    def on_sf_established(self, conn: Any, sf: Any) -> None:
        if self.pending.pop(id(sf), None) is not None:
            self.retries.succeeded(_KEY)

    def on_subflow_closed(self, conn: Any, sf: Any, error: str | None) -> None:
        self.pending.pop(id(sf), None)
        if error is None:
            self.closed_on_purpose += 1
        else:
            due = self.retries.failed(_KEY, conn_now(conn))
            wake_at(conn, due, lambda now: self.on_timer(conn, now))

    def on_timer(self, conn: Any, now: float) -> None:
        if self.retries.tick(now):
            self.reconcile(conn)
