"""`mptcp_bpf.socket()`: a stream socket of our MPTCP stack that behaves like `socket.socket`.

Blocking, non-blocking and timeout modes, and the errors, are the standard library's:
BlockingIOError (EAGAIN / EINPROGRESS), socket.timeout, ConnectionRefusedError,
ConnectionResetError, BrokenPipeError, TimeoutError (ETIMEDOUT), OSError(EBADF) after close.

Every call takes the stack's lock, works on the connection, and (through `stack.call`)
sends what it produced. The loop thread reports readiness through the connection's
callbacks, which notify a Condition on the same lock and keep an eventfd readable while
the socket is readable, so `fileno()` works with selectors and asyncio.

The enhanced API (socket options of the multipath-tcp.org fork and the pythonic wrappers)
lives in mptcp_bpf.socket.enhanced, mixed into MptcpSocket.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket as _socket
import threading
import time
from typing import Any, Callable

from mptcp_bpf.socket import enhanced
from mptcp_bpf.stack import Stack

AF_INET = _socket.AF_INET
AF_INET6 = _socket.AF_INET6
SOCK_STREAM = _socket.SOCK_STREAM
SHUT_RD = _socket.SHUT_RD
SHUT_WR = _socket.SHUT_WR
SHUT_RDWR = _socket.SHUT_RDWR

timeout = _socket.timeout
SEND_CHUNK = 256 * 1024


def _oserror(code: int, what: str = "") -> OSError:
    msg = os.strerror(code)
    return OSError(code, f"{msg}: {what}" if what else msg)


def _fam(family: int) -> int:
    return 6 if family == AF_INET6 else 4


class MptcpSocket(enhanced.EnhancedMixin):
    """A stream socket on the namespace's MPTCP stack (see the module docstring)."""

    def __init__(self, family: int = AF_INET, type: int = SOCK_STREAM, proto: int = 0,
                 *, stack: Stack | None = None, _conn: Any = None) -> None:
        if family not in (AF_INET, AF_INET6):
            raise _oserror(errno.EAFNOSUPPORT, "mptcp_bpf sockets are AF_INET or AF_INET6")
        base_type = type & ~(getattr(_socket, "SOCK_NONBLOCK", 0) | getattr(_socket, "SOCK_CLOEXEC", 0))
        if base_type != SOCK_STREAM:
            raise _oserror(errno.EPROTONOSUPPORT, "mptcp_bpf sockets are SOCK_STREAM only")
        self.family = family
        self.type = SOCK_STREAM
        self.proto = proto
        self._stack = stack if stack is not None else namespace_stack()
        self._cond = threading.Condition(self._stack.lock)
        self._timeout: float | None = _socket.getdefaulttimeout()
        if type & getattr(_socket, "SOCK_NONBLOCK", 0):
            self._timeout = 0.0
        self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._efd_set = False
        self._closed = False
        self._bound: tuple[str, int] | None = None
        self._reserved: tuple[int, int] | None = None
        self._listener: Any = None
        self._accept_q: list[Any] = []
        self._conn: Any = None
        self._rd_shut = False
        self._wr_shut = False
        self._pending_error: int | None = None
        self._waker: Callable[[], None] | None = None
        self._opts: dict[str, Any] = {}
        self._nodelay = False
        if _conn is not None:
            self._attach(_conn)

    # ------------------------------------------------------------------ readiness
    def _attach(self, conn: Any) -> None:
        self._conn = conn
        conn.on_readable = self._notify
        conn.on_writable = self._notify
        conn.on_state = self._on_state
        self._notify()

    def _on_state(self, state: Any = None) -> None:
        self._notify()

    def _readable(self) -> bool:
        if self._closed:
            return False
        if self._listener is not None:
            return bool(self._accept_q)
        c = self._conn
        if c is None:
            return False
        if self._rd_shut:
            return True
        try:
            return bool(c.readable() or c.eof or c.error)
        except Exception:
            return True

    def _notify(self, *args: Any) -> None:
        """Called by the connection (loop thread or ours, lock held): wake waiters."""
        try:
            self._cond.notify_all()
        except RuntimeError:
            pass
        self._update_fd()
        if self._waker is not None:
            self._waker()

    def _update_fd(self) -> None:
        if self._closed:
            return
        want = self._readable()
        if want and not self._efd_set:
            self._efd_set = True
            os.eventfd_write(self._efd, 1)
        elif not want and self._efd_set:
            self._efd_set = False
            try:
                os.eventfd_read(self._efd)
            except BlockingIOError:
                pass

    def _wait(self, pred: Callable[[], bool], deadline: float | None) -> None:
        """Wait (lock held) until pred(); timeout -> socket.timeout; non-blocking handled by caller."""
        while not pred():
            if self._stack.closed:
                # a caller blocked in accept/recv/connect must not outlive its stack
                raise _oserror(errno.ENETDOWN, "the MPTCP stack of this socket was stopped")
            if deadline is None:
                self._cond.wait(1.0)
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise timeout("timed out")
                self._cond.wait(min(remaining, 1.0))

    def _deadline(self) -> float | None:
        return None if self._timeout is None else time.monotonic() + self._timeout

    def _check_open(self) -> None:
        if self._closed:
            raise _oserror(errno.EBADF)

    def _raise_conn_error(self) -> None:
        err = self._conn.error if self._conn is not None else None
        if err:
            raise _oserror(err)

    # ------------------------------------------------------------------ addresses
    def _resolve(self, address: Any, passive: bool = False) -> tuple[str | None, int]:
        if not isinstance(address, tuple) or len(address) < 2:
            raise TypeError(f"{'AF_INET6' if self.family == AF_INET6 else 'AF_INET'} address "
                            "must be a tuple (host, port)")
        host, port = address[0], address[1]
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise OverflowError("port must be 0-65535.")
        if host in ("", None):
            return None, port
        if host == "<broadcast>":
            raise _oserror(errno.EADDRNOTAVAIL)
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            infos = _socket.getaddrinfo(host, port, self.family, SOCK_STREAM)
            ip = ipaddress.ip_address(infos[0][4][0])
        if self.family == AF_INET6 and ip.version == 4:
            raise _socket.gaierror(_socket.EAI_ADDRFAMILY, "Address family for hostname not supported")
        if self.family == AF_INET and ip.version == 6:
            raise _socket.gaierror(_socket.EAI_ADDRFAMILY, "Address family for hostname not supported")
        if passive and ip.is_unspecified:
            return None, port
        return str(ip), port

    def _fmt(self, ip: Any, port: int) -> tuple:
        if ip is None:
            ip = "::" if self.family == AF_INET6 else "0.0.0.0"
        ip = str(ipaddress.ip_address(ip if not isinstance(ip, bytes) else ip))
        if self.family == AF_INET6:
            return (ip, port, 0, 0)
        return (ip, port)

    # ------------------------------------------------------------------ mptcp on/off
    def _mptcp_wanted(self) -> bool:
        """net.mptcp.mptcp_enabled: 0 off, 1 every socket (unless it opts out), 2 opt-in."""
        mode = int(self._stack.config.enabled)
        own = self._opts.get("enabled")
        if mode == 0:
            return False
        if mode == 2:
            return bool(own)
        return own is None or bool(own)

    def _conn_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"mptcp": self._mptcp_wanted()}
        for key in ("path_manager", "scheduler", "cc"):
            if key in self._opts:
                opts[key] = self._opts[key]
        return opts

    # ------------------------------------------------------------------ the socket API
    def bind(self, address: Any) -> None:
        self._check_open()
        ip, port = self._resolve(address, passive=True)
        with self._stack.lock:
            if self._bound is not None or self._conn is not None:
                raise _oserror(errno.EINVAL, "already bound")
            port = self._stack.reserve_port(_fam(self.family), port, ip)
            self._reserved = (_fam(self.family), port)
            self._bound = (ip, port)

    def listen(self, backlog: int = 128) -> None:
        self._check_open()
        with self._stack.lock:
            if self._conn is not None:
                raise _oserror(errno.EINVAL)
            if self._listener is not None:
                return
            if self._bound is None:
                self.bind(("", 0))
            ip, port = self._bound  # type: ignore[misc]
            opts = self._conn_options()

            def listen() -> Any:
                return self._stack.host.listen(ip, port, backlog=max(1, int(backlog)),
                                               on_accept=self._on_accept, **opts)
            try:
                self._listener = self._stack.call(listen)
            except TypeError:
                self._listener = self._stack.call(
                    lambda: self._stack.host.listen(ip, port, max(1, int(backlog)),
                                                    self._on_accept))

    def _on_accept(self, conn: Any) -> None:
        # ours from now on: closing the listener must not abort it (the host's listener
        # aborts what is still in its own queue)
        q = getattr(self._listener, "queue", None)
        if q is not None:
            try:
                q.remove(conn)
            except ValueError:
                pass
        self._accept_q.append(conn)
        self._notify()

    def accept(self) -> tuple["MptcpSocket", tuple]:
        self._check_open()
        with self._stack.lock:
            if self._listener is None:
                raise _oserror(errno.EINVAL, "socket is not listening")
            if not self._accept_q:
                if self._timeout == 0.0:
                    raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
                self._wait(lambda: bool(self._accept_q) or self._closed, self._deadline())
                self._check_open()
            conn = self._accept_q.pop(0)
            self._update_fd()
            sock = MptcpSocket(self.family, stack=self._stack, _conn=conn)
            if _socket.getdefaulttimeout() is None:
                sock._timeout = None
            return sock, sock._peer()

    def connect(self, address: Any) -> None:
        err = self._connect(address, raise_errors=True)
        if err:
            raise _oserror(err)

    def connect_ex(self, address: Any) -> int:
        try:
            return self._connect(address, raise_errors=False)
        except timeout:
            return errno.EAGAIN
        except _socket.gaierror:
            raise
        except OSError as exc:
            return exc.errno or errno.EINVAL

    def _connect(self, address: Any, raise_errors: bool) -> int:
        self._check_open()
        ip, port = self._resolve(address)
        if ip is None:
            ip = "::1" if self.family == AF_INET6 else "127.0.0.1"
        stack = self._stack
        with stack.lock:
            if self._listener is not None:
                raise _oserror(errno.EINVAL, "socket is listening")
            if self._conn is not None:
                c = self._conn
                if c.connected:
                    return errno.EISCONN
                if c.error:
                    return c.error
                if self._timeout == 0.0:
                    return errno.EALREADY
            else:
                local = None
                if self._bound is not None:
                    local = (self._bound[0] or stack.source_for(ip) or "", self._bound[1])
                opts = self._conn_options()
                conn = stack.call(lambda: stack.host.connect((ip, port), local=local,
                                                             now=time.monotonic(), **opts))
                self._attach(conn)
            c = self._conn
            if c.connected:
                return 0
            if c.error:
                return c.error
            if self._timeout == 0.0:
                if raise_errors:
                    raise BlockingIOError(errno.EINPROGRESS, "Operation now in progress")
                return errno.EINPROGRESS
            self._wait(lambda: c.connected or bool(c.error) or self._closed, self._deadline())
            self._check_open()
            if c.error:
                return c.error
            return 0

    # --- data -------------------------------------------------------------------
    def send(self, data: Any, flags: int = 0) -> int:
        self._check_open()
        view = memoryview(data).cast("B") if not isinstance(data, bytes) else data
        if not len(view):
            return 0
        nonblock = self._timeout == 0.0 or bool(flags & _socket.MSG_DONTWAIT)
        stack = self._stack
        with stack.lock:
            c = self._conn
            if c is None:
                raise _oserror(errno.EPIPE if self._wr_shut else errno.ENOTCONN)
            if self._wr_shut:
                raise BrokenPipeError(errno.EPIPE, "Broken pipe")
            deadline = None if nonblock else self._deadline()
            while True:
                self._raise_conn_error()
                if not c.connected:
                    if nonblock:
                        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
                    self._wait(lambda: c.connected or bool(c.error) or self._closed, deadline)
                    self._check_open()
                    continue
                chunk = view[:SEND_CHUNK]
                # the kernel's TX work (sendto) waits until the lock is released, so the
                # loop thread can take ACKs meanwhile (Stack.defer_kicks)
                stack.defer_kicks(True)
                try:
                    n = stack.call(c.send, bytes(chunk) if isinstance(chunk, memoryview)
                                   else chunk, time.monotonic())
                except BaseException:
                    stack.kick_tx()
                    raise
                if n:
                    break
                stack.kick_tx()  # nothing deferred may wait while we block
                if nonblock:
                    raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
                self._wait(lambda: bool(c.error) or self._closed or c.writable(), deadline)
                self._check_open()
        stack.kick_tx()  # also ends this thread's deferral
        return n

    def sendall(self, data: Any, flags: int = 0) -> None:
        self._check_open()
        view = memoryview(data).cast("B")
        total = len(view)
        sent = 0
        saved = self._timeout
        deadline = None if saved is None else time.monotonic() + saved
        try:
            while sent < total:
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0 and saved:
                        raise timeout("timed out")
                    self._timeout = max(left, 0.0) if saved else 0.0
                sent += self.send(view[sent:], flags)
        finally:
            self._timeout = saved

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        self._check_open()
        if bufsize < 0:
            raise ValueError("negative buffersize in recv")
        if bufsize == 0:
            return b""
        nonblock = self._timeout == 0.0 or bool(flags & _socket.MSG_DONTWAIT)
        stack = self._stack
        with stack.lock:
            c = self._conn
            if c is None:
                raise _oserror(errno.ENOTCONN)
            deadline = None if nonblock else self._deadline()
            while True:
                if self._rd_shut:
                    return b""
                try:
                    data = stack.call(c.recv, bufsize, time.monotonic())
                except BlockingIOError:
                    data = None
                if data is not None:
                    if data == b"":
                        self._raise_conn_error()
                    self._update_fd()
                    return data
                if c.error:
                    self._update_fd()
                    raise _oserror(c.error)
                if nonblock:
                    self._update_fd()
                    raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
                self._wait(lambda: self._readable() or self._closed, deadline)
                self._check_open()

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        view = memoryview(buffer).cast("B")
        if nbytes < 0:
            raise ValueError("negative buffersize in recv_into")
        n = nbytes or len(view)
        if n > len(view):
            raise ValueError("buffer too small for requested bytes")
        data = self.recv(n, flags)
        view[:len(data)] = data
        return len(data)

    def shutdown(self, how: int) -> None:
        self._check_open()
        if how not in (SHUT_RD, SHUT_WR, SHUT_RDWR):
            raise _oserror(errno.EINVAL)
        with self._stack.lock:
            c = self._conn
            if c is None or not (c.connected or c.eof):
                raise _oserror(errno.ENOTCONN)
            if how in (SHUT_RD, SHUT_RDWR):
                self._rd_shut = True
            if how in (SHUT_WR, SHUT_RDWR) and not self._wr_shut:
                self._wr_shut = True
                self._stack.call(c.shutdown, time.monotonic())
            self._notify()

    def close(self) -> None:
        if self._closed:
            return
        stack = self._stack
        with stack.lock:
            self._closed = True
            c, self._conn = self._conn, None
            lst, self._listener = self._listener, None
            if c is not None:
                c.on_readable = c.on_writable = c.on_state = None
                stack.call(c.close, time.monotonic())
            if lst is not None:
                closer = getattr(lst, "close", None)
                if closer is not None:
                    stack.call(closer)
                for pending in self._accept_q:
                    try:
                        stack.call(pending.abort, time.monotonic())
                    except Exception:
                        pass
                self._accept_q.clear()
            if self._reserved is not None:
                stack.release_port(*self._reserved)
                self._reserved = None
            try:
                self._cond.notify_all()
            except RuntimeError:
                pass
        os.close(self._efd)
        self._efd = -1

    def detach(self) -> int:
        raise _oserror(errno.EOPNOTSUPP, "an MPTCP socket has no kernel descriptor to detach")

    # --- modes --------------------------------------------------------------------
    def settimeout(self, value: float | None) -> None:
        if value is not None:
            value = float(value)
            if value < 0:
                raise ValueError("Timeout value out of range")
        self._timeout = value

    def gettimeout(self) -> float | None:
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        self._timeout = None if flag else 0.0

    def getblocking(self) -> bool:
        return self._timeout != 0.0

    def fileno(self) -> int:
        return -1 if self._closed else self._efd

    # --- names ----------------------------------------------------------------------
    def getsockname(self) -> tuple:
        self._check_open()
        with self._stack.lock:
            c = self._conn
            if c is not None:
                loc = _endpoint(c, "local")
                if loc is not None:
                    return self._fmt(*loc)
            if self._bound is not None:
                return self._fmt(*self._bound)
            return self._fmt(None, 0)

    def _peer(self) -> tuple:
        c = self._conn
        rem = _endpoint(c, "remote") if c is not None else None
        if rem is None:
            raise _oserror(errno.ENOTCONN)
        return self._fmt(*rem)

    def getpeername(self) -> tuple:
        self._check_open()
        with self._stack.lock:
            c = self._conn
            if c is None or not (c.connected or c.eof):
                raise _oserror(errno.ENOTCONN)
            return self._peer()

    # --- misc -----------------------------------------------------------------------
    @property
    def connection(self) -> Any:
        """The underlying mptcp connection (for inspection: `info()`)."""
        return self._conn

    @property
    def stack(self) -> Stack:
        return self._stack

    def info(self) -> dict[str, Any]:
        with self._stack.lock:
            return self._conn.info() if self._conn is not None else {}

    def __enter__(self) -> "MptcpSocket":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("listening" if self._listener is not None else
                                               ("connected" if self._conn is not None else "new"))
        return f"<mptcp_bpf.MptcpSocket fd={self.fileno()} family={self.family} {state}>"

    def __del__(self) -> None:
        try:
            if not self._closed:
                self.close()
        except Exception:
            pass


