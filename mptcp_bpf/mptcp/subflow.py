"""The MPTCP side of one subflow: ids, join state, receive mappings, and the hooks the
TCP endpoint (tcp.subflow.Subflow) calls. Everything that touches the TCP endpoint's
attribute names is here, so the connection modules read only MpSubflow.
"""

from __future__ import annotations

import collections
import ipaddress
from typing import Any, Optional

MASK64 = (1 << 64) - 1
_DATA_STATES = frozenset(("ESTABLISHED", "CLOSE_WAIT"))

# MPTCP-level subflow states (info()["subflows"][i]["mp_state"])
SF_CONNECTING = "connecting"      # TCP handshake in progress
SF_PRE = "pre_established"        # join: third ACK sent, waiting for the peer's ACK of it
SF_ESTABLISHED = "established"
SF_CLOSED = "closed"


class TxMap:
    """The mapping of one chunk queued on a subflow (the `meta` of Subflow.send)."""

    __slots__ = ("dsn", "ssn", "length", "csum", "fin", "mpc")

    def __init__(self, dsn: int, ssn: int, length: int, csum: Optional[int] = None,
                 fin: bool = False) -> None:
        self.dsn = dsn          # absolute 64-bit DSN of the first byte
        self.ssn = ssn          # relative subflow sequence number (1 = first data byte)
        self.length = length    # payload bytes (+1 if fin and the FIN rides on data)
        self.csum = csum        # DSS checksum field, None when checksums are off
        self.fin = fin
        self.mpc = False        # carried in MP_CAPABLE (v1 data on the third ACK)


class RxMap:
    """A mapping received on a subflow; checked/delivered as its bytes arrive in order."""

    __slots__ = ("dsn", "ssn", "length", "csum", "fin", "sum", "got", "buf", "data_len", "end")

    def __init__(self, dsn: int, ssn: int, length: int, csum: Optional[int], fin: bool) -> None:
        self.dsn = dsn          # absolute 64-bit DSN
        self.ssn = ssn          # relative SSN (1 = first data byte); 0 = DATA_FIN alone
        self.length = length    # data-level length (includes the DATA_FIN)
        self.csum = csum
        self.fin = fin
        self.sum: Optional[int] = 0  # fast-path payload sums so far; None: sum at the end
        self.got = 0            # payload bytes seen so far
        self.buf: list[bytes] = []  # payload held until the checksum verifies
        self.data_len = length - 1 if fin else length   # payload bytes (no DATA_FIN)
        self.end = ssn + self.data_len                  # first SSN after the payload

    def same(self, other: "RxMap") -> bool:
        return (self.dsn, self.ssn, self.length) == (other.dsn, other.ssn, other.length)


