"""MPTCP option (TCP option kind 30) suboptions, both versions: v0 (RFC 6824), v1 (RFC 8684).

`parse_mptcp(option)` takes one whole option (kind, length, body) and returns one of the
dataclasses below; `emit(sub)` returns the whole option. Lengths select the form (see
REFERENCE.md §6); the version nibble of MP_CAPABLE and the IPVer/E nibble of ADD_ADDR tell
v0 from v1. Fields that a form does not carry are None.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from .errors import WireError

__all__ = [
    "OPT_MPTCP", "MP_CAPABLE", "MP_JOIN", "DSS", "ADD_ADDR", "REMOVE_ADDR", "MP_PRIO",
    "MP_FAIL", "MP_FASTCLOSE", "MP_TCPRST", "MP_EXPERIMENTAL", "SUBTYPE_NAMES",
    "MPC_FLAG_A", "MPC_FLAG_B", "MPC_FLAG_C", "MPC_FLAG_H",
    "DSS_FLAG_A", "DSS_FLAG_a", "DSS_FLAG_M", "DSS_FLAG_m", "DSS_FLAG_F",
    "MpCapable", "MpJoinSyn", "MpJoinSynAck", "MpJoinAck", "Dss", "AddAddr", "RemoveAddr",
    "MpPrio", "MpFail", "MpFastclose", "MpTcpRst", "Suboption",
    "parse_mptcp", "emit", "subtype_of", "dss_length",
]

OPT_MPTCP = 30

MP_CAPABLE = 0
MP_JOIN = 1
DSS = 2
ADD_ADDR = 3
REMOVE_ADDR = 4
MP_PRIO = 5
MP_FAIL = 6
MP_FASTCLOSE = 7
MP_TCPRST = 8
MP_EXPERIMENTAL = 15

SUBTYPE_NAMES = {
    MP_CAPABLE: "MP_CAPABLE", MP_JOIN: "MP_JOIN", DSS: "DSS", ADD_ADDR: "ADD_ADDR",
    REMOVE_ADDR: "REMOVE_ADDR", MP_PRIO: "MP_PRIO", MP_FAIL: "MP_FAIL",
    MP_FASTCLOSE: "MP_FASTCLOSE", MP_TCPRST: "MP_TCPRST", MP_EXPERIMENTAL: "MP_EXPERIMENTAL",
}

# MP_CAPABLE flags (8684 §3.1): A checksum required, B extensibility,
# C do not join to the source address (v1), H HMAC-SHA256 (v1) / HMAC-SHA1 (v0).
MPC_FLAG_A = 0x80
MPC_FLAG_B = 0x40
MPC_FLAG_C = 0x20
MPC_FLAG_H = 0x01

# DSS flags (8684 §3.3): F DATA_FIN, m DSN is 8 octets, M mapping present,
# a data ACK is 8 octets, A data ACK present.
DSS_FLAG_A = 0x01
DSS_FLAG_a = 0x02
DSS_FLAG_M = 0x04
DSS_FLAG_m = 0x08
DSS_FLAG_F = 0x10

_U64 = 0xFFFFFFFFFFFFFFFF
_U32 = 0xFFFFFFFF


@dataclass(slots=True)
class MpCapable:
    """MP_CAPABLE (8684 §3.1). sender_key is the key of whoever sends this option."""

    version: int = 1
    flags: int = MPC_FLAG_H
    sender_key: int | None = None
    receiver_key: int | None = None
    data_len: int | None = None
    checksum: int | None = None

    @property
    def checksum_required(self) -> bool:
        return bool(self.flags & MPC_FLAG_A)

    @property
    def extensibility(self) -> bool:
        return bool(self.flags & MPC_FLAG_B)

    @property
    def no_source_join(self) -> bool:
        return bool(self.flags & MPC_FLAG_C)

    @property
    def hmac_sha(self) -> bool:
        return bool(self.flags & MPC_FLAG_H)


@dataclass(slots=True)
class MpJoinSyn:
    """MP_JOIN in a SYN: the receiver's token and our random nonce (8684 §3.2)."""

    token: int
    nonce: int
    addr_id: int = 0
    backup: bool = False


