"""The stack's state served to other processes: a JSON-lines unix socket per namespace.

One stack per network namespace listens on /run/mptcp-bpf-ctl/<netns inode>.sock (the
inode of /proc/self/ns/net, so `ip netns exec NS mptcp-bpf conn show` finds the stack of NS;
MPTCP_BPF_CTL_DIR overrides the directory). Each request is one JSON object on one line,
each answer one line: {"ok": true, "data": ...} or {"ok": false, "error": ..., "hint": ...}.
`monitor` keeps the connection open and streams one event per line. The protocol and the
StackLike contract are documented in docs/CONTROL.md.
"""

from __future__ import annotations

import ipaddress
import json
import os
import queue
import socket
import socketserver
import threading
from typing import Any, Callable, Iterator, Protocol

from mptcp_bpf import plugins
from mptcp_bpf.errors import HintedError

DEFAULT_DIR = "/run/mptcp-bpf-ctl"
PROTOCOL_VERSION = 1
MAX_REQUEST = 64 * 1024
MONITOR_QUEUE = 4096


class StackLike(Protocol):
    """What the control server needs from a stack. Called from the server's threads unless
    the stack passes `dispatch` (a function that runs a callable on its loop and returns
    the result); return plain data (dicts, lists, str, int, float, bool)."""

    def conn_infos(self) -> list[dict[str, Any]]:
        """One ConnectionApi.info() dict per connection (see mptcp.api)."""
        ...

    def stats(self) -> dict[str, int]:
        """Counters named like the kernel's MPTcpExt MIB, plus the fast path's."""
        ...

    def endpoints(self) -> list[dict[str, Any]]:
        """Local addresses: [{id, address, port, flags: [signal|subflow|backup], dev}]."""
        ...

    def limits(self) -> dict[str, int]:
        """{"subflows": 32, "add_addr_accepted": 8, ...}."""
        ...

    def subscribe(self, callback: Callable[[dict[str, Any]], None]) -> Callable[[], None] | None:
        """Call `callback(event)` for every monitor event until the returned function (or
        `unsubscribe(callback)` on the stack, when subscribe returns None) is called."""
        ...


def ctl_dir() -> str:
    return os.environ.get("MPTCP_BPF_CTL_DIR", DEFAULT_DIR)


def netns_id(pid: int | str = "self") -> int:
    """The inode of a process's network namespace: one id per namespace, as `ip netns` sees."""
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def socket_path(ns: int | None = None) -> str:
    return os.path.join(ctl_dir(), f"{netns_id() if ns is None else ns}.sock")


def jsonable(value: Any) -> Any:
    """Plain JSON types: addresses as text, bytes as hex, tuples as lists, objects' dicts."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return str(value)
    return str(value)


def _dumps(obj: Any) -> bytes:
    return (json.dumps(jsonable(obj), separators=(",", ":")) + "\n").encode()


def token_value(token: Any) -> int | None:
    """A token as an int, whether given as an int or as hex text ("1a2b3c4d", "0x1a2b")."""
    if token is None or isinstance(token, bool):
        return None
    if isinstance(token, int):
        return token
    try:
        return int(str(token), 16)
    except ValueError:
        return None


def plugin_table() -> dict[str, dict[str, dict[str, Any]]]:
    """{kind: {name: {"params": {...}, "doc": ...}}} of this process's registry."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for kind in plugins.KINDS:
        out[kind] = {}
        for name in plugins.names(kind):
            p = plugins.get(kind, name)
            out[kind][name] = {"params": dict(p.params), "doc": p.doc}
    return out


