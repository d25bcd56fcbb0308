"""The contracts of the MPTCP layer: what plug-ins and the socket layer may rely on.

Three audiences, three Protocols (duck typing: pm/sched/cc have a lower rank than mptcp
and must not import it; they may copy these Protocols or just use the attribute names):

- schedulers (`SchedulerOps`) read `SchedSubflow` attributes and return where the next
  chunk goes;
- path managers (`PathManagerOps`) get events and act through `PmConnection`;
- the socket layer drives a connection through `ConnectionApi` and a host through
  `HostApi`.

Congestion control: the connection owns ONE `mptcp_bpf.tcp.congestion.CcGroup`
(`conn.cc_group`) and creates each subflow's controller with
`plugins.create("cc", conn.cc, group=conn.cc_group)`; the controller's `init(sf)` adds the
subflow to `group.members`, `release(sf)` removes it when the subflow closes.

Plug-in factories are called as
- `plugins.create("sched", name)` -> SchedulerOps (one instance per connection),
- `plugins.create("pm", name)` -> PathManagerOps (one instance per connection),
- `plugins.create("cc", name, group=CcGroup)` -> CongestionControl (one per subflow),
each factory also receiving `params=` (the registry adds it).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Protocol, Sequence, Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

MAX_SUBFLOWS = 32  # the path-index bitmask of the reference kernel is 32 bits wide
MAX_ADDRS_PER_FAMILY = 8

# Connection states (ConnectionApi.state); names follow TCP where they mean the same thing.
CLOSED = "CLOSED"
SYN_SENT = "SYN_SENT"
SYN_RCVD = "SYN_RCVD"
ESTABLISHED = "ESTABLISHED"
FIN_WAIT = "FIN_WAIT"        # we sent DATA_FIN, the peer has not
CLOSE_WAIT = "CLOSE_WAIT"    # the peer sent DATA_FIN, we have not
CLOSING = "CLOSING"          # both sent DATA_FIN, ours not acked yet
TIME_WAIT = "TIME_WAIT"

# Roles
CLIENT = "client"
SERVER = "server"


# --------------------------------------------------------------------------- schedulers

class SchedSubflow(Protocol):
    """What a scheduler may read on a subflow (all read-only for the scheduler)."""

    id: int               # address/subflow id inside the connection (0 = initial)
    established: bool     # may carry data (MPTCP-level fully or pre-established)
    backup: bool          # either side asked for backup priority (MP_PRIO / MP_JOIN B)
    pf: bool              # potentially failed: data was re-injected off it; cleared on a data ACK
    srtt: Optional[float]  # seconds, None before the first sample
    cwnd: int             # bytes
    in_flight: int        # bytes
    in_recovery: bool     # in fast recovery or after an RTO
    mss: int              # bytes of payload per segment

    def can_send(self) -> bool:
        """Established, not pf, and the congestion window has room for one more segment."""
        ...


class SchedulerOps(Protocol):
    """A packet scheduler: `select` is called once per chunk the connection wants to send.

    `candidates` are the connection's subflows that are established (never closed ones);
    the scheduler filters on `can_send()`, `backup`, `pf`... itself. Return the subflows
    the chunk goes on: [] = wait (nothing can take it now; the connection calls again when a
    subflow gets window room), one subflow = the normal case, several = redundant copies.

    `reinject` is True when the chunk is data re-injected off a failed/closed subflow; the
    connection then passes only the subflows the data was NOT yet sent on (or all when
    none remain). Re-injected data is always offered before new data.
    """

    name: str

    def select(self, conn: Any, candidates: Sequence[SchedSubflow],
               reinject: bool = False) -> list[SchedSubflow]:
        ...


# ------------------------------------------------------------------------ path managers

# the flags of `ip mptcp endpoint`, in the order ip prints them
ENDPOINT_FLAGS = ("signal", "subflow", "backup", "fullmesh")


@dataclass
class LocalAddr:
    """A local address the host may use (host.add_address); `id` is the MPTCP address id."""

    id: int
    address: IPAddress
    backup: bool = False
    port: int = 0          # 0 = no explicit port (announce without port)
    # endpoint flags set with `mptcp-bpf endpoint` (ENDPOINT_FLAGS but backup); None:
    # an address found on a device, which the path manager uses by role (REFERENCE.md §4)
    flags: Optional[frozenset] = None


@dataclass
class RemoteAddr:
    """An address the peer announced (ADD_ADDR) or the initial one (id 0)."""

    id: int
    address: IPAddress
    port: int              # the port to connect to (the connection's remote port if none announced)


class PmConnection(Protocol):
    """What a path manager may read and do on a connection."""

    role: str                                  # CLIENT or SERVER
    token: int                                 # local token
    remote_addresses: list[RemoteAddr]         # includes id 0 (the initial remote address)
    subflows: list[Any]                        # open subflows: SchedSubflow + `local`, `remote`
                                               #  as (IPAddress, port), `local_id`, `remote_id`
    local_ip: IPAddress                        # local address of the initial subflow
    local_port: int
    remote_port: int
    fully_established: bool                    # keys exchanged: joins may be opened
    host: Any                                  # host.now is the current time (seconds)

    def schedule(self, deadline: float, callback: Callable[[float], None]) -> Any:
        """A timer on the stack's TimerWheel (returns a handle with .cancel())."""
        ...

    def has_subflow(self, local_addr: IPAddress, remote_addr: IPAddress, remote_port: int) -> bool:
        """True when a subflow (or a pending join) already uses this address pair."""
        ...

    def local_addresses(self) -> list[LocalAddr]:
        """The host's usable local addresses (id 0 = the initial subflow's local address)."""
        ...

    def open_subflow(self, local_addr: IPAddress | None, remote_addr: IPAddress,
                     remote_port: int, local_port: int = 0, backup: bool = False) -> Any:
        """Start an MP_JOIN subflow; returns it, or None when refused (limit of 32, closed
        connection, not yet fully established, duplicate 4-tuple, family mismatch)."""
        ...

    def announce(self, addr_id: int, address: IPAddress, port: int | None = None) -> None:
        """Send ADD_ADDR (retransmitted until echoed in v1, 8684 §3.4.1)."""
        ...

    def remove_addr(self, ids: Iterable[int]) -> None:
        """Send REMOVE_ADDR and close our subflows using these local address ids."""
        ...

    def close_local(self, ids: Iterable[int]) -> None:
        """Close our subflows using these local address ids, with no REMOVE_ADDR."""
        ...

    def set_prio(self, sf: Any, backup: bool) -> None:
        """Send MP_PRIO on `sf` (8684 §3.3.8) and mark it locally."""
        ...

    def close_subflow(self, sf_id: int) -> bool:
        """Re-inject the subflow's unacked data on the others, then close it."""
        ...