def _endpoint(conn: Any, which: str) -> tuple[Any, int] | None:
    """(ip, port) of the connection's end `which` ('local'/'remote')."""
    if which == "local" and getattr(conn, "local_ip", None) is not None:
        return str(conn.local_ip), int(conn.local_port)
    if which == "remote" and getattr(conn, "remote_addresses", None):
        return str(conn.remote_addresses[0].address), int(conn.remote_port)
    val = getattr(conn, which, None)
    if val is None:
        subs = getattr(conn, "subflows", None) or []
        if subs:
            val = getattr(subs[0], which, None)
    if val is None:
        return None
    ip, port = val[0], val[1]
    if isinstance(ip, bytes):
        ip = ipaddress.ip_address(ip)
    return str(ip), int(port)


def start_control(stack: Stack) -> None:
    """Serve the stack's state to other processes (mptcp-bpf conn/subflow/monitor...)."""
    from mptcp_bpf import control
    stack.control = control.ControlServer(stack)
    stack.control.start()


def namespace_stack(config: Any = None, devices: list[str] | None = None) -> Stack:
    """The namespace's stack of this process (started with its control server on first use)."""
    return Stack.for_namespace(config=config, devices=devices, on_create=start_control)


def socket(family: int = AF_INET, type: int = SOCK_STREAM, proto: int = 0,
           stack: Stack | None = None) -> MptcpSocket:
    """A new MPTCP stream socket on the namespace's stack (started on first use)."""
    return MptcpSocket(family, type, proto, stack=stack)


def create_connection(address: tuple[str, int], timeout: float | None = None,
                      source_address: tuple[str, int] | None = None,
                      stack: Stack | None = None) -> MptcpSocket:
    """Like socket.create_connection, for our stack."""
    host, port = address
    try:
        fam = AF_INET6 if ipaddress.ip_address(host).version == 6 else AF_INET
    except ValueError:
        fam = _socket.getaddrinfo(host, port, 0, SOCK_STREAM)[0][0]
    sock = MptcpSocket(fam, stack=stack)
    try:
        if timeout is not None:
            sock.settimeout(timeout)
        if source_address:
            sock.bind(source_address)
        sock.connect(address)
        return sock
    except BaseException:
        sock.close()
        raise


def create_server(address: tuple[str, int], family: int = AF_INET, backlog: int = 128,
                  stack: Stack | None = None) -> MptcpSocket:
    """Like socket.create_server, for our stack."""
    sock = MptcpSocket(family, stack=stack)
    try:
        sock.bind(address)
        sock.listen(backlog)
        return sock
    except BaseException:
        sock.close()
        raise
