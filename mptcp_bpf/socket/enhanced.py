"""The enhanced socket API of the multipath-tcp.org fork on our sockets.

`setsockopt`/`getsockopt(IPPROTO_TCP, MPTCP_*)` take and return the C layouts of
mptcp_bpf.sockopt with the fork's errors (REFERENCE.md §1). Where the C call passes a
struct *into* getsockopt (GET_SUB_TUPLE carries the id, SUB_GETSOCKOPT carries pointers),
Python's `getsockopt(level, opt, buflen)` cannot, so ours also accepts a bytes-like buffer
as the third argument: the struct as C would fill it before the call; a bytearray is also
updated in place. Pointers inside mptcp_sub_getsockopt/setsockopt are real addresses
(ctypes buffers), exactly as in C.

Pythonic wrappers: sub_ids(), sub_tuple(id), open_subflow(local, remote),
close_subflow(id), subflow_tcp_info(id), set_subflow_option(id, level, opt, value).
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import socket as _socket
import time
from typing import Any

from mptcp_bpf import sockopt as so
from mptcp_bpf.plugins import names as plugin_names

SOL_SOCKET = _socket.SOL_SOCKET


def _err(code: int, what: str = "") -> OSError:
    return OSError(code, f"{os.strerror(code)}: {what}" if what else os.strerror(code))


def _ip(v: Any) -> str:
    return str(ipaddress.ip_address(v))


def tcp_info_of(tcp: Any) -> so.TcpInfo:
    """A TcpInfo from a tcp.subflow.Subflow (its tcp_info() dict, Linux field names)."""
    info = so.TcpInfo()
    src: dict[str, Any] = {}
    getter = getattr(tcp, "tcp_info", None)
    if callable(getter):
        try:
            src = dict(getter())
        except Exception:
            src = {}
    for key, val in src.items():
        name = key[5:] if key.startswith("tcpi_") else key
        if name == "state" and isinstance(val, str):
            val = so.TCP_STATES.get(val.upper().replace("SYN_RCVD", "SYN_RECV"), 0)
        if hasattr(info, name) and isinstance(val, (int, float, bool)):
            setattr(info, name, int(val))
    if not src and tcp is not None:  # a minimal view from the attributes every Subflow has
        srtt = getattr(tcp, "srtt", None)
        info.rtt = int((srtt or 0) * 1e6)
        info.snd_cwnd = int(getattr(tcp, "cwnd", 0) // max(getattr(tcp, "mss", 1), 1))
        info.snd_mss = int(getattr(tcp, "mss", 0))
    return info


class EnhancedMixin:
    """setsockopt/getsockopt and the enhanced-API wrappers of MptcpSocket."""

    family: int
    _conn: Any
    _opts: dict[str, Any]
    _nodelay: bool

    # helpers provided by MptcpSocket
    def _check_open(self) -> None: ...  # pragma: no cover

    @property
    def _lock(self) -> Any:
        return self._stack.lock  # type: ignore[attr-defined]

    def _is_mptcp(self) -> bool:
        c = self._conn
        if c is None:
            return self._mptcp_wanted()  # type: ignore[attr-defined]
        return not getattr(c, "fallback", False) and getattr(c, "mptcp", True) is not False

    def _require_conn(self, option: int) -> Any:
        so.check_mptcp_socket(self._is_mptcp(), option)
        if self._conn is None:
            raise _err(errno.ENOTCONN, so.OPTION_NAMES.get(option, str(option)))
        return self._conn

    def _subflows(self) -> list[Any]:
        c = self._conn
        return [sf for sf in (getattr(c, "subflows", None) or [])
                if getattr(sf, "mp_state", "") != "closed"] if c is not None else []

    def _subflow(self, sf_id: int, option: str) -> Any:
        subs = self._subflows()
        so.check_sub_id_known(sf_id, [s.id for s in subs], option)
        return next(s for s in subs if s.id == sf_id)

    # ------------------------------------------------------------------ setsockopt
    def setsockopt(self, level: int, optname: int, value: Any, optlen: int | None = None) -> None:
        self._check_open()
        if value is None and optlen is not None:
            value = b"\0" * optlen
        with self._lock:
            if level == SOL_SOCKET:
                self._opts[f"sol_{optname}"] = value  # SO_REUSEADDR & co: accepted, no effect
                return
            if level == so.SOL_TCP:
                return self._set_tcp(optname, value)
            if level in (so.SOL_IP, so.SOL_IPV6) and optname in (so.IP_TOS, so.IPV6_TCLASS):
                self._opts["tos"] = int(value) if isinstance(value, int) else so.unpack_int(bytes(value))
                for sf in self._subflows():
                    self._apply_sub_opt(sf, level, optname, self._opts["tos"])
                return
            raise _err(errno.ENOPROTOOPT)

    def _set_tcp(self, optname: int, value: Any) -> None:
        raw = value.to_bytes(4, "little", signed=True) if isinstance(value, int) else bytes(value)
        if optname == so.TCP_NODELAY:
            self._nodelay = bool(so.unpack_int(raw))
            for sf in self._subflows():
                self._apply_sub_opt(sf, so.SOL_TCP, so.TCP_NODELAY, int(self._nodelay))
            return
        if optname == so.MPTCP_ENABLED:
            so.check_enabled_set(int(self._stack.config.enabled))  # type: ignore[attr-defined]
            if self._conn is not None or getattr(self, "_listener", None) is not None:
                raise _err(errno.EPERM, "MPTCP_ENABLED after connect/listen")
            self._opts["enabled"] = bool(so.unpack_int(raw))
            return
        if optname in (so.MPTCP_SCHEDULER, so.MPTCP_PATH_MANAGER):
            kind = "sched" if optname == so.MPTCP_SCHEDULER else "pm"
            closed = self._conn is None and getattr(self, "_listener", None) is None
            name = so.parse_name_option(raw, optname, self._mptcp_wanted(), closed,  # type: ignore[attr-defined]
                                        plugin_names(kind))
            self._opts["scheduler" if kind == "sched" else "path_manager"] = name
            return
        if optname == so.MPTCP_CLOSE_SUB_ID:
            so.check_close_sub_id_len(len(raw))
            conn = self._require_conn(optname)
            sf_id = so.unpack_close_sub_id(raw)
            self._subflow(sf_id, "MPTCP_CLOSE_SUB_ID")
            self._stack.call(conn.close_subflow, sf_id)  # type: ignore[attr-defined]
            return
        if optname == so.MPTCP_OPEN_SUB_TUPLE:
            fam = so.check_open_sub_tuple_len(len(raw))
            conn = self._require_conn(optname)
            tup = so.SubTuple.unpack(raw)
            if fam != self.family and not (self.family == _socket.AF_INET6):
                raise _err(errno.EINVAL, "address family differs from the socket's")
            sf = self._stack.call(  # type: ignore[attr-defined]
                conn.open_subflow, ipaddress.ip_address(tup.local.host)
                if tup.local.host not in ("0.0.0.0", "::") else None,
                ipaddress.ip_address(tup.remote.host), tup.remote.port, tup.local.port)
            if sf is None:
                raise _err(errno.EINVAL, "the connection refused the new subflow")
            return
        if optname == so.MPTCP_SUB_SETSOCKOPT:
            so.check_sub_sockopt_len(len(raw), "MPTCP_SUB_SETSOCKOPT")
            self._require_conn(optname)
            req = so.SubSetsockopt.unpack(raw)
            sf = self._subflow(req.id, "MPTCP_SUB_SETSOCKOPT")
            if not req.optval:
                raise _err(errno.EFAULT, "optval is NULL")
            data = ctypes.string_at(req.optval, req.optlen)
            self._apply_sub_opt(sf, req.level, req.optname, so.unpack_int(data))
            return
        if optname in (so.MPTCP_GET_SUB_IDS, so.MPTCP_GET_SUB_TUPLE, so.MPTCP_SUB_GETSOCKOPT,
                       so.MPTCP_INFO, so.MPTCP_GET_SUB_INFO):
            raise _err(errno.ENOPROTOOPT, f"{so.OPTION_NAMES[optname]} is get-only")
        raise _err(errno.ENOPROTOOPT)

    def _apply_sub_opt(self, sf: Any, level: int, optname: int, value: int) -> None:
        """IP_TOS / IPV6_TCLASS / TCP_NODELAY on one subflow (the TCP endpoint's fields)."""
        tcp = getattr(sf, "tcp", None)
        if (level, optname) in ((so.SOL_IP, so.IP_TOS), (so.SOL_IPV6, so.IPV6_TCLASS)):
            for obj in (tcp, sf):
                if obj is not None:
                    try:
                        obj.tos = value & 0xFF
                    except AttributeError:
                        pass
            return
        if (level, optname) == (so.SOL_TCP, so.TCP_NODELAY):
            for obj in (tcp, sf):
                if obj is not None:
                    try:
                        obj.nodelay = bool(value)
                    except AttributeError:
                        pass
            return
        raise _err(errno.ENOPROTOOPT, "MPTCP_SUB_SETSOCKOPT supports IP_TOS, IPV6_TCLASS, "
                                      "TCP_NODELAY")

    # ------------------------------------------------------------------ getsockopt
    def getsockopt(self, level: int, optname: int, buflen: Any = None) -> Any:
        self._check_open()
        buf: bytes | None = None
        out_buf = None
        if isinstance(buflen, (bytes, bytearray, memoryview)):
            buf = bytes(buflen)
            out_buf = buflen if isinstance(buflen, bytearray) else None
            buflen = len(buf)
        with self._lock:
            result = self._get(level, optname, buflen, buf)
        if out_buf is not None and isinstance(result, bytes):
            out_buf[:len(result)] = result
        return result

    def _get(self, level: int, optname: int, buflen: int | None, buf: bytes | None) -> Any:
        if level == SOL_SOCKET:
            if optname == _socket.SO_ERROR:
                err = self._conn.error if self._conn is not None else 0
                return err or 0
            if optname == _socket.SO_TYPE:
                return _socket.SOCK_STREAM
            if optname == _socket.SO_ACCEPTCONN:
                return int(getattr(self, "_listener", None) is not None)
            val = self._opts.get(f"sol_{optname}", 0)
            return val if isinstance(val, int) else so.unpack_int(bytes(val))
        if level in (so.SOL_IP, so.SOL_IPV6) and optname in (so.IP_TOS, so.IPV6_TCLASS):
            return self._opts.get("tos", 0)
        if level != so.SOL_TCP:
            raise _err(errno.ENOPROTOOPT)
        plain = buflen is None
        n = buflen or 0

        def ret(data: bytes) -> Any:
            return data[:n] if n else data

        if optname == so.TCP_NODELAY:
            return int(self._nodelay)
        if optname == so.TCP_INFO:
            subs = self._subflows()
            info = tcp_info_of(subs[0].tcp) if subs else so.TcpInfo(state=7)
            return info.pack(n or so.TCP_INFO_SIZE)
        if optname == so.MPTCP_ENABLED:
            v = int(self._is_mptcp())
            return v if plain else ret(so.pack_int(v))
        if optname in (so.MPTCP_SCHEDULER, so.MPTCP_PATH_MANAGER):
            key = "scheduler" if optname == so.MPTCP_SCHEDULER else "path_manager"
            name = self._opts.get(key)
            if name is None and self._conn is not None:
                name = getattr(self._conn, key, None)
            if name is None:
                name = getattr(self._stack.config, key)  # type: ignore[attr-defined]
            return ret(so.pack_name(name)) if n else so.pack_name(name)
        so.check_mptcp_socket(self._is_mptcp(), optname)
        if optname == so.MPTCP_GET_SUB_IDS:
            subs = self._subflows()
            if n:
                so.check_sub_ids_len(n, len(subs))
            return so.pack_sub_ids(self._status(sf) for sf in subs)
        if optname == so.MPTCP_GET_SUB_TUPLE:
            if buf is None:
                raise _err(errno.EINVAL, "pass the struct (id at byte 0) as the buffer")
            sf = self._subflow(buf[0], "MPTCP_GET_SUB_TUPLE")
            fam = _socket.AF_INET6 if sf.family == 6 else _socket.AF_INET
            so.check_get_sub_tuple_len(len(buf), fam)
            return so.SubTuple(sf.id, so.SockAddr(_ip(sf.local[0]), sf.local[1]),
                               so.SockAddr(_ip(sf.remote[0]), sf.remote[1])).pack()
        if optname == so.MPTCP_SUB_GETSOCKOPT:
            if buf is None:
                raise _err(errno.EINVAL, "pass struct mptcp_sub_getsockopt as the buffer")
            req = so.SubGetsockopt.unpack(buf)
            sf = self._subflow(req.id, "MPTCP_SUB_GETSOCKOPT")
            if not req.optval or not req.optlen:
                raise _err(errno.EFAULT, "optval or optlen is NULL")
            want = ctypes.c_uint.from_address(req.optlen).value
            data = self._sub_get(sf, req.level, req.optname, want)
            ctypes.memmove(req.optval, data, len(data))
            ctypes.c_uint.from_address(req.optlen).value = len(data)
            return buf
        if optname == so.MPTCP_INFO:
            return self._mptcp_info(buf)
        raise _err(errno.ENOPROTOOPT)

    def _sub_get(self, sf: Any, level: int, optname: int, want: int) -> bytes:
        if (level, optname) == (so.SOL_TCP, so.TCP_INFO):
            return tcp_info_of(sf.tcp).pack(min(want, so.TCP_INFO_SIZE))
        if (level, optname) == (so.SOL_TCP, so.TCP_NODELAY):
            return so.pack_int(int(bool(getattr(sf.tcp, "nodelay", self._nodelay))))[:want]
        if (level, optname) in ((so.SOL_IP, so.IP_TOS), (so.SOL_IPV6, so.IPV6_TCLASS)):
            return so.pack_int(int(getattr(sf.tcp, "tos", 0)))[:want]
        raise _err(errno.ENOPROTOOPT)

    def _mptcp_info(self, buf: bytes | None) -> bytes:
        """MPTCP_INFO as in the fork: the caller's struct mptcp_info points at its buffers
        (meta_info, initial, subflows, subflow_info) and gives their lengths; each is filled
        up to its length and the lengths used are written back."""
        if buf is None:
            raise _err(errno.EINVAL, "pass struct mptcp_info (with buffer pointers) as the buffer")
        self._require_conn(so.MPTCP_INFO)
        m = so.MptcpInfo.unpack(buf)
        subs = self._subflows()
        tcp_len = min(m.tcp_info_len, so.TCP_INFO_SIZE)
        if m.meta_info and m.meta_len:
            data = self._meta_info().pack(min(m.meta_len, so.MPTCP_META_INFO_SIZE))
            ctypes.memmove(m.meta_info, data, len(data))
            m.meta_len = len(data)
        initial = next((sf for sf in subs if sf.id == 0), None)
        if m.initial and tcp_len and initial is not None:
            ctypes.memmove(m.initial, tcp_info_of(initial.tcp).pack(tcp_len), tcp_len)
        if m.subflows and tcp_len:
            data, m.sub_len = so.fill_array(
                [tcp_info_of(sf.tcp).pack(so.TCP_INFO_SIZE) for sf in subs], tcp_len, m.sub_len)
            ctypes.memmove(m.subflows, data, len(data))
        if m.subflow_info and m.sub_info_len:
            data, m.total_sub_info_len = so.fill_array(
                [so.SubInfo(so.SockAddr(_ip(sf.local[0]), sf.local[1]),
                            so.SockAddr(_ip(sf.remote[0]), sf.remote[1])).pack() for sf in subs],
                min(m.sub_info_len, so.MPTCP_SUB_INFO_SIZE), m.total_sub_info_len)
            ctypes.memmove(m.subflow_info, data, len(data))
        return m.pack()[:len(buf)]

    def _meta_info(self) -> so.MptcpMetaInfo:
        """struct mptcp_meta_info: the connection-level counterpart of tcp_info."""
        c = self._conn
        info = c.info() if c is not None else {}
        # data sequence numbers are relative inside the connection: the first byte is 1
        una, nxt, rcv = (int(info.get(k) or 1) for k in ("snd_una", "snd_nxt", "rcv_nxt"))
        subs = self._subflows()
        rto = getattr(subs[0].tcp, "rto", 0) if subs else 0
        return so.MptcpMetaInfo(
            state=so.TCP_STATES.get(str(info.get("state", "CLOSE")), 7),
            rto=int(rto * 1e6), unacked=max(0, nxt - una),
            bytes_acked=max(0, una - 1), bytes_received=max(0, rcv - 1))

    @staticmethod
    def _status(sf: Any) -> so.SubStatus:
        est = getattr(sf, "mp_state", "") == "established"
        return so.SubStatus(sf.id, slave_sk=bool(getattr(sf, "join", sf.id != 0)),
                            fully_established=est, attached=True,
                            low_prio=bool(getattr(sf, "backup", False)),
                            pre_established=getattr(sf, "mp_state", "") == "pre_established")

    # ------------------------------------------------------------------ wrappers
    def sub_ids(self) -> list[so.SubStatus]:
        """The subflows (MPTCP_GET_SUB_IDS) as dataclasses."""
        raw = self.getsockopt(so.SOL_TCP, so.MPTCP_GET_SUB_IDS,
                              so.sub_ids_size(so.MAX_SUBFLOWS))
        return so.unpack_sub_ids(raw)

    def sub_tuple(self, sf_id: int) -> so.SubTuple:
        size = so.SUB_TUPLE_V6_SIZE
        raw = self.getsockopt(so.SOL_TCP, so.MPTCP_GET_SUB_TUPLE,
                              bytes((sf_id,)) + b"\0" * (size - 1))
        return so.SubTuple.unpack(raw)

    def open_subflow(self, local: tuple[str, int] | None, remote: tuple[str, int]) -> None:
        """MPTCP_OPEN_SUB_TUPLE; local=None or ('', 0) lets the stack choose."""
        v6 = ":" in remote[0]
        wild = "::" if v6 else "0.0.0.0"
        lhost, lport = (local or ("", 0))
        tup = so.SubTuple(0, so.SockAddr(lhost or wild, lport), so.SockAddr(remote[0], remote[1]))
        self.setsockopt(so.SOL_TCP, so.MPTCP_OPEN_SUB_TUPLE, tup.pack())

    def close_subflow(self, sf_id: int) -> None:
        self.setsockopt(so.SOL_TCP, so.MPTCP_CLOSE_SUB_ID, so.pack_close_sub_id(sf_id))

    def subflow_tcp_info(self, sf_id: int) -> so.TcpInfo:
        """TCP_INFO of one subflow through MPTCP_SUB_GETSOCKOPT (ctypes buffers, as in C)."""
        val = ctypes.create_string_buffer(so.TCP_INFO_SIZE)
        ln = ctypes.c_uint(so.TCP_INFO_SIZE)
        req = so.SubGetsockopt(sf_id, so.SOL_TCP, so.TCP_INFO, ctypes.addressof(val),
                               ctypes.addressof(ln))
        self.getsockopt(so.SOL_TCP, so.MPTCP_SUB_GETSOCKOPT, req.pack())
        return so.TcpInfo.unpack(val.raw[:ln.value])

    def set_subflow_option(self, sf_id: int, level: int, optname: int, value: int) -> None:
        """MPTCP_SUB_SETSOCKOPT with an int value (IP_TOS, IPV6_TCLASS, TCP_NODELAY)."""
        val = ctypes.c_int(value)
        req = so.SubSetsockopt(sf_id, level, optname, ctypes.addressof(val), 4)
        self.setsockopt(so.SOL_TCP, so.MPTCP_SUB_SETSOCKOPT, req.pack())

    def wait_subflows(self, count: int, timeout: float = 10.0) -> int:
        """Wait until at least `count` subflows are established (tests, tools)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                n = sum(1 for s in self._subflows() if getattr(s, "mp_state", "") == "established")
            if n >= count:
                return n
            time.sleep(0.02)
        return n