@dataclass(slots=True)
class MpJoinSynAck:
    """MP_JOIN in a SYN/ACK: leftmost 64 bits of HMAC(KeyB||KeyA, R_B||R_A) as an int."""

    hmac: int
    nonce: int
    addr_id: int = 0
    backup: bool = False


@dataclass(slots=True)
class MpJoinAck:
    """MP_JOIN in the third ACK: leftmost 160 bits of HMAC(KeyA||KeyB, R_A||R_B)."""

    hmac: bytes


@dataclass(slots=True)
class Dss:
    """Data Sequence Signal (8684 §3.3). data_ack/dsn None = absent; checksum None = no field.

    data_ack8/dsn8 are the a/m flags (8-octet forms); dsn, ssn and data_len come together
    (the mapping), ssn relative to the subflow's initial sequence number.
    """

    data_ack: int | None = None
    data_ack8: bool = True
    dsn: int | None = None
    dsn8: bool = True
    ssn: int | None = None
    data_len: int | None = None
    checksum: int | None = None
    data_fin: bool = False


@dataclass(slots=True)
class AddAddr:
    """ADD_ADDR: v1 (8684 §3.4.1) with truncated HMAC unless echo; v0 (6824 §3.4.1) without."""

    addr_id: int
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int | None = None
    hmac: int | None = None
    echo: bool = False
    version: int = 1


@dataclass(slots=True)
class RemoveAddr:
    """REMOVE_ADDR (8684 §3.4.2): one or more address ids."""

    ids: tuple[int, ...]


@dataclass(slots=True)
class MpPrio:
    """MP_PRIO (8684 §3.3.8). addr_id is a v0 field (6824 §3.3.8); None = absent."""

    backup: bool
    addr_id: int | None = None


@dataclass(slots=True)
class MpFail:
    """MP_FAIL (8684 §3.7): the 64-bit DSN where the checksum failed."""

    dsn: int


@dataclass(slots=True)
class MpFastclose:
    """MP_FASTCLOSE (8684 §3.5): the key of the option's receiver."""

    receiver_key: int


@dataclass(slots=True)
class MpTcpRst:
    """MP_TCPRST (8684 §3.6): reason code and the T (transient) flag."""

    reason: int
    transient: bool = False


Suboption = (MpCapable | MpJoinSyn | MpJoinSynAck | MpJoinAck | Dss | AddAddr | RemoveAddr
             | MpPrio | MpFail | MpFastclose | MpTcpRst)

_from = int.from_bytes
_unpack_QQ = struct.Struct("!QQ").unpack_from


def subtype_of(option: bytes | bytearray | memoryview) -> int:
    """Subtype of a whole MPTCP option, without parsing the rest."""
    if len(option) < 3 or option[0] != OPT_MPTCP:
        raise WireError("not an MPTCP option")
    return option[2] >> 4


def dss_length(flags: int, checksum: bool) -> int:
    """Option length of a DSS with these flags (8684 §3.3)."""
    n = 4
    if flags & DSS_FLAG_A:
        n += 8 if flags & DSS_FLAG_a else 4
    if flags & DSS_FLAG_M:
        n += (8 if flags & DSS_FLAG_m else 4) + 6 + (2 if checksum else 0)
    return n


# ---------------------------------------------------------------- parse

