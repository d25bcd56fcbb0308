"""Python mirrors of bpf/mptcp_common.h (metadata, map keys and values, constants).

tests/unit/test_structs.py parses the header and checks every struct and constant here
against it, so the two cannot drift apart silently.
"""

from __future__ import annotations

import ctypes
import socket
from dataclasses import dataclass

MPB_MAX_SUBFLOWS = 16384
MPB_MAX_LISTENERS = 1024
MPB_MAX_DEVICES = 16
MPB_MAX_QUEUES = 16
MPB_XSKS_SIZE = 256
MPB_SYSCTL_MAX = 16
MPB_SYSCTL_STR_LEN = 16
MPB_OWNERS_MAX = 64
MPB_META_MAGIC = 0x4D50
MPB_MAX_PAYLOAD = 9216

# struct mpb_meta.flags
MPB_F_OWNED = 0x0001
MPB_F_MPTCP = 0x0002
MPB_F_HAS_DSS = 0x0004
MPB_F_HAS_MAPPING = 0x0008
MPB_F_MAPPING_IN_SEGMENT = 0x0010
MPB_F_CSUM_CHECKED = 0x0020
MPB_F_CSUM_BAD = 0x0040
MPB_F_LISTENER = 0x0080
MPB_F_SUM_VALID = 0x0100
MPB_F_IPV6 = 0x0200
MPB_F_DSS_CSUM = 0x0400

# MPTCP subtypes (8684 §3); struct mpb_meta.subtypes has bit 1 << subtype.
MPB_ST_MP_CAPABLE = 0
MPB_ST_MP_JOIN = 1
MPB_ST_DSS = 2
MPB_ST_ADD_ADDR = 3
MPB_ST_REMOVE_ADDR = 4
MPB_ST_MP_PRIO = 5
MPB_ST_MP_FAIL = 6
MPB_ST_MP_FASTCLOSE = 7
MPB_ST_MP_TCPRST = 8
MPB_ST_COUNT = 9
SUBTYPE_NAMES = ["MP_CAPABLE", "MP_JOIN", "DSS", "ADD_ADDR", "REMOVE_ADDR", "MP_PRIO",
                 "MP_FAIL", "MP_FASTCLOSE", "MP_TCPRST"]

# Indexes into struct mpb_counters.v
MPB_C_FRAMES = 0
MPB_C_NOT_IP = 1
MPB_C_NOT_TCP = 2
MPB_C_TCP = 3
MPB_C_NOT_OWNED = 4
MPB_C_OWNED = 5
MPB_C_LISTENER_SYN = 6
MPB_C_MPTCP = 7
MPB_C_MALFORMED = 8
MPB_C_FRAGMENT = 9
MPB_C_CSUM_OK = 10
MPB_C_CSUM_BAD = 11
MPB_C_CSUM_UNCHECKED = 12
MPB_C_REDIRECTED = 13
MPB_C_NO_XSK = 14
MPB_C_META_FAIL = 15
MPB_C_PAYLOAD_TOO_LONG = 16
MPB_C_SUBTYPE_BASE = 20
MPB_C_SUBTYPE_UNKNOWN = 29
MPB_C_OWNED_SUBTYPE_BASE = 30
MPB_C_MAX = 40

COUNTER_NAMES: dict[int, str] = {
    MPB_C_FRAMES: "frames", MPB_C_NOT_IP: "not_ip", MPB_C_NOT_TCP: "not_tcp",
    MPB_C_TCP: "tcp", MPB_C_NOT_OWNED: "not_owned", MPB_C_OWNED: "owned",
    MPB_C_LISTENER_SYN: "listener_syn", MPB_C_MPTCP: "mptcp", MPB_C_MALFORMED: "malformed",
    MPB_C_FRAGMENT: "fragment", MPB_C_CSUM_OK: "csum_ok", MPB_C_CSUM_BAD: "csum_bad",
    MPB_C_CSUM_UNCHECKED: "csum_unchecked", MPB_C_REDIRECTED: "redirected",
    MPB_C_NO_XSK: "no_xsk", MPB_C_META_FAIL: "meta_fail",
    MPB_C_PAYLOAD_TOO_LONG: "payload_too_long", MPB_C_SUBTYPE_UNKNOWN: "subtype_unknown",
}
for _i, _n in enumerate(SUBTYPE_NAMES):
    COUNTER_NAMES[MPB_C_SUBTYPE_BASE + _i] = f"seen_{_n}"
    COUNTER_NAMES[MPB_C_OWNED_SUBTYPE_BASE + _i] = f"owned_{_n}"

