"""asyncio streams over our MPTCP sockets: `open_connection` and `start_server`.

The socket's readiness callbacks run on the stack's loop thread; they schedule
`_on_event` on the asyncio loop with call_soon_threadsafe (coalesced), which reads and
writes without blocking. A transport (asyncio.Transport) joins that to the standard
StreamReaderProtocol, so callers get ordinary StreamReader/StreamWriter objects.
"""

from __future__ import annotations

import asyncio
import errno
import socket as _socket
from typing import Any, Awaitable, Callable

from mptcp_bpf.socket.core import AF_INET, AF_INET6, MptcpSocket

_HIGH = 1 << 20
READ_CHUNK = 256 * 1024


class MptcpTransport(asyncio.Transport):
    """A stream transport over a non-blocking MptcpSocket."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: MptcpSocket,
                 protocol: asyncio.Protocol) -> None:
        super().__init__({"socket": sock})
        self._loop = loop
        self._sock = sock
        self._protocol = protocol
        self._wbuf = bytearray()
        self._closing = False
        self._closed = False
        self._eof_pending = False
        self._eof_sent = False
        self._read_paused = False
        self._write_paused = False
        self._high, self._low = _HIGH, _HIGH // 4
        self._scheduled = False
        sock.setblocking(False)
        sock._waker = self._wake
        loop.call_soon(protocol.connection_made, self)
        loop.call_soon(self._on_event)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        try:
            if name == "peername":
                return self._sock.getpeername()
            if name == "sockname":
                return self._sock.getsockname()
        except OSError:
            return default
        return super().get_extra_info(name, default)

    def _wake(self) -> None:
        """From the stack thread: schedule one `_on_event` on the asyncio loop."""
        if not self._scheduled and not self._closed:
            self._scheduled = True
            try:
                self._loop.call_soon_threadsafe(self._on_event)
            except RuntimeError:  # the asyncio loop is closed
                pass

    def _on_event(self) -> None:
        self._scheduled = False
        if self._closed:
            return
        if not self._read_paused and not self._closing:
            self._read_ready()
        if not self._closed:
            self._write_ready()

    def _read_ready(self) -> None:
        for _ in range(64):
            if self._read_paused or self._closed:
                return
            try:
                data = self._sock.recv(READ_CHUNK)
            except BlockingIOError:
                return
            except OSError as exc:
                self._fatal(exc)
                return
            if not data:
                keep_open = self._protocol.eof_received()
                self._read_paused = True
                if not keep_open:
                    self.close()
                return
            self._protocol.data_received(data)
        self._wake()  # more may be ready: yield to other tasks first

    def _write_ready(self) -> None:
        buf = self._wbuf
        while buf:
            try:
                n = self._sock.send(bytes(buf[:READ_CHUNK]))
            except BlockingIOError:
                break
            except OSError as exc:
                self._fatal(exc)
                return
            del buf[:n]
        if self._write_paused and len(buf) <= self._low:
            self._write_paused = False
            self._protocol.resume_writing()
        if not buf:
            if self._eof_pending and not self._eof_sent:
                self._eof_sent = True
                try:
                    self._sock.shutdown(_socket.SHUT_WR)
                except OSError:
                    pass
            if self._closing:
                self._finish(None)

    # --- Transport API -----------------------------------------------------------
    def write(self, data: Any) -> None:
        if self._eof_pending or self._closing:
            raise RuntimeError("cannot write after write_eof() or close()")
        if not data:
            return
        self._wbuf += data
        self._write_ready()
        if not self._write_paused and len(self._wbuf) > self._high:
            self._write_paused = True
            self._protocol.pause_writing()

    def write_eof(self) -> None:
        if self._eof_pending:
            return
        self._eof_pending = True
        self._write_ready()

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return len(self._wbuf)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = _HIGH if high is None else high
        self._low = self._high // 4 if low is None else low

    def pause_reading(self) -> None:
        self._read_paused = True

    def resume_reading(self) -> None:
        if self._read_paused:
            self._read_paused = False
            self._loop.call_soon(self._on_event)

    def is_reading(self) -> bool:
        return not self._read_paused

    def is_closing(self) -> bool:
        return self._closing or self._closed

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._read_paused = True
        if not self._wbuf:
            self._loop.call_soon(self._finish, None)

    def abort(self) -> None:
        self._finish(None, abort=True)

    def _fatal(self, exc: BaseException) -> None:
        self._finish(exc)

    def _finish(self, exc: BaseException | None, abort: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        self._sock._waker = None
        try:
            conn = self._sock.connection
            if abort and conn is not None:
                self._sock.stack.call(conn.abort)
        except Exception:
            pass
        self._sock.close()
        self._loop.call_soon(self._protocol.connection_lost, exc)


async def open_connection(host: str, port: int, *, limit: int = 2 ** 16, family: int = 0,
                          local_addr: tuple[str, int] | None = None, stack: Any = None,
                          timeout: float | None = None, setup: Callable[[MptcpSocket], None]
                          | None = None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect with our stack; returns (reader, writer) like asyncio.open_connection.
    `setup(sock)` runs before connect (socket options: scheduler, path manager...)."""
    loop = asyncio.get_running_loop()
    if not family:
        family = AF_INET6 if ":" in host else AF_INET
    sock = MptcpSocket(family, stack=stack)
    try:
        if setup is not None:
            setup(sock)
        if local_addr is not None:
            sock.bind(local_addr)
        sock.settimeout(timeout)
        await loop.run_in_executor(None, sock.connect, (host, port))
    except BaseException:
        sock.close()
        raise
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport = MptcpTransport(loop, sock, protocol)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    await asyncio.sleep(0)
    return reader, writer


