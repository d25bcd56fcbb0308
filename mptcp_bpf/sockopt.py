"""The socket options of the multipath-tcp.org kernel and its socket-API fork, as bytes.

Pure packing and unpacking of the C layouts (x86-64, checked against gcc in
tests/unit/test_sockopt.py) so that `setsockopt`/`getsockopt(SOL_TCP, ...)` on our sockets
take and return exactly what a C program would pass, plus the fork's argument checks as
functions that raise OSError(errno, message) like the kernel's return codes.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket as _socket
import struct
from dataclasses import dataclass, fields
from typing import Iterable

SOL_TCP = 6
IPPROTO_TCP = 6

# Option numbers (REFERENCE.md §1).
MPTCP_ENABLED = 42
MPTCP_SCHEDULER = 43
MPTCP_PATH_MANAGER = 44
MPTCP_INFO = 45
MPTCP_GET_SUB_IDS = 66
MPTCP_CLOSE_SUB_ID = 67
MPTCP_GET_SUB_TUPLE = 68
MPTCP_OPEN_SUB_TUPLE = 69
MPTCP_OPEN_SUB_ID = MPTCP_OPEN_SUB_TUPLE  # the seed uses both names for 69
MPTCP_GET_SUB_INFO = 70
MPTCP_SUB_GETSOCKOPT = 71
MPTCP_SUB_SETSOCKOPT = 72

MPTCP_INFO_FLAG_SAVE_MASTER = 0x01

TCP_INFO = 11
TCP_NODELAY = 1
IP_TOS = 1
IPV6_TCLASS = 67
SOL_IP = 0
SOL_IPV6 = 41

MAX_SUBFLOWS = 32       # path-index bitmask is 32 bits wide
MAX_NAME_LEN = 15       # scheduler / path-manager names (TCP_CA_NAME_MAX - 1)

OPTION_NAMES = {
    MPTCP_ENABLED: "MPTCP_ENABLED", MPTCP_SCHEDULER: "MPTCP_SCHEDULER",
    MPTCP_PATH_MANAGER: "MPTCP_PATH_MANAGER", MPTCP_INFO: "MPTCP_INFO",
    MPTCP_GET_SUB_IDS: "MPTCP_GET_SUB_IDS", MPTCP_CLOSE_SUB_ID: "MPTCP_CLOSE_SUB_ID",
    MPTCP_GET_SUB_TUPLE: "MPTCP_GET_SUB_TUPLE", MPTCP_OPEN_SUB_TUPLE: "MPTCP_OPEN_SUB_TUPLE",
    MPTCP_GET_SUB_INFO: "MPTCP_GET_SUB_INFO", MPTCP_SUB_GETSOCKOPT: "MPTCP_SUB_GETSOCKOPT",
    MPTCP_SUB_SETSOCKOPT: "MPTCP_SUB_SETSOCKOPT",
}


def _err(code: int, what: str) -> OSError:
    return OSError(code, f"{os.strerror(code)}: {what}")


# --------------------------------------------------------------------------- sub_status / ids

SUB_STATUS_SIZE = 2
SUB_IDS_HEADER = 2      # __u8 sub_count, padded to the 2-byte alignment of mptcp_sub_status


@dataclass
class SubStatus:
    """struct mptcp_sub_status: id, then five one-bit flags in byte 1 (bits 0..4)."""

    id: int
    slave_sk: bool = False
    fully_established: bool = False
    attached: bool = False
    low_prio: bool = False
    pre_established: bool = False

    def pack(self) -> bytes:
        bits = (self.slave_sk | self.fully_established << 1 | self.attached << 2
                | self.low_prio << 3 | self.pre_established << 4)
        return bytes((self.id & 0xFF, bits))

    @classmethod
    def unpack(cls, buf: bytes, offset: int = 0) -> "SubStatus":
        b = buf[offset + 1]
        return cls(buf[offset], bool(b & 1), bool(b & 2), bool(b & 4), bool(b & 8), bool(b & 16))


def sub_ids_size(count: int) -> int:
    """Bytes needed for struct mptcp_sub_ids with `count` entries."""
    return SUB_IDS_HEADER + SUB_STATUS_SIZE * count


def pack_sub_ids(statuses: Iterable[SubStatus]) -> bytes:
    items = list(statuses)
    return bytes((len(items) & 0xFF, 0)) + b"".join(s.pack() for s in items)


def unpack_sub_ids(buf: bytes) -> list[SubStatus]:
    if len(buf) < 1:
        raise _err(errno.EINVAL, "mptcp_sub_ids needs at least 1 byte")
    count = buf[0]
    if len(buf) < sub_ids_size(count):
        raise _err(errno.EINVAL, f"mptcp_sub_ids with {count} entries needs "
                                 f"{sub_ids_size(count)} bytes, got {len(buf)}")
    return [SubStatus.unpack(buf, SUB_IDS_HEADER + SUB_STATUS_SIZE * i) for i in range(count)]


def check_sub_ids_len(optlen: int, count: int) -> None:
    """GET_SUB_IDS: EINVAL when the buffer cannot hold the header and every entry."""
    need = sub_ids_size(count)
    if optlen < need:
        raise _err(errno.EINVAL, f"MPTCP_GET_SUB_IDS needs optlen >= {need} "
                                 f"for {count} subflows, got {optlen}")


# --------------------------------------------------------------------------- sub_tuple

SOCKADDR_IN_SIZE = 16
SOCKADDR_IN6_SIZE = 28
SUB_TUPLE_V4_SIZE = 1 + 2 * SOCKADDR_IN_SIZE   # 33
SUB_TUPLE_V6_SIZE = 1 + 2 * SOCKADDR_IN6_SIZE  # 57

_SIN = struct.Struct("=H2s4s8x")          # sa_family (host order), port, addr, zero
_SIN6 = struct.Struct("=H2s4s16sI")       # family, port, flowinfo, addr, scope_id


@dataclass
class SockAddr:
    """An IPv4 or IPv6 socket address as carried in mptcp_sub_tuple."""

    host: str
    port: int
    flowinfo: int = 0
    scope_id: int = 0

    @property
    def family(self) -> int:
        return _socket.AF_INET6 if ":" in self.host else _socket.AF_INET

    def pack(self) -> bytes:
        port = self.port.to_bytes(2, "big")
        addr = ipaddress.ip_address(self.host).packed
        if len(addr) == 4:
            return _SIN.pack(_socket.AF_INET, port, addr)
        return _SIN6.pack(_socket.AF_INET6, port, self.flowinfo.to_bytes(4, "big"), addr,
                          self.scope_id)

    @classmethod
    def unpack(cls, buf: bytes, offset: int = 0) -> "SockAddr":
        family = int.from_bytes(buf[offset:offset + 2], "little")
        if family == _socket.AF_INET:
            _, port, addr = _SIN.unpack_from(buf, offset)
            return cls(str(ipaddress.IPv4Address(addr)), int.from_bytes(port, "big"))
        if family == _socket.AF_INET6:
            _, port, flow, addr, scope = _SIN6.unpack_from(buf, offset)
            return cls(str(ipaddress.IPv6Address(addr)), int.from_bytes(port, "big"),
                       int.from_bytes(flow, "big"), scope)
        raise _err(errno.EAFNOSUPPORT, f"address family {family} in mptcp_sub_tuple")


@dataclass
class SubTuple:
    """struct mptcp_sub_tuple: id, then the local and the remote sockaddr."""

    id: int
    local: SockAddr
    remote: SockAddr

    def pack(self) -> bytes:
        if self.local.family != self.remote.family:
            raise _err(errno.EINVAL, "local and remote address families differ")
        return bytes((self.id & 0xFF,)) + self.local.pack() + self.remote.pack()

    @classmethod
    def unpack(cls, buf: bytes) -> "SubTuple":
        if len(buf) < SUB_TUPLE_V4_SIZE:
            raise _err(errno.EINVAL, f"mptcp_sub_tuple needs {SUB_TUPLE_V4_SIZE} or "
                                     f"{SUB_TUPLE_V6_SIZE} bytes, got {len(buf)}")
        family = int.from_bytes(buf[1:3], "little")
        if family == _socket.AF_INET6 and len(buf) < SUB_TUPLE_V6_SIZE:
            raise _err(errno.EINVAL, f"IPv6 mptcp_sub_tuple needs {SUB_TUPLE_V6_SIZE} bytes")
        local = SockAddr.unpack(buf, 1)
        size = SOCKADDR_IN_SIZE if family == _socket.AF_INET else SOCKADDR_IN6_SIZE
        return cls(buf[0], local, SockAddr.unpack(buf, 1 + size))


def sub_tuple_size(family: int) -> int:
    return SUB_TUPLE_V6_SIZE if family == _socket.AF_INET6 else SUB_TUPLE_V4_SIZE


def check_get_sub_tuple_len(optlen: int, family: int) -> None:
    """GET_SUB_TUPLE: EINVAL when the buffer is shorter than 33 (v4) / 57 (v6)."""
    need = sub_tuple_size(family)
    if optlen < need:
        raise _err(errno.EINVAL, f"MPTCP_GET_SUB_TUPLE needs optlen >= {need}, got {optlen}")


def check_open_sub_tuple_len(optlen: int) -> int:
    """OPEN_SUB_TUPLE: optlen must be exactly 33 or 57; returns the address family."""
    if optlen == SUB_TUPLE_V4_SIZE:
        return _socket.AF_INET
    if optlen == SUB_TUPLE_V6_SIZE:
        return _socket.AF_INET6
    raise _err(errno.EINVAL, f"MPTCP_OPEN_SUB_TUPLE needs optlen {SUB_TUPLE_V4_SIZE} (IPv4) "
                             f"or {SUB_TUPLE_V6_SIZE} (IPv6), got {optlen}")


# --------------------------------------------------------------------------- close_sub_id

CLOSE_SUB_ID_SIZE = 1


def pack_close_sub_id(sub_id: int) -> bytes:
    return bytes((sub_id & 0xFF,))


def unpack_close_sub_id(buf: bytes) -> int:
    check_close_sub_id_len(len(buf))
    return buf[0]


def check_close_sub_id_len(optlen: int) -> None:
    if optlen < CLOSE_SUB_ID_SIZE:
        raise _err(errno.EINVAL, "MPTCP_CLOSE_SUB_ID needs optlen >= 1")


def check_sub_id_known(sub_id: int, known: Iterable[int], option: str) -> None:
    """CLOSE_SUB_ID, GET_SUB_TUPLE, SUB_*SOCKOPT: EINVAL for an unknown subflow id."""
    if sub_id not in set(known):
        raise _err(errno.EINVAL, f"{option}: no subflow with id {sub_id}")


# --------------------------------------------------------------------------- sub_{get,set}sockopt

_SUB_GETSOCKOPT = struct.Struct("=B3xii4xQQ")    # id, level, optname, optval*, optlen*
_SUB_SETSOCKOPT = struct.Struct("=B3xii4xQI4x")  # id, level, optname, optval*, optlen
SUB_SOCKOPT_SIZE = 32
assert _SUB_GETSOCKOPT.size == _SUB_SETSOCKOPT.size == SUB_SOCKOPT_SIZE


@dataclass
class SubGetsockopt:
    """struct mptcp_sub_getsockopt; optval and optlen are user-space pointers (integers)."""

    id: int
    level: int
    optname: int
    optval: int = 0
    optlen: int = 0

    _layout = _SUB_GETSOCKOPT
    _option = "MPTCP_SUB_GETSOCKOPT"

    def pack(self) -> bytes:
        return self._layout.pack(self.id, self.level, self.optname, self.optval, self.optlen)

    @classmethod
    def unpack(cls, buf: bytes):
        check_sub_sockopt_len(len(buf), cls._option)
        return cls(*cls._layout.unpack(buf))


@dataclass
class SubSetsockopt(SubGetsockopt):
    """struct mptcp_sub_setsockopt; optval is a pointer, optlen a plain unsigned."""

    _layout = _SUB_SETSOCKOPT
    _option = "MPTCP_SUB_SETSOCKOPT"


def check_sub_sockopt_len(optlen: int, option: str = "MPTCP_SUB_GETSOCKOPT") -> None:
    """SUB_GETSOCKOPT / SUB_SETSOCKOPT: optlen must equal the struct size (32)."""
    if optlen != SUB_SOCKOPT_SIZE:
        raise _err(errno.EINVAL, f"{option} needs optlen == {SUB_SOCKOPT_SIZE}, got {optlen}")


# --------------------------------------------------------------------------- other checks

def check_mptcp_socket(is_mptcp: bool, option: int) -> None:
    """Every option: EOPNOTSUPP when the socket is not (or no longer) MPTCP."""
    if not is_mptcp:
        raise _err(errno.EOPNOTSUPP, f"{OPTION_NAMES.get(option, option)} on a non-MPTCP socket")


def check_enabled_set(global_enabled: int) -> None:
    """MPTCP_ENABLED set: EPERM when net.mptcp.mptcp_enabled is 0."""
    if global_enabled == 0:
        raise _err(errno.EPERM, "MPTCP_ENABLED while net.mptcp.mptcp_enabled=0")


def parse_name_option(optval: bytes, option: int, mptcp_on: bool, closed: bool,
                      known: Iterable[str]) -> str:
    """SCHEDULER / PATH_MANAGER set: EINVAL (empty), EPERM (off or not CLOSE), ENOENT (unknown).

    The name is NUL-terminated or fills the buffer; at most 15 characters count.
    """
    what = OPTION_NAMES.get(option, str(option))
    if len(optval) < 1:
        raise _err(errno.EINVAL, f"{what} needs optlen >= 1")
    if not mptcp_on:
        raise _err(errno.EPERM, f"{what}: MPTCP is off for this socket")
    if not closed:
        raise _err(errno.EPERM, f"{what}: the socket is not in CLOSE state")
    name = bytes(optval[:MAX_NAME_LEN + 1]).split(b"\0", 1)[0][:MAX_NAME_LEN]
    text = name.decode("ascii", "replace")
    if text not in set(known):
        raise _err(errno.ENOENT, f"{what}: no plug-in named {text!r}")
    return text


def pack_name(name: str) -> bytes:
    """A scheduler / path-manager name as the kernel returns it (NUL-padded to 16)."""
    raw = name.encode()[:MAX_NAME_LEN]
    return raw + b"\0" * (MAX_NAME_LEN + 1 - len(raw))


def pack_int(value: int) -> bytes:
    return struct.pack("=i", value)


def unpack_int(buf: bytes) -> int:
    """An int option value; like the kernel, shorter buffers are read as far as they go."""
    if len(buf) >= 4:
        return struct.unpack_from("=i", buf)[0]
    if not buf:
        raise _err(errno.EINVAL, "option value needs at least 1 byte")
    return int.from_bytes(buf, "little")


# --------------------------------------------------------------------------- struct tcp_info

# (name, struct code) in the order of include/uapi/linux/tcp.h (Linux 6.18).  The first
# eight bytes hold bitfields; they are packed by hand below.
_TCP_INFO_HEAD = ("state", "ca_state", "retransmits", "probes", "backoff", "options")
_TCP_INFO_BODY: tuple[tuple[str, str], ...] = (
    ("rto", "I"), ("ato", "I"), ("snd_mss", "I"), ("rcv_mss", "I"),
    ("unacked", "I"), ("sacked", "I"), ("lost", "I"), ("retrans", "I"), ("fackets", "I"),
    ("last_data_sent", "I"), ("last_ack_sent", "I"), ("last_data_recv", "I"),
    ("last_ack_recv", "I"),
    ("pmtu", "I"), ("rcv_ssthresh", "I"), ("rtt", "I"), ("rttvar", "I"),
    ("snd_ssthresh", "I"), ("snd_cwnd", "I"), ("advmss", "I"), ("reordering", "I"),
    ("rcv_rtt", "I"), ("rcv_space", "I"),
    ("total_retrans", "I"),
    ("pacing_rate", "Q"), ("max_pacing_rate", "Q"), ("bytes_acked", "Q"),
    ("bytes_received", "Q"), ("segs_out", "I"), ("segs_in", "I"),
    ("notsent_bytes", "I"), ("min_rtt", "I"), ("data_segs_in", "I"), ("data_segs_out", "I"),
    ("delivery_rate", "Q"),
    ("busy_time", "Q"), ("rwnd_limited", "Q"), ("sndbuf_limited", "Q"),
    ("delivered", "I"), ("delivered_ce", "I"),
    ("bytes_sent", "Q"), ("bytes_retrans", "Q"), ("dsack_dups", "I"), ("reord_seen", "I"),
    ("rcv_ooopack", "I"),
    ("snd_wnd", "I"),
    ("rcv_wnd", "I"),
    ("rehash", "I"),
    ("total_rto", "H"), ("total_rto_recoveries", "H"), ("total_rto_time", "I"),
    ("received_ce", "I"),
    ("delivered_e1_bytes", "I"), ("delivered_e0_bytes", "I"), ("delivered_ce_bytes", "I"),
    ("received_e1_bytes", "I"), ("received_e0_bytes", "I"), ("received_ce_bytes", "I"),
    ("ecn_word", "I"),  # ecn_mode:2, accecn_opt_seen:2, accecn_fail_mode:4, options2:24
)
_TCP_INFO = struct.Struct("=6BBB" + "".join(code for _, code in _TCP_INFO_BODY))
TCP_INFO_SIZE = _TCP_INFO.size  # 280 on Linux 6.18; 232 up to tcpi_snd_wnd (Linux 5.4)
TCP_INFO_FIELDS = (_TCP_INFO_HEAD + ("snd_wscale", "rcv_wscale", "delivery_rate_app_limited",
                                     "fastopen_client_fail")
                   + tuple(n for n, _ in _TCP_INFO_BODY if n != "ecn_word")
                   + ("ecn_mode", "accecn_opt_seen", "accecn_fail_mode", "options2"))

# tcpi_options bits
TCPI_OPT_TIMESTAMPS = 1
TCPI_OPT_SACK = 2
TCPI_OPT_WSCALE = 4
TCPI_OPT_ECN = 8
TCPI_OPT_ECN_SEEN = 16
TCPI_OPT_SYN_DATA = 32
TCPI_OPT_USEC_TS = 64
TCPI_OPT_TFO_CHILD = 128

# tcpi_state values (include/net/tcp_states.h)
TCP_STATES = {"ESTABLISHED": 1, "SYN_SENT": 2, "SYN_RECV": 3, "FIN_WAIT1": 4,
              "FIN_WAIT2": 5, "TIME_WAIT": 6, "CLOSE": 7, "CLOSE_WAIT": 8,
              "LAST_ACK": 9, "LISTEN": 10, "CLOSING": 11}


@dataclass
class TcpInfo:
    """Linux struct tcp_info; times in microseconds (rtt, rto) or milliseconds (last_*)."""

    state: int = 0
    ca_state: int = 0
    retransmits: int = 0
    probes: int = 0
    backoff: int = 0
    options: int = 0
    snd_wscale: int = 0
    rcv_wscale: int = 0
    delivery_rate_app_limited: int = 0
    fastopen_client_fail: int = 0
    rto: int = 0
    ato: int = 0
    snd_mss: int = 0
    rcv_mss: int = 0
    unacked: int = 0
    sacked: int = 0
    lost: int = 0
    retrans: int = 0
    fackets: int = 0
    last_data_sent: int = 0
    last_ack_sent: int = 0
    last_data_recv: int = 0
    last_ack_recv: int = 0
    pmtu: int = 0
    rcv_ssthresh: int = 0
    rtt: int = 0
    rttvar: int = 0
    snd_ssthresh: int = 0
    snd_cwnd: int = 0
    advmss: int = 0
    reordering: int = 0
    rcv_rtt: int = 0
    rcv_space: int = 0
    total_retrans: int = 0
    pacing_rate: int = 0
    max_pacing_rate: int = 0
    bytes_acked: int = 0
    bytes_received: int = 0
    segs_out: int = 0
    segs_in: int = 0
    notsent_bytes: int = 0
    min_rtt: int = 0
    data_segs_in: int = 0
    data_segs_out: int = 0
    delivery_rate: int = 0
    busy_time: int = 0
    rwnd_limited: int = 0
    sndbuf_limited: int = 0
    delivered: int = 0
    delivered_ce: int = 0
    bytes_sent: int = 0
    bytes_retrans: int = 0
    dsack_dups: int = 0
    reord_seen: int = 0
    rcv_ooopack: int = 0
    snd_wnd: int = 0
    rcv_wnd: int = 0
    rehash: int = 0
    total_rto: int = 0
    total_rto_recoveries: int = 0
    total_rto_time: int = 0
    received_ce: int = 0
    delivered_e1_bytes: int = 0
    delivered_e0_bytes: int = 0
    delivered_ce_bytes: int = 0
    received_e1_bytes: int = 0
    received_e0_bytes: int = 0
    received_ce_bytes: int = 0
    ecn_mode: int = 0
    accecn_opt_seen: int = 0
    accecn_fail_mode: int = 0
    options2: int = 0

    def pack(self, length: int = TCP_INFO_SIZE) -> bytes:
        """The first `length` bytes, as getsockopt(TCP_INFO) truncates to the caller's size."""
        d = self.__dict__
        wscale = (self.snd_wscale & 0xF) | (self.rcv_wscale & 0xF) << 4
        flags = (self.delivery_rate_app_limited & 1) | (self.fastopen_client_fail & 3) << 1
        body = []
        for name, code in _TCP_INFO_BODY:
            if name == "ecn_word":
                body.append((self.ecn_mode & 3) | (self.accecn_opt_seen & 3) << 2
                            | (self.accecn_fail_mode & 0xF) << 4 | (self.options2 & 0xFFFFFF) << 8)
            else:
                mask = {"H": 0xFFFF, "I": 0xFFFFFFFF, "Q": (1 << 64) - 1}[code]
                body.append(int(d[name]) & mask)
        head = [int(d[n]) & 0xFF for n in _TCP_INFO_HEAD]
        return _TCP_INFO.pack(*head, wscale, flags, *body)[:max(0, length)]

    @classmethod
    def unpack(cls, buf: bytes) -> "TcpInfo":
        """Reads a full or truncated struct (older kernels return fewer bytes): rest is 0."""
        raw = bytes(buf[:TCP_INFO_SIZE]).ljust(TCP_INFO_SIZE, b"\0")
        vals = _TCP_INFO.unpack(raw)
        info = cls(*vals[:6])
        info.snd_wscale, info.rcv_wscale = vals[6] & 0xF, vals[6] >> 4
        info.delivery_rate_app_limited, info.fastopen_client_fail = vals[7] & 1, (vals[7] >> 1) & 3
        for (name, _), value in zip(_TCP_INFO_BODY, vals[8:]):
            if name == "ecn_word":
                info.ecn_mode, info.accecn_opt_seen = value & 3, (value >> 2) & 3
                info.accecn_fail_mode, info.options2 = (value >> 4) & 0xF, value >> 8
            else:
                setattr(info, name, value)
        return info

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def tcp_info_offsets() -> dict[str, int]:
    """Byte offset of each non-bitfield member (for the layout test against gcc)."""
    out = {name: i for i, name in enumerate(_TCP_INFO_HEAD)}
    off = 8
    for name, code in _TCP_INFO_BODY:
        size = struct.calcsize(code)
        off = (off + size - 1) // size * size
        out[name] = off
        off += size
    return out