# Slots of the `sysctl` map.
MPB_SYS_ENABLED = 0
MPB_SYS_CHECKSUM = 1
MPB_SYS_SYN_RETRIES = 2
MPB_SYS_VERSION = 3
MPB_SYS_DEBUG = 4
MPB_SYS_PATH_MANAGER = 5
MPB_SYS_SCHEDULER = 6
MPB_SYS_COOKIE_LO = 13
MPB_SYS_COOKIE_HI = 14
MPB_SYS_INIT = 15
MPB_SYS_INIT_MAGIC = 0x4D504253

# Subflow / listener value flags (not in the header: only the program's own #define).
VF_PASS_NO_XSK = 0x1

AF_INET = socket.AF_INET
AF_INET6 = socket.AF_INET6


class MpbMeta(ctypes.LittleEndianStructure):
    """struct mpb_meta: written by XDP in front of each redirected frame (host order)."""
    _fields_ = [
        ("magic", ctypes.c_uint16), ("flags", ctypes.c_uint16),
        ("subtypes", ctypes.c_uint16), ("csum", ctypes.c_uint16),
        ("subflow_id", ctypes.c_uint32), ("token", ctypes.c_uint32),
        ("l3_off", ctypes.c_uint16), ("l4_off", ctypes.c_uint16),
        ("payload_off", ctypes.c_uint16), ("payload_len", ctypes.c_uint16),
        ("dss_off", ctypes.c_uint16), ("reserved", ctypes.c_uint16),
    ]


class MpbSubflowKey(ctypes.LittleEndianStructure):
    """struct mpb_subflow_key; ports stored in network order (big-endian in memory)."""
    _fields_ = [
        ("family", ctypes.c_uint8), ("pad", ctypes.c_uint8),
        ("sport", ctypes.c_uint16), ("dport", ctypes.c_uint16), ("pad2", ctypes.c_uint16),
        ("saddr", ctypes.c_uint8 * 16), ("daddr", ctypes.c_uint8 * 16),
    ]


class MpbSubflowVal(ctypes.LittleEndianStructure):
    _fields_ = [("subflow_id", ctypes.c_uint32), ("token", ctypes.c_uint32),
                ("flags", ctypes.c_uint32)]


class MpbListenerKey(ctypes.LittleEndianStructure):
    _fields_ = [("family", ctypes.c_uint8), ("pad", ctypes.c_uint8),
                ("port", ctypes.c_uint16), ("addr", ctypes.c_uint8 * 16)]


class MpbListenerVal(ctypes.LittleEndianStructure):
    _fields_ = [("id", ctypes.c_uint32), ("flags", ctypes.c_uint32)]


class MpbSubflowStats(ctypes.LittleEndianStructure):
    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


class MpbCounters(ctypes.LittleEndianStructure):
    _fields_ = [("v", ctypes.c_uint64 * MPB_C_MAX)]


class MpbSysctlStr(ctypes.LittleEndianStructure):
    _fields_ = [("s", ctypes.c_char * MPB_SYSCTL_STR_LEN)]


# Header struct name -> Python mirror (checked by tests/unit/test_structs.py).
STRUCTS: dict[str, type[ctypes.Structure]] = {
    "mpb_meta": MpbMeta, "mpb_subflow_key": MpbSubflowKey, "mpb_subflow_val": MpbSubflowVal,
    "mpb_listener_key": MpbListenerKey, "mpb_listener_val": MpbListenerVal,
    "mpb_subflow_stats": MpbSubflowStats, "mpb_counters": MpbCounters,
    "mpb_sysctl_str": MpbSysctlStr,
}