class PathManagerOps(Protocol):
    """A path manager: every hook is optional (the connection checks with getattr)."""

    name: str

    def on_established(self, conn: PmConnection) -> None:
        """The MPTCP connection is (fully) established: time to join / announce."""
        ...

    def on_sf_established(self, conn: PmConnection, sf: Any) -> None:
        ...

    def on_add_addr(self, conn: PmConnection, addr: RemoteAddr) -> None:
        """The peer announced an address (already appended to conn.remote_addresses)."""
        ...

    def on_rm_addr(self, conn: PmConnection, ids: Sequence[int]) -> None:
        """The peer removed addresses; the connection already closed their subflows."""
        ...

    def on_subflow_closed(self, conn: PmConnection, sf: Any, error: str | None) -> None:
        """A subflow ended; error is None for a clean close, else a reason string
        ("reset", "timeout", "refused", ...). Retry logic lives here."""
        ...

    def on_local_address_change(self, conn: PmConnection, event: str, addr: LocalAddr) -> None:
        """event: "up", "down", "prio" (backup flag changed) or "flags" (endpoint flags
        changed by `mptcp-bpf endpoint change`, addr.flags)."""
        ...

    def on_timer(self, conn: PmConnection, now: float) -> None:
        """Called about once a second while the connection lives (retries)."""
        ...