def subflow_rows(conns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flatten conn_infos into one row per subflow, each carrying its connection's token."""
    rows = []
    for c in conns:
        for sf in c.get("subflows") or []:
            row = {"token": c.get("token")}
            row.update(sf)
            rows.append(row)
    return rows


class _Handler(socketserver.StreamRequestHandler):
    server: "_Server"

    def handle(self) -> None:
        while True:
            try:
                line = self.rfile.readline(MAX_REQUEST + 1)
            except (OSError, ValueError):
                return
            if not line:
                return
            if len(line) > MAX_REQUEST:
                self._reply({"ok": False, "error": "request too long"})
                return
            try:
                req = json.loads(line)
                if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
                    raise ValueError("not an object with a 'cmd' string")
            except ValueError as exc:
                self.server.owner.malformed += 1
                if not self._reply({"ok": False, "error": f"malformed request: {exc}"}):
                    return
                continue
            if req["cmd"] == "monitor":
                self._monitor()
                return
            if not self._reply(self.server.owner.answer(req)):
                return

    def _reply(self, obj: dict[str, Any]) -> bool:
        try:
            self.wfile.write(_dumps(obj))
            self.wfile.flush()
            return True
        except (OSError, ValueError):
            return False

    def _monitor(self) -> None:
        owner = self.server.owner
        events: queue.Queue[dict[str, Any]] = queue.Queue(MONITOR_QUEUE)
        dropped = [0]

        def push(ev: dict[str, Any]) -> None:  # runs on the stack's thread: never block
            try:
                events.put_nowait(ev)
            except queue.Full:
                dropped[0] += 1

        unsubscribe = owner.subscribe(push)
        try:
            if not self._reply({"ok": True, "data": {"monitor": True}}):
                return
            self.connection.settimeout(None)
            while not owner.stopping.is_set():
                try:
                    ev = events.get(timeout=0.5)
                except queue.Empty:
                    if self._peer_closed():
                        return
                    continue
                if dropped[0]:
                    ev = dict(ev, dropped_before=dropped[0])
                    dropped[0] = 0
                if not self._reply({"event": ev}):
                    return
        finally:
            unsubscribe()

    def _peer_closed(self) -> bool:
        try:
            data = self.connection.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK)
            return data == b""
        except BlockingIOError:
            return False
        except OSError:
            return True


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = False
    owner: "ControlServer"


class ControlServer:
    """Serves a StackLike on the namespace's control socket, in background threads."""

    def __init__(self, stack: StackLike, path: str | None = None,
                 dispatch: Callable[[Callable[[], Any]], Any] | None = None) -> None:
        self.stack = stack
        self.path = path or socket_path()
        self.dispatch = dispatch or (lambda fn: fn())
        self.stopping = threading.Event()
        self.malformed = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> "ControlServer":
        os.makedirs(os.path.dirname(self.path), mode=0o755, exist_ok=True)
        if os.path.exists(self.path):
            if _alive(self.path):
                raise HintedError(f"another mptcp-bpf stack already serves {self.path}",
                                  "one stack per network namespace: stop the other one first")
            os.unlink(self.path)  # left behind by a process that died
        server = _Server(self.path, _Handler, bind_and_activate=True)
        os.chmod(self.path, 0o660)
        server.owner = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="mptcp-bpf-control", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "ControlServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- requests ----------------------------------------------------------------------
    def subscribe(self, callback: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        res = self.dispatch(lambda: self.stack.subscribe(callback))
        if callable(res):
            return res
        unsub = getattr(self.stack, "unsubscribe", None)
        return (lambda: self.dispatch(lambda: unsub(callback))) if unsub else (lambda: None)

    def answer(self, req: dict[str, Any]) -> dict[str, Any]:
        cmd = req["cmd"]
        handler = getattr(self, f"_cmd_{cmd.replace('-', '_')}", None)
        if handler is None:
            return {"ok": False, "error": f"unknown request {cmd!r}",
                    "hint": "requests: " + ", ".join(sorted(COMMANDS))}
        try:
            return {"ok": True, "data": handler(req)}
        except HintedError as exc:
            return {"ok": False, "error": str(exc), "hint": exc.hint}
        except Exception as exc:  # a bug in the stack must not kill the control server
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}

    def _cmd_hello(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"pid": os.getpid(), "protocol": PROTOCOL_VERSION, "netns": netns_id()}

    def _cmd_conns(self, req: dict[str, Any]) -> Any:
        conns = self.dispatch(self.stack.conn_infos)
        tok = token_value(req.get("token"))
        return [c for c in conns if tok is None or token_value(c.get("token")) == tok]

    def _cmd_subflows(self, req: dict[str, Any]) -> Any:
        return subflow_rows(self._cmd_conns(req))

    def _cmd_stats(self, req: dict[str, Any]) -> Any:
        return self.dispatch(self.stack.stats)

    def _cmd_endpoints(self, req: dict[str, Any]) -> Any:
        return self.dispatch(self.stack.endpoints)

    def _cmd_limits(self, req: dict[str, Any]) -> Any:
        return self.dispatch(self.stack.limits)

    def _cmd_plugin_get(self, req: dict[str, Any]) -> Any:
        table = plugin_table()
        kind = req.get("kind")
        if kind is not None:
            if kind not in table:
                raise HintedError(f"no plug-in kind {kind!r}", f"kinds: {', '.join(table)}")
            return {kind: table[kind]}
        return table

    def _cmd_plugin_set(self, req: dict[str, Any]) -> Any:
        kind, name, param = req.get("kind"), req.get("name"), req.get("param")
        if not all(isinstance(x, str) for x in (kind, name, param)):
            raise HintedError("plugin-set needs kind, name and param strings",
                              "e.g. {\"cmd\": \"plugin-set\", \"kind\": \"sched\", "
                              "\"name\": \"roundrobin\", \"param\": \"num_segments\", "
                              "\"value\": \"2\"}")
        if kind not in plugins.KINDS:
            raise HintedError(f"no plug-in kind {kind!r}", f"kinds: {', '.join(plugins.KINDS)}")
        value = self.dispatch(lambda: plugins.set_param(kind, name, param, req.get("value")))
        return {"kind": kind, "name": name, "param": param, "value": value}