def _p_capable(o: bytes, n: int, syn: bool, ack: bool) -> MpCapable:
    version = o[2] & 0x0F
    flags = o[3]
    if n == 4:
        if version == 0:
            raise WireError("MP_CAPABLE v0 has no 4-byte form")
        return MpCapable(version, flags)
    if n == 12:
        return MpCapable(version, flags, _from(o[4:12], "big"))
    if n == 20 or (version != 0 and (n == 22 or n == 24)):
        sk, rk = _unpack_QQ(o, 4)
        if n == 20:
            return MpCapable(version, flags, sk, rk)
        dl = o[20] << 8 | o[21]
        if n == 22:
            return MpCapable(version, flags, sk, rk, dl)
        return MpCapable(version, flags, sk, rk, dl, o[22] << 8 | o[23])
    raise WireError(f"MP_CAPABLE v{version}: bad length {n}")


def _p_join(o: bytes, n: int, syn: bool, ack: bool) -> MpJoinSyn | MpJoinSynAck | MpJoinAck:
    if n == 12:
        return MpJoinSyn(_from(o[4:8], "big"), _from(o[8:12], "big"), o[3], bool(o[2] & 1))
    if n == 16:
        return MpJoinSynAck(_from(o[4:12], "big"), _from(o[12:16], "big"), o[3], bool(o[2] & 1))
    if n == 24:
        return MpJoinAck(bytes(o[4:24]))
    raise WireError(f"MP_JOIN: bad length {n}")


def _p_dss(o: bytes, n: int, syn: bool, ack: bool, checksum: bool | None = None) -> Dss:
    f = o[3]
    k = f & 0x0F
    form = _DSS_FORMS[(k, False)]
    if n != form.size:
        if not f & DSS_FLAG_M or n != form.size + 2:
            raise WireError(f"DSS: length {n} does not match flags {f:#04x}")
        if checksum is False:
            raise WireError("DSS carries a checksum that was not negotiated")
        form = _DSS_FORMS[(k, True)]
        v = form.unpack_from(o)
        if f & DSS_FLAG_A:
            return Dss(v[4], bool(f & DSS_FLAG_a), v[5], bool(f & DSS_FLAG_m), v[6], v[7], v[8],
                       bool(f & DSS_FLAG_F))
        return Dss(None, bool(f & DSS_FLAG_a), v[4], bool(f & DSS_FLAG_m), v[5], v[6], v[7],
                   bool(f & DSS_FLAG_F))
    if checksum and f & DSS_FLAG_M:
        raise WireError("DSS lacks the negotiated checksum")
    v = form.unpack_from(o)
    if f & DSS_FLAG_A:
        if f & DSS_FLAG_M:
            return Dss(v[4], bool(f & DSS_FLAG_a), v[5], bool(f & DSS_FLAG_m), v[6], v[7], None,
                       bool(f & DSS_FLAG_F))
        return Dss(v[4], bool(f & DSS_FLAG_a), None, bool(f & DSS_FLAG_m), None, None, None,
                   bool(f & DSS_FLAG_F))
    if f & DSS_FLAG_M:
        return Dss(None, bool(f & DSS_FLAG_a), v[4], bool(f & DSS_FLAG_m), v[5], v[6], None,
                   bool(f & DSS_FLAG_F))
    return Dss(None, bool(f & DSS_FLAG_a), None, bool(f & DSS_FLAG_m), None, None, None,
               bool(f & DSS_FLAG_F))


def _p_add_addr(o: bytes, n: int, syn: bool, ack: bool) -> AddAddr:
    nib = o[2] & 0x0F
    addr_id = o[3]
    if nib == 4 or nib == 6:  # v0: IPVer nibble, no HMAC (6824 §3.4.1)
        alen = 4 if nib == 4 else 16
        if n == 4 + alen:
            port = None
        elif n == 6 + alen:
            port = o[n - 2] << 8 | o[n - 1]
        else:
            raise WireError(f"ADD_ADDR v0 IPv{nib}: bad length {n}")
        addr = (ipaddress.IPv4Address if alen == 4 else ipaddress.IPv6Address)(bytes(o[4:4 + alen]))
        return AddAddr(addr_id, addr, port, None, False, 0)
    echo = bool(nib & 1)
    body = n - (4 if echo else 12)  # address (+ port)
    if body == 4 or body == 6:
        addr = ipaddress.IPv4Address(bytes(o[4:8]))
    elif body == 16 or body == 18:
        addr = ipaddress.IPv6Address(bytes(o[4:20]))
    else:
        raise WireError(f"ADD_ADDR v1 (echo={int(echo)}): bad length {n}")
    port = None
    if body & 2:
        port = o[2 + body] << 8 | o[3 + body]
    hmac = None if echo else _from(o[n - 8:n], "big")
    return AddAddr(addr_id, addr, port, hmac, echo, 1)


