"""Helpers shared by the path managers: address pairs, retry bookkeeping.

Path managers see the connection through mptcp.api.PmConnection (duck typing; this layer
ranks below mptcp): `role`, `subflows` (each with `local`/`remote` as (address, port)),
`remote_addresses`, `local_addresses()`, `open_subflow()`, `announce()`, `remove_addr()`,
`set_prio()`. Hooks are called on the stack's loop; `on_timer` about once a second.
Local address events: "up", "down", "prio" (backup changed), "flags" (endpoint flags).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

CLIENT = "client"
SERVER = "server"
MAX_ADDRS_PER_FAMILY = 8   # REFERENCE.md §4
MAX_SUBFLOWS = 32
RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0, 16.0)  # seconds; then the pair is given up


def ip(value: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return value if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)) \
        else ipaddress.ip_address(str(value))


def sf_pair(sf: Any) -> tuple[str, str, int]:
    """(local address, remote address, remote port) of an open subflow."""
    return str(ip(sf.local[0])), str(ip(sf.remote[0])), int(sf.remote[1])


def limit_per_family(addrs: list[Any]) -> list[Any]:
    """At most 8 addresses per family, in the given order."""
    count = {4: 0, 6: 0}
    out = []
    for a in addrs:
        v = ip(a.address).version
        if count[v] < MAX_ADDRS_PER_FAMILY:
            count[v] += 1
            out.append(a)
    return out


@dataclass
class Retry:
    failures: int = 0
    due: float | None = None      # armed by the first on_timer after the failure
    ready: bool = False           # the retry may go out now


@dataclass
class Retries:
    """Backoff per key (an address pair) after a subflow over it failed: 1, 2, 4, 8, 16 s,
    then the pair is given up (until an address event makes it new again)."""

    state: dict[Hashable, Retry] = field(default_factory=dict)

    def failed(self, key: Hashable, now: float | None = None) -> float | None:
        """Record a failure; with `now`, the retry is due at the returned time (else the
        next on_timer arms it)."""
        r = self.state.setdefault(key, Retry())
        r.failures += 1
        r.due, r.ready = None, False
        if now is not None and r.failures <= len(RETRY_DELAYS):
            r.due = now + RETRY_DELAYS[r.failures - 1]
        return r.due

    def succeeded(self, key: Hashable) -> None:
        self.state.pop(key, None)

    def blocked(self, key: Hashable) -> bool:
        """True while a failed pair waits for its retry (or gave up)."""
        r = self.state.get(key)
        return r is not None and not r.ready

    def attempted(self, key: Hashable) -> None:
        r = self.state.get(key)
        if r is not None:
            r.ready = False
            r.due = float("inf")   # in flight: failed() or succeeded() decides

    def given_up(self, key: Hashable) -> bool:
        r = self.state.get(key)
        return r is not None and r.failures > len(RETRY_DELAYS)

    def tick(self, now: float) -> bool:
        """Arm new failures, mark due ones ready; True when some retry is ready."""
        any_ready = False
        for r in self.state.values():
            if r.failures > len(RETRY_DELAYS):
                continue
            if r.due is None:
                r.due = now + RETRY_DELAYS[r.failures - 1]
            elif now >= r.due:
                r.ready = True
            any_ready = any_ready or r.ready
        return any_ready

    def forget(self, pred: Callable[[Hashable], bool]) -> None:
        for key in [k for k in self.state if pred(k)]:
            del self.state[key]


def conn_now(conn: Any) -> float | None:
    """The connection's clock when it exposes one (mptcp.connection: conn.host.now)."""
    now = getattr(getattr(conn, "host", None), "now", None)
    return now if isinstance(now, (int, float)) else None


def conn_limit(conn: Any, name: str) -> int | None:
    """A limit of the host's config (`mptcp-bpf limits`: join_limit, add_addr_accepted),
    None when unset or not offered."""
    value = getattr(getattr(getattr(conn, "host", None), "config", None), name, None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def wake_at(conn: Any, due: float | None, callback: Callable[[float], None]) -> None:
    """Ask the connection for a timer (conn.schedule(deadline, cb)) when it offers one, so
    retries work even when nobody calls on_timer; on_timer stays the main driver."""
    sched = getattr(conn, "schedule", None)
    if due is not None and callable(sched):
        sched(due, callback)


def after_third_ack(conn: Any, action: Callable[[], Any]) -> None:
    """Run a client's first joins once the peer has had time to get our third ACK.

    A v1 server learns our key, hence the token a join names, from the MP_CAPABLE third
    ACK; a join SYN sent with (or before) that ACK meets an unknown token and a RST
    (seen in the in-memory network with ndiffports). While the connection says the ACK is
    unconfirmed (`mpc_ack_pending`), wait one RTT of the initial subflow; else act now."""
    now = conn_now(conn)
    if (getattr(conn, "mpc_ack_pending", False) and now is not None
            and callable(getattr(conn, "schedule", None))):
        first = conn.subflows[0] if conn.subflows else None
        rtt = getattr(first, "srtt", None) or 0.05
        wake_at(conn, now + rtt, lambda _now: action())
    else:
        action()


class BasePathManager:
    """Every hook of mptcp.api.PathManagerOps as a no-op."""

    name = "base"

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        self.params = dict(params or {})

    def on_established(self, conn: Any) -> None: ...
    def on_sf_established(self, conn: Any, sf: Any) -> None: ...
    def on_add_addr(self, conn: Any, addr: Any) -> None: ...
    def on_rm_addr(self, conn: Any, ids: Any) -> None: ...
    def on_subflow_closed(self, conn: Any, sf: Any, error: str | None) -> None: ...
    def on_local_address_change(self, conn: Any, event: str, addr: Any) -> None: ...
    def on_timer(self, conn: Any, now: float) -> None: ...