COMMANDS = ("hello", "conns", "subflows", "stats", "endpoints", "limits", "plugin-get",
            "plugin-set", "monitor")


def _alive(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


NO_STACK_HINT = ("start a stack in this namespace (e.g. `mptcp-bpf nc -l 5000` or "
                 "`mptcp-bpf perf -s`), or run the command in the stack's namespace: "
                 "`ip netns exec NS mptcp-bpf ...`")


class ControlClient:
    """Talks to the stack of this network namespace (or of `path`)."""

    def __init__(self, path: str | None = None, timeout: float = 10.0) -> None:
        self.path = path or socket_path()
        self.timeout = timeout

    def _connect(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.path)
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
            raise HintedError("no mptcp-bpf stack runs in this network namespace",
                              NO_STACK_HINT) from None
        except PermissionError:
            s.close()
            raise HintedError(f"no permission to open {self.path}", "run as root") from None
        return s

    def request(self, cmd: str, **args: Any) -> Any:
        """One request, one answer; raises HintedError with the server's message on failure."""
        s = self._connect()
        try:
            s.sendall(_dumps(dict(args, cmd=cmd)))
            reply = _read_line(s)
        finally:
            s.close()
        if reply is None:
            raise HintedError("the stack closed the control connection without answering",
                              "is the stack shutting down? try again")
        if not reply.get("ok"):
            raise HintedError(reply.get("error", "request failed"), reply.get("hint", ""))
        return reply.get("data")

    def monitor(self, stop: threading.Event | None = None) -> Iterator[dict[str, Any]]:
        """Yield events as the stack reports them, until the stack goes or `stop` is set."""
        s = self._connect()
        try:
            s.sendall(_dumps({"cmd": "monitor"}))
            s.settimeout(0.5)
            buf = bytearray()
            first = True
            while stop is None or not stop.is_set():
                try:
                    chunk = s.recv(65536)
                except socket.timeout:
                    continue
                if not chunk:
                    return
                buf += chunk
                while b"\n" in buf:
                    line, _, rest = bytes(buf).partition(b"\n")
                    buf = bytearray(rest)
                    try:
                        msg = json.loads(line)
                    except ValueError:
                        continue
                    if first:
                        first = False
                        if not msg.get("ok", True):
                            raise HintedError(msg.get("error", "monitor refused"),
                                              msg.get("hint", ""))
                        continue
                    if isinstance(msg, dict) and "event" in msg:
                        yield msg["event"]
        finally:
            s.close()


def _read_line(s: socket.socket) -> dict[str, Any] | None:
    buf = bytearray()
    while b"\n" not in buf:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            raise HintedError("the stack did not answer in time",
                              "it may be busy; try again or raise the timeout") from None
        if not chunk:
            break
        buf += chunk
    if not buf:
        return None
    try:
        msg = json.loads(bytes(buf).split(b"\n", 1)[0])
    except ValueError:
        raise HintedError("the stack answered something that is not JSON",
                          "client and stack versions may differ") from None
    return msg if isinstance(msg, dict) else None