# ------------------------------------------------------------------------- socket layer

class ConnectionApi(Protocol):
    """One MPTCP connection as the socket layer sees it (all calls from the loop thread).

    Readiness is edge-ish: the callbacks fire when something may have changed; the socket
    layer re-checks `readable()` / `writable()`.
    """

    state: str                      # one of the state names above
    connected: bool                 # handshake done (MPTCP or fallback TCP)
    eof: bool                       # the peer's DATA_FIN (or FIN in fallback) was received and
                                    #  everything before it was read
    error: Optional[int]            # errno (ECONNREFUSED, ECONNRESET, ETIMEDOUT...) or None
    fallback: bool                  # plain TCP after a fallback (8684 §3.7)
    version: int                    # 0 or 1
    token: int
    path_manager: str
    scheduler: str
    cc: str
    subflows: list[Any]
    on_readable: Optional[Callable[[], None]]
    on_writable: Optional[Callable[[], None]]
    on_state: Optional[Callable[[str], None]]

    def send(self, data: bytes, now: float | None = None) -> int:
        """Queue up to the free send-buffer space; returns bytes taken (0 = buffer full).
        Raises BrokenPipeError after shutdown/close/abort or on an error state."""
        ...

    def recv(self, n: int, now: float | None = None) -> bytes:
        """Up to n bytes in order; b"" at EOF; raises BlockingIOError if nothing is ready
        (never blocks: the socket layer waits on on_readable)."""
        ...

    def readable(self) -> bool: ...
    def writable(self) -> bool: ...

    def shutdown(self, now: float | None = None) -> None:
        """Half-close: DATA_FIN after the queued data (8684 §3.3.3)."""
        ...

    def close(self, now: float | None = None) -> None:
        """shutdown() and release once everything is acked (or abort if unread data remains)."""
        ...

    def abort(self, now: float | None = None) -> None:
        """MP_FASTCLOSE (8684 §3.5) and RST of every subflow."""
        ...

    def info(self) -> dict[str, Any]:
        """token, keys, version, csum, state, bytes, subflows [{id, local, remote, backup,
        state, rtt, cwnd, bytes_sent, bytes_received, mapping}], pm/sched/cc names."""
        ...

    # enhanced API
    def open_subflow(self, local_addr: IPAddress | None, remote_addr: IPAddress,
                     remote_port: int, local_port: int = 0, backup: bool = False) -> Any: ...
    def close_subflow(self, sf_id: int) -> bool: ...
    def subflow_by_id(self, sf_id: int) -> Any: ...


class HostApi(Protocol):
    """The MPTCP host of one stack (see mptcp.host.Host)."""

    output: Callable[[bytes], None]
    alloc_port: Callable[[int], int]          # family (4/6) -> free local port
    on_subflow_add: Optional[Callable[..., None]]     # (family 4/6, lip, lport, rip, rport, sf_id, token)
    on_subflow_remove: Optional[Callable[..., None]]  # same arguments
    on_listen: Optional[Callable[..., None]]          # (family, ip|None, port, add: bool)
    on_event: Optional[Callable[[dict], None]]        # monitor events, see host.EVENT_*

    def input(self, packet: bytes | memoryview, now: float, meta: Any = None) -> None: ...
    def listen(self, ip: str | None, port: int, backlog: int = 128,
               on_accept: Callable[[Any], None] | None = None, **options: Any) -> Any:
        """A Listener: `accept()` -> established Connection or None, `close()`; on_accept
        is called for each connection as it becomes established. options: mptcp=False
        (plain TCP only), checksum, path_manager, scheduler, cc, sndbuf, rcvbuf."""
        ...
    def connect(self, remote: tuple[str, int], local: tuple[str, int] | None = None,
                now: float = 0.0, **options: Any) -> ConnectionApi: ...
    def add_address(self, ip: str, addr_id: int | None = None, backup: bool = False,
                    port: int = 0, flags: frozenset | None = None) -> LocalAddr: ...
    def remove_address(self, ip: str) -> None: ...
    def flush_addresses(self) -> list[LocalAddr]: ...