def _p_remove_addr(o: bytes, n: int, syn: bool, ack: bool) -> RemoveAddr:
    if n < 4:
        raise WireError("REMOVE_ADDR without an address id")
    return RemoveAddr(tuple(o[3:n]))


def _p_prio(o: bytes, n: int, syn: bool, ack: bool) -> MpPrio:
    if n == 3:
        return MpPrio(bool(o[2] & 1))
    if n == 4:
        return MpPrio(bool(o[2] & 1), o[3])
    raise WireError(f"MP_PRIO: bad length {n}")


def _p_fail(o: bytes, n: int, syn: bool, ack: bool) -> MpFail:
    if n != 12:
        raise WireError(f"MP_FAIL: bad length {n}")
    return MpFail(_from(o[4:12], "big"))


def _p_fastclose(o: bytes, n: int, syn: bool, ack: bool) -> MpFastclose:
    if n != 12:
        raise WireError(f"MP_FASTCLOSE: bad length {n}")
    return MpFastclose(_from(o[4:12], "big"))


def _p_tcprst(o: bytes, n: int, syn: bool, ack: bool) -> MpTcpRst:
    if n != 4:
        raise WireError(f"MP_TCPRST: bad length {n}")
    return MpTcpRst(o[3], bool(o[2] & 1))


_PARSERS = {
    MP_CAPABLE: _p_capable, MP_JOIN: _p_join, ADD_ADDR: _p_add_addr,
    REMOVE_ADDR: _p_remove_addr, MP_PRIO: _p_prio, MP_FAIL: _p_fail,
    MP_FASTCLOSE: _p_fastclose, MP_TCPRST: _p_tcprst,
}


def parse_mptcp(option: bytes | bytearray | memoryview, syn: bool = False, ack: bool = True,
                checksum: bool | None = None) -> Suboption:
    """Parse one whole MPTCP option (kind 30, length, body) into its suboption.

    `syn`/`ack` are the TCP flags of the segment (kept for callers that validate forms by
    context; the version nibble already tells v0 from v1). `checksum`: None = a DSS's
    length says whether it has a checksum field; True/False = it must (not) have one.
    Raises WireError for anything malformed or an unknown subtype.
    """
    n = len(option)
    if n < 3 or option[0] != OPT_MPTCP or option[1] != n:
        raise WireError("not a whole MPTCP option (kind 30, length == size, >= 3 bytes)")
    st = option[2] >> 4
    if st == DSS:
        if n < 4:
            raise WireError("DSS shorter than 4 bytes")
        return _p_dss(option, n, syn, ack, checksum)
    p = _PARSERS.get(st)
    if p is None:
        raise WireError(f"unknown MPTCP subtype {st}")
    if n < 4 and st != MP_PRIO:
        raise WireError(f"{SUBTYPE_NAMES[st]} shorter than 4 bytes")
    return p(option, n, syn, ack)


# ---------------------------------------------------------------- emit

def _u(v: int | None, bits: int, what: str) -> int:
    if not isinstance(v, int) or v < 0 or v >> bits:
        raise WireError(f"{what} must be a {bits}-bit unsigned int, got {v!r}")
    return v