# --------------------------------------------------------------------------- MPTCP_INFO
# The multipath-tcp.org releases' include/uapi/linux/tcp.h: getsockopt(MPTCP_INFO) takes a
# struct mptcp_info of lengths and user pointers, and fills what the pointers point to.

_MPTCP_INFO = struct.Struct("=5I4xQQQQ")   # 5 lengths, then meta_info, initial, subflows,
MPTCP_INFO_SIZE = _MPTCP_INFO.size         # subflow_info pointers: 56 bytes
_META_INFO = struct.Struct("=4B6I4xQQ")
MPTCP_META_INFO_SIZE = _META_INFO.size     # 48
SUB_INFO_ADDR_SIZE = SOCKADDR_IN6_SIZE     # each union holds a sockaddr_in6 at most
MPTCP_SUB_INFO_SIZE = 2 * SUB_INFO_ADDR_SIZE  # 56


@dataclass
class MptcpInfo:
    """struct mptcp_info: buffer lengths (in and out) and user-space pointers (integers)."""

    tcp_info_len: int = 0
    sub_len: int = 0
    meta_len: int = 0
    sub_info_len: int = 0
    total_sub_info_len: int = 0
    meta_info: int = 0
    initial: int = 0
    subflows: int = 0
    subflow_info: int = 0

    def pack(self) -> bytes:
        return _MPTCP_INFO.pack(self.tcp_info_len, self.sub_len, self.meta_len,
                                self.sub_info_len, self.total_sub_info_len, self.meta_info,
                                self.initial, self.subflows, self.subflow_info)

    @classmethod
    def unpack(cls, buf: bytes) -> "MptcpInfo":
        """Like the kernel, reads min(len, 56) bytes; the rest is zero."""
        raw = bytes(buf[:MPTCP_INFO_SIZE]).ljust(MPTCP_INFO_SIZE, b"\0")
        return cls(*_MPTCP_INFO.unpack(raw))