class MptcpServer:
    """What start_server returns: close(), wait_closed(), serve_forever(), sockets."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: MptcpSocket,
                 client_connected_cb: Callable[..., Any], limit: int) -> None:
        self._loop = loop
        self._sock = sock
        self._cb = client_connected_cb
        self._limit = limit
        self._closed = loop.create_future()
        self._scheduled = False
        self._transports: list[MptcpTransport] = []
        sock.setblocking(False)
        sock._waker = self._wake
        loop.call_soon(self._accept_ready)

    @property
    def sockets(self) -> tuple[MptcpSocket, ...]:
        return () if self._closed.done() else (self._sock,)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return not self._closed.done()

    def _wake(self) -> None:
        if not self._scheduled and not self._closed.done():
            self._scheduled = True
            try:
                self._loop.call_soon_threadsafe(self._accept_ready)
            except RuntimeError:
                pass

    def _accept_ready(self) -> None:
        self._scheduled = False
        while not self._closed.done():
            try:
                conn, _ = self._sock.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.EBADF:
                    return
                raise
            reader = asyncio.StreamReader(limit=self._limit, loop=self._loop)
            protocol = asyncio.StreamReaderProtocol(reader, self._cb, loop=self._loop)
            self._transports.append(MptcpTransport(self._loop, conn, protocol))

    def close(self) -> None:
        if self._closed.done():
            return
        self._sock._waker = None
        self._sock.close()
        self._closed.set_result(None)

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    async def start_serving(self) -> None:
        return None

    async def serve_forever(self) -> None:
        try:
            await asyncio.shield(self._closed)
        except asyncio.CancelledError:
            self.close()
            raise

    async def __aenter__(self) -> "MptcpServer":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()
        await self.wait_closed()


async def start_server(client_connected_cb: Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                                     Awaitable[None] | None],
                       host: str | None = None, port: int = 0, *, family: int = 0,
                       backlog: int = 128, limit: int = 2 ** 16, stack: Any = None,
                       setup: Callable[[MptcpSocket], None] | None = None) -> MptcpServer:
    """Listen with our stack; `client_connected_cb(reader, writer)` per connection."""
    loop = asyncio.get_running_loop()
    if not family:
        family = AF_INET6 if host and ":" in host else AF_INET
    sock = MptcpSocket(family, stack=stack)
    try:
        if setup is not None:
            setup(sock)
        sock.bind((host or "", port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return MptcpServer(loop, sock, client_connected_cb, limit)
