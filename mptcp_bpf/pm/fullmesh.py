"""The fullmesh path manager (REFERENCE.md §4).

Client: one subflow (num_subflows) from each local address to each address the server
has (the initial one and those it announced), same family only, at most 8 addresses per
family on each side and 32 subflows. Server: announces its other addresses, creates
nothing. Both react to local addresses going up (client joins from it, server announces
it), down (REMOVE_ADDR) and changing priority (MP_PRIO on the subflows using it); failed
pairs are retried with backoff.

Endpoints set with `mptcp-bpf endpoint` (LocalAddr.flags not None) follow the kernel's
in-kernel PM (ip-mptcp(8)): `signal` ones are announced in either role, `subflow` ones are
joined from (client), to the peer's initial address only unless also `fullmesh`. Addresses
found on devices (flags None) keep the role rules above. Limits (`mptcp-bpf limits`, on
conn.host.config): join_limit bounds the joins opened, add_addr_accepted the announced
addresses used, both for new decisions only.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from mptcp_bpf.pm.common import (CLIENT, MAX_SUBFLOWS, SERVER, BasePathManager, Retries,
                                 after_third_ack, conn_limit, conn_now, ip, limit_per_family,
                                 sf_pair, wake_at)

Key = tuple[str, str, int]


class FullMeshPathManager(BasePathManager):
    """Every local address to every remote address, num_subflows times."""

    name = "fullmesh"

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        super().__init__(params)
        self.num_subflows = max(1, int(self.params.get("num_subflows", 1)))
        self.retries = Retries()
        self.pending: dict[int, tuple[Any, Key]] = {}   # id(sf) -> (sf, pair) not yet up
        self.closed_pairs: set[Key] = set()             # closed on purpose: do not reopen
        self.down: set[str] = set()                     # local addresses reported down
        self.announced: set[int] = set()
        self.established = False

    # -- what should exist -------------------------------------------------------------
    def _locals(self, conn: Any, use: str | None = None) -> list[Any]:
        """Usable local addresses; with `use` ("signal"/"subflow") only endpoints carrying
        that flag (id 0 and addresses found on devices always qualify)."""
        out = []
        for a in conn.local_addresses():
            f = getattr(a, "flags", None)
            if str(ip(a.address)) in self.down or (use and a.id != 0 and f is not None
                                                    and use not in f):
                continue
            out.append(a)
        return limit_per_family(out)

    def _remotes(self, conn: Any) -> list[Any]:
        """The initial remote address and the first add_addr_accepted announced ones."""
        lim = conn_limit(conn, "add_addr_accepted")
        out, n = [], 0
        for ra in conn.remote_addresses:
            if ra.id != 0:
                if lim is not None and n >= lim:
                    continue
                n += 1
            out.append(ra)
        return limit_per_family(out)

    def desired(self, conn: Any) -> dict[Key, tuple[Any, Any]]:
        """Pair -> (LocalAddr, RemoteAddr) for every pair the client should connect."""
        if conn.role != CLIENT:
            return {}
        out: dict[Key, tuple[Any, Any]] = {}
        remotes = self._remotes(conn)
        for la in self._locals(conn, "subflow"):
            f = getattr(la, "flags", None)
            mesh = f is None or la.id == 0 or "fullmesh" in f
            for ra in remotes:
                if ip(la.address).version != ip(ra.address).version or not (mesh or ra.id == 0):
                    continue
                out[(str(ip(la.address)), str(ip(ra.address)), int(ra.port))] = (la, ra)
        return out

    def existing(self, conn: Any) -> Counter:
        seen = {id(sf) for sf in conn.subflows}
        count = Counter(sf_pair(sf) for sf in conn.subflows)
        for key, (sf, pair) in list(self.pending.items()):
            if key not in seen:
                count[pair] += 1
        return count

    def reconcile(self, conn: Any) -> int:
        """Open the subflows that are missing; returns how many were started."""
        if not self.established:
            return 0
        have = self.existing(conn)
        total = sum(have.values())
        lim = conn_limit(conn, "join_limit")   # additional subflows (kernel: limits subflows)
        cap = MAX_SUBFLOWS if lim is None else min(MAX_SUBFLOWS, lim + 1)
        opened = 0
        for key, (la, ra) in self.desired(conn).items():
            if key in self.closed_pairs or self.retries.blocked(key):
                continue
            for _ in range(self.num_subflows - have[key]):
                if total >= cap:
                    return opened
                sf = conn.open_subflow(ip(la.address), ip(ra.address), int(ra.port),
                                       backup=bool(getattr(la, "backup", False)))
                self.retries.attempted(key)
                if sf is None:
                    break
                self.pending[id(sf)] = (sf, key)
                total += 1
                opened += 1
        return opened

    def announce_all(self, conn: Any) -> None:
        """ADD_ADDR for every local address but the one of the initial subflow: a server
        announces addresses found on devices and `signal` endpoints, a client only the
        latter (as the kernel does in either role)."""
        initial = {str(ip(sf.local[0])) for sf in conn.subflows[:1]}
        for la in self._locals(conn, "signal"):
            if conn.role != SERVER and getattr(la, "flags", None) is None:
                continue
            if la.id == 0 or la.id in self.announced or str(ip(la.address)) in initial:
                continue
            conn.announce(la.id, ip(la.address), la.port or None)
            self.announced.add(la.id)

    # -- hooks -----------------------------------------------------------------------
    def on_established(self, conn: Any) -> None:
        self.established = True
        if conn.role == SERVER:
            self.announce_all(conn)
        else:
            after_third_ack(conn, lambda: (self.announce_all(conn), self.reconcile(conn)))

    def on_sf_established(self, conn: Any, sf: Any) -> None:
        entry = self.pending.pop(id(sf), None)
        self.retries.succeeded(entry[1] if entry else sf_pair(sf))

    def on_add_addr(self, conn: Any, addr: Any) -> None:
        key_remote = (str(ip(addr.address)), int(addr.port))
        self.closed_pairs = {k for k in self.closed_pairs if (k[1], k[2]) != key_remote}
        self.retries.forget(lambda k: (k[1], k[2]) == key_remote)
        self.reconcile(conn)

    def on_rm_addr(self, conn: Any, ids: Any) -> None:
        live = {(str(ip(r.address)), int(r.port)) for r in conn.remote_addresses}
        self.retries.forget(lambda k: (k[1], k[2]) not in live)

    def on_subflow_closed(self, conn: Any, sf: Any, error: str | None) -> None:
        entry = self.pending.pop(id(sf), None)
        key = entry[1] if entry else sf_pair(sf)
        if error is None:
            self.closed_pairs.add(key)
        elif key[0] not in self.down:
            due = self.retries.failed(key, conn_now(conn))
            wake_at(conn, due, lambda now: self.on_timer(conn, now))

    def on_local_address_change(self, conn: Any, event: str, addr: Any) -> None:
        host = str(ip(addr.address))
        if event == "up":
            self.down.discard(host)
            self.closed_pairs = {k for k in self.closed_pairs if k[0] != host}
            self.retries.forget(lambda k: k[0] == host)
            if self.established:
                self.announce_all(conn)
            if conn.role != SERVER:
                self.reconcile(conn)
        elif event == "down":
            # RM_ADDR when announced or in use by a subflow; else nothing to tell the peer
            tell = self._announced(addr) or any(str(ip(sf.local[0])) == host
                                                for sf in conn.subflows)
            self._forget(addr)
            if tell:
                conn.remove_addr([addr.id])
        elif event == "prio":
            for sf in list(conn.subflows):
                if str(ip(sf.local[0])) == host and bool(sf.backup) != bool(addr.backup):
                    conn.set_prio(sf, bool(addr.backup))
        elif event == "flags" and conn.role != SERVER:
            self.reconcile(conn)   # fullmesh set: pairs to the announced addresses too

    def on_local_addresses_flushed(self, conn: Any, addrs: list) -> None:
        """`endpoint flush`: one RM_ADDR with every announced id; the subflows of the other
        addresses close with no RM_ADDR (the kernel's mptcp_pm_remove_addrs_and_subflows)."""
        signalled = [a.id for a in addrs if self._announced(a)]
        for a in addrs:
            self._forget(a)
        conn.remove_addr(signalled)
        conn.close_local(a.id for a in addrs if a.id not in signalled)

    def _announced(self, addr: Any) -> bool:
        return addr.id in self.announced

    def _forget(self, addr: Any) -> None:
        """A local address gone: no joins from it, not announced any more."""
        host = str(ip(addr.address))
        self.down.add(host)
        self.retries.forget(lambda k: k[0] == host)
        self.announced.discard(addr.id)

    def on_timer(self, conn: Any, now: float) -> None:
        if self.retries.tick(now):
            self.reconcile(conn)