@dataclass
class MptcpMetaInfo:
    """struct mptcp_meta_info: the connection-level counterpart of tcp_info."""

    state: int = 0
    retransmits: int = 0
    probes: int = 0
    backoff: int = 0
    rto: int = 0                 # microseconds
    unacked: int = 0
    last_data_sent: int = 0      # milliseconds ago
    last_data_recv: int = 0
    last_ack_recv: int = 0
    total_retrans: int = 0
    bytes_acked: int = 0
    bytes_received: int = 0

    def pack(self, length: int = MPTCP_META_INFO_SIZE) -> bytes:
        vals = [getattr(self, f.name) for f in fields(self)]
        return _META_INFO.pack(*(int(v) & (0xFF if i < 4 else (0xFFFFFFFF if i < 10
                                                                else (1 << 64) - 1))
                                 for i, v in enumerate(vals)))[:max(0, length)]

    @classmethod
    def unpack(cls, buf: bytes) -> "MptcpMetaInfo":
        raw = bytes(buf[:MPTCP_META_INFO_SIZE]).ljust(MPTCP_META_INFO_SIZE, b"\0")
        return cls(*_META_INFO.unpack(raw))


def _sockaddr_union(addr: SockAddr) -> bytes:
    return addr.pack().ljust(SUB_INFO_ADDR_SIZE, b"\0")


@dataclass
class SubInfo:
    """struct mptcp_sub_info: source and destination, each in a 28-byte sockaddr union."""

    src: SockAddr
    dst: SockAddr

    def pack(self, length: int = MPTCP_SUB_INFO_SIZE) -> bytes:
        return (_sockaddr_union(self.src) + _sockaddr_union(self.dst))[:max(0, length)]

    @classmethod
    def unpack(cls, buf: bytes) -> "SubInfo":
        if len(buf) < MPTCP_SUB_INFO_SIZE:
            raise _err(errno.EINVAL, f"mptcp_sub_info needs {MPTCP_SUB_INFO_SIZE} bytes")
        return cls(SockAddr.unpack(buf, 0), SockAddr.unpack(buf, SUB_INFO_ADDR_SIZE))


def fill_array(items: list[bytes], each: int, total: int) -> tuple[bytes, int]:
    """MPTCP_INFO's arrays (subflows, subflow_info): entries truncated to `each` bytes,
    as many as fit in `total`; returns the bytes and the length written (new sub_len)."""
    each = max(0, each)
    out = bytearray()
    for item in items:
        if each == 0 or len(out) + each > total:
            break
        out += item[:each].ljust(each, b"\0")
    return bytes(out), len(out)