def _e_capable(s: MpCapable) -> bytes:
    head = bytes((OPT_MPTCP, 0, MP_CAPABLE << 4 | _u(s.version, 4, "version"), _u(s.flags, 8, "flags")))
    if s.sender_key is None:
        if s.receiver_key is not None or s.data_len is not None or s.checksum is not None:
            raise WireError("MP_CAPABLE: later fields without sender_key")
        if s.version == 0:
            raise WireError("MP_CAPABLE v0 has no 4-byte form")
        body = b""
    elif s.receiver_key is None:
        if s.data_len is not None or s.checksum is not None:
            raise WireError("MP_CAPABLE: data_len/checksum without receiver_key")
        body = _u(s.sender_key, 64, "sender_key").to_bytes(8, "big")
    else:
        body = (_u(s.sender_key, 64, "sender_key").to_bytes(8, "big")
                + _u(s.receiver_key, 64, "receiver_key").to_bytes(8, "big"))
        if s.data_len is not None:
            if s.version == 0:
                raise WireError("MP_CAPABLE v0 has no data-level length")
            body += _u(s.data_len, 16, "data_len").to_bytes(2, "big")
            if s.checksum is not None:
                body += _u(s.checksum, 16, "checksum").to_bytes(2, "big")
        elif s.checksum is not None:
            raise WireError("MP_CAPABLE: checksum without data_len")
    out = bytearray(head + body)
    out[1] = len(out)
    return bytes(out)


def _e_join_syn(s: MpJoinSyn) -> bytes:
    return (bytes((OPT_MPTCP, 12, MP_JOIN << 4 | bool(s.backup), _u(s.addr_id, 8, "addr_id")))
            + _u(s.token, 32, "token").to_bytes(4, "big") + _u(s.nonce, 32, "nonce").to_bytes(4, "big"))


def _e_join_synack(s: MpJoinSynAck) -> bytes:
    return (bytes((OPT_MPTCP, 16, MP_JOIN << 4 | bool(s.backup), _u(s.addr_id, 8, "addr_id")))
            + _u(s.hmac, 64, "hmac").to_bytes(8, "big") + _u(s.nonce, 32, "nonce").to_bytes(4, "big"))


def _e_join_ack(s: MpJoinAck) -> bytes:
    h = s.hmac
    if not isinstance(h, (bytes, bytearray)) or len(h) != 20:
        raise WireError("MP_JOIN ACK hmac must be 20 bytes")
    return bytes((OPT_MPTCP, 24, MP_JOIN << 4, 0)) + bytes(h)


def _dss_struct(flags: int, csum: bool) -> struct.Struct:
    """Struct for a DSS form: header, [data ACK], [DSN, SSN, length, [checksum]]."""
    fmt = "!BBBB"
    if flags & DSS_FLAG_A:
        fmt += "Q" if flags & DSS_FLAG_a else "I"
    if flags & DSS_FLAG_M:
        fmt += ("Q" if flags & DSS_FLAG_m else "I") + "IH" + ("H" if csum else "")
    return struct.Struct(fmt)


# (flags & 0x0f, has checksum) -> Struct, for every form
_DSS_FORMS = {(f, c): _dss_struct(f, c) for f in range(16) for c in (False, True)}


def _e_dss(s: Dss) -> bytes:
    f = (DSS_FLAG_a if s.data_ack8 else 0) | (DSS_FLAG_m if s.dsn8 else 0)
    fin = DSS_FLAG_F if s.data_fin else 0
    da = s.data_ack
    try:
        if s.dsn is not None:
            f |= DSS_FLAG_M
            if s.checksum is not None:
                tail = (s.dsn, s.ssn, s.data_len, s.checksum)
                form = _DSS_FORMS[(f | (DSS_FLAG_A if da is not None else 0), True)]
            else:
                tail = (s.dsn, s.ssn, s.data_len)
                form = _DSS_FORMS[(f | (DSS_FLAG_A if da is not None else 0), False)]
        else:
            if s.ssn is not None or s.data_len is not None or s.checksum is not None:
                raise WireError("DSS: ssn/data_len/checksum without dsn")
            tail = ()
            form = _DSS_FORMS[(f | (DSS_FLAG_A if da is not None else 0), False)]
        if da is not None:
            f |= DSS_FLAG_A
            return form.pack(OPT_MPTCP, form.size, DSS << 4, f | fin, da, *tail)
        return form.pack(OPT_MPTCP, form.size, DSS << 4, f | fin, *tail)
    except struct.error as e:
        raise WireError(f"DSS field out of range or missing: {s}") from e