class MpSubflow:
    """One subflow of a connection; also the hooks object of its TCP endpoint."""

    def __init__(self, conn: Any, local: tuple[bytes, int], remote: tuple[bytes, int],
                 sf_id: int, local_id: int, remote_id: int, join: bool, backup: bool = False) -> None:
        self.conn = conn
        self.tcp: Any = None                  # tcp.subflow.Subflow, set by the creator
        self.local_b = local                  # (ip bytes, port): what the wire uses
        self.remote_b = remote
        self.local_addr = ipaddress.ip_address(local[0])
        self.remote_addr = ipaddress.ip_address(remote[0])
        self.local = (self.local_addr, local[1])     # (IPAddress, port): api.PmConnection
        self.remote = (self.remote_addr, remote[1])
        self.key = (local[0], local[1], remote[0], remote[1])
        self.family = 4 if len(local[0]) == 4 else 6
        self.id = sf_id                       # subflow id inside the connection (enhanced API)
        self.local_id = local_id              # MPTCP address ids
        self.remote_id = remote_id
        self.join = join
        self.active = False                   # we sent the SYN
        self.backup = backup                  # we prefer not to send on it
        self.peer_backup = False              # the peer asked us not to (MP_PRIO / join B)
        self.pf = False
        self.mp_state = SF_CONNECTING
        self.error: Optional[str] = None
        # join handshake
        self.nonce_local = 0
        self.nonce_remote = 0
        self.join_ack_pending = False         # client: resend the MP_JOIN ACK until acked
        self.join_verified = False
        # receive side
        self.rx_maps: list[RxMap] = []        # sorted by ssn, not yet fully consumed
        self.rx_seen_map = False
        self.rx_ssn_next = 1                  # next in-order relative SSN (1-based)
        self.infinite: Optional[tuple[int, int]] = None  # (dsn, ssn) of an infinite mapping
        # send side
        self.tx_ssn = 1                       # relative SSN of the next chunk queued
        self.tx_queued = 0                    # bytes queued and not yet acked at subflow level
        self.pending_opts: list[bytes] = []   # signals for the next pure ACK
        self.tx_chunks: collections.deque[tuple[int, int]] = collections.deque()  # (rel dsn, len)
        self.copies: collections.deque[tuple[int, int]] = collections.deque()  # redundant copies
        self.infinite_tx = False              # we sent an infinite mapping (8684 §3.7)
        self.infinite_base: Optional[tuple[int, int]] = None  # (ssn, rel dsn) to send it at
        self.dss_seen = False                 # the peer sent a DSS on this subflow
        # accounting
        self.bytes_sent = 0
        self.bytes_received = 0
        self.reinjected = 0
        self.csum_errors = 0

    # ---------------------------------------------------------- addresses

    # ---------------------------------------------------------- scheduler view
    @property
    def established(self) -> bool:
        return self.mp_state == SF_ESTABLISHED and self.tcp is not None and self.tcp.state in _DATA_STATES

    @property
    def tcp_established(self) -> bool:
        return self.tcp is not None and self.tcp.state in _DATA_STATES

    @property
    def srtt(self) -> Optional[float]:
        return self.tcp.srtt if self.tcp is not None else None

    @property
    def cwnd(self) -> int:
        return self.tcp.cwnd if self.tcp is not None else 0

    @property
    def in_flight(self) -> int:
        return self.tcp.in_flight if self.tcp is not None else 0

    @property
    def in_recovery(self) -> bool:
        return bool(self.tcp is not None and self.tcp.in_recovery)

    @property
    def mss(self) -> int:
        return self.tcp.mss if self.tcp is not None else 536

    @property
    def unsent(self) -> int:
        """Bytes queued on the TCP endpoint that it has not transmitted yet."""
        return self.tcp.unsent_bytes if self.tcp is not None else 0

    def can_send(self) -> bool:
        """Established, not potentially failed, and cwnd room for one more segment."""
        if self.pf or self.mp_state != SF_ESTABLISHED or self.tcp is None:
            return False
        return self.tcp.can_send()

    # ---------------------------------------------------------- hooks (called by the TCP endpoint)
    def syn_options(self, sf: Any) -> bytes:
        return self.conn._syn_options(self)

    def on_syn_options(self, sf: Any, opts: Any) -> None:
        self.conn._on_syn_options(self, opts)

    def ack_options(self, sf: Any, meta: Any, length: int, flags: int) -> bytes:
        return self.conn._ack_options(self, meta, length, flags)

    def data_options(self, sf: Any) -> bytes | None:
        return self.conn._data_options(self)

    def on_segment(self, sf: Any, seg: Any) -> None:
        self.conn._on_segment(self, seg)

    def on_data(self, sf: Any, ssn: int, data: Any) -> None:
        self.conn._on_data(self, ssn, data)

    def on_established(self, sf: Any) -> None:
        self.conn._on_sf_tcp_established(self)

    def on_fin(self, sf: Any) -> None:
        self.conn._on_sf_fin(self)

    def on_closed(self, sf: Any, reason: Any = None) -> None:
        self.conn._on_sf_closed(self, reason)

    def info(self) -> dict[str, Any]:
        t = self.tcp
        m = self.rx_maps[0] if self.rx_maps else None
        return {
            "id": self.id,
            "local": f"{self.local_addr}:{self.local[1]}",
            "remote": f"{self.remote_addr}:{self.remote[1]}",
            "local_id": self.local_id, "remote_id": self.remote_id,
            "family": self.family, "join": self.join,
            "backup": self.backup, "peer_backup": self.peer_backup, "pf": self.pf,
            "state": t.state if t is not None else "CLOSED",
            "mp_state": self.mp_state,
            "rtt": t.srtt if t is not None else None,
            "cwnd": t.cwnd if t is not None else 0,
            "in_flight": t.in_flight if t is not None else 0,
            "mss": self.mss,
            "bytes_sent": self.bytes_sent, "bytes_received": self.bytes_received,
            "reinjected": self.reinjected, "csum_errors": self.csum_errors,
            "mapping": None if m is None else {"dsn": m.dsn, "ssn": m.ssn, "len": m.length,
                                               "got": m.got},
            "error": self.error,
        }