META_SIZE = ctypes.sizeof(MpbMeta)


def _family(family: int) -> int:
    if family in (4, AF_INET):
        return AF_INET
    if family in (6, AF_INET6):
        return AF_INET6
    raise ValueError(f"address family {family}: use socket.AF_INET or socket.AF_INET6")


def _addr(family: int, ip: bytes | str | None) -> bytes:
    if ip is None:
        return bytes(16)
    if isinstance(ip, str):
        ip = socket.inet_pton(family, ip)
    want = 4 if family == AF_INET else 16
    if len(ip) != want:
        raise ValueError(f"address {ip!r} has {len(ip)} bytes, family needs {want}")
    return bytes(ip).ljust(16, b"\0")


def subflow_key(family: int, local_ip: bytes | str, local_port: int,
                remote_ip: bytes | str, remote_port: int) -> bytes:
    """Key bytes as XDP sees a received segment: source = remote, destination = local."""
    fam = _family(family)
    k = MpbSubflowKey(family=fam)
    k.sport = socket.htons(remote_port)
    k.dport = socket.htons(local_port)
    k.saddr[:] = _addr(fam, remote_ip)
    k.daddr[:] = _addr(fam, local_ip)
    return bytes(k)


def subflow_val(subflow_id: int, token: int, flags: int = 0) -> bytes:
    return bytes(MpbSubflowVal(subflow_id, token, flags))


def listener_key(family: int, ip: bytes | str | None, port: int) -> bytes:
    fam = _family(family)
    k = MpbListenerKey(family=fam, port=socket.htons(port))
    k.addr[:] = _addr(fam, ip)
    return bytes(k)


def _ip_text(family: int, raw: bytes) -> str:
    return socket.inet_ntop(family, raw[:4] if family == AF_INET else raw[:16])


def decode_subflow_key(raw: bytes) -> dict:
    k = MpbSubflowKey.from_buffer_copy(raw)
    fam = k.family if k.family in (AF_INET, AF_INET6) else AF_INET
    return {"family": "inet" if fam == AF_INET else "inet6",
            "remote": _ip_text(fam, bytes(k.saddr)), "remote_port": socket.ntohs(k.sport),
            "local": _ip_text(fam, bytes(k.daddr)), "local_port": socket.ntohs(k.dport)}


def decode_listener_key(raw: bytes) -> dict:
    k = MpbListenerKey.from_buffer_copy(raw)
    fam = k.family if k.family in (AF_INET, AF_INET6) else AF_INET
    addr = bytes(k.addr)
    return {"family": "inet" if fam == AF_INET else "inet6",
            "addr": "*" if not any(addr) else _ip_text(fam, addr),
            "port": socket.ntohs(k.port)}


@dataclass(frozen=True)
class Meta:
    """Decoded struct mpb_meta (what the AF_XDP receive path reads in front of a frame)."""
    flags: int
    subtypes: int
    csum: int
    subflow_id: int
    token: int
    l3_off: int
    l4_off: int
    payload_off: int
    payload_len: int
    dss_off: int

    @classmethod
    def parse(cls, raw: bytes) -> "Meta | None":
        """From the META_SIZE bytes before the frame; None if absent or without the magic."""
        if len(raw) < META_SIZE:
            return None
        m = MpbMeta.from_buffer_copy(raw[-META_SIZE:])
        if m.magic != MPB_META_MAGIC:
            return None
        return cls(m.flags, m.subtypes, m.csum, m.subflow_id, m.token, m.l3_off, m.l4_off,
                   m.payload_off, m.payload_len, m.dss_off)

    @property
    def owned(self) -> bool:
        return bool(self.flags & MPB_F_OWNED)

    @property
    def csum_bad(self) -> bool:
        return bool(self.flags & MPB_F_CSUM_BAD)

    def subtype_names(self) -> list[str]:
        return [n for i, n in enumerate(SUBTYPE_NAMES) if self.subtypes & (1 << i)]