def _e_add_addr(s: AddAddr) -> bytes:
    try:
        addr = ipaddress.ip_address(s.address)
    except ValueError as e:
        raise WireError(f"ADD_ADDR: bad address {s.address!r}") from e
    packed = addr.packed
    port = b"" if s.port is None else _u(s.port, 16, "port").to_bytes(2, "big")
    if s.version == 0:
        if s.echo or s.hmac is not None:
            raise WireError("ADD_ADDR v0 has no echo flag and no HMAC")
        nib = 4 if len(packed) == 4 else 6
        tail = b""
    else:
        nib = 1 if s.echo else 0
        if s.echo:
            if s.hmac is not None:
                raise WireError("ADD_ADDR echo carries no HMAC (8684 §3.4.1)")
            tail = b""
        else:
            if s.hmac is None:
                raise WireError("ADD_ADDR v1 without echo needs an HMAC (8684 §3.4.1)")
            tail = _u(s.hmac, 64, "hmac").to_bytes(8, "big")
    body = packed + port + tail
    return bytes((OPT_MPTCP, 4 + len(body), ADD_ADDR << 4 | nib, _u(s.addr_id, 8, "addr_id"))) + body


def _e_remove_addr(s: RemoveAddr) -> bytes:
    ids = tuple(s.ids)
    if not ids or len(ids) > 37:
        raise WireError("REMOVE_ADDR needs 1..37 address ids")
    try:
        b = bytes(ids)
    except (ValueError, TypeError) as e:
        raise WireError(f"REMOVE_ADDR: bad ids {ids!r}") from e
    return bytes((OPT_MPTCP, 3 + len(b), REMOVE_ADDR << 4)) + b


def _e_prio(s: MpPrio) -> bytes:
    head = bytes((OPT_MPTCP, 3 if s.addr_id is None else 4, MP_PRIO << 4 | bool(s.backup)))
    if s.addr_id is None:
        return head
    return head + bytes((_u(s.addr_id, 8, "addr_id"),))


def _e_fail(s: MpFail) -> bytes:
    return bytes((OPT_MPTCP, 12, MP_FAIL << 4, 0)) + _u(s.dsn, 64, "dsn").to_bytes(8, "big")


def _e_fastclose(s: MpFastclose) -> bytes:
    return (bytes((OPT_MPTCP, 12, MP_FASTCLOSE << 4, 0))
            + _u(s.receiver_key, 64, "receiver_key").to_bytes(8, "big"))


def _e_tcprst(s: MpTcpRst) -> bytes:
    return bytes((OPT_MPTCP, 4, MP_TCPRST << 4 | bool(s.transient), _u(s.reason, 8, "reason")))


_EMITTERS = {
    MpCapable: _e_capable, MpJoinSyn: _e_join_syn, MpJoinSynAck: _e_join_synack,
    MpJoinAck: _e_join_ack, Dss: _e_dss, AddAddr: _e_add_addr, RemoveAddr: _e_remove_addr,
    MpPrio: _e_prio, MpFail: _e_fail, MpFastclose: _e_fastclose, MpTcpRst: _e_tcprst,
}


def emit(sub: Suboption) -> bytes:
    """The whole MPTCP option (kind 30, length, body) for a suboption object."""
    e = _EMITTERS.get(type(sub))
    if e is None:
        raise WireError(f"not an MPTCP suboption: {type(sub).__name__}")
    return e(sub)
