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
from mptcp_bpf.mptcp.api import ENDPOINT_FLAGS

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

    # Optional: changing endpoints and limits (`ip mptcp endpoint|limits`). Arguments come
    # checked by check_endpoint/check_limits; raise HintedError for what only the stack
    # knows (unknown or duplicate id, address not on this host).
    # endpoint_add(address, port, dev, addr_id, flags) -> endpoint dict
    # endpoint_delete(addr_id, address) -> endpoint dict
    # endpoint_change(addr_id, address, backup, fullmesh) -> endpoint dict
    # endpoint_flush() -> [endpoint dict]; set_limits(subflows, add_addr_accepted) -> limits


# The kernel refuses more than MPTCP_PM_ADDR_MAX (8) for both; our stack allows 32 subflows
# per connection (REFERENCE.md §4: the path index bitmask is 32 bits), so `subflows` goes to 32.
LIMIT_MAX = {"subflows": 32, "add_addr_accepted": 8}
LIMIT_NAMES = ("subflows", "add_addr_accepted")


def _int_arg(req: dict[str, Any], name: str, lo: int, hi: int) -> int | None:
    v = req.get(name)
    if v is None:
        return None
    try:
        n = int(v)
        if isinstance(v, bool) or isinstance(v, float) and n != v:
            raise ValueError
    except (TypeError, ValueError):
        raise HintedError(f"{name} must be a number, not {v!r}", f"give {lo}..{hi}") from None
    if not lo <= n <= hi:
        raise HintedError(f"{name} {n} is out of range", f"give {lo}..{hi}")
    return n


def check_address(value: Any) -> str:
    """A unicast IPv4 or IPv6 address, as text."""
    try:
        a = ipaddress.ip_address(str(value))
    except ValueError:
        raise HintedError(f"bad address {value!r}",
                          "give an IPv4 or IPv6 address, e.g. 10.0.2.1") from None
    if a.is_unspecified or a.is_multicast or a.is_loopback:
        raise HintedError(f"{a} cannot be an endpoint", "give a unicast address of a device")
    return str(a)


def check_endpoint(req: dict[str, Any]) -> dict[str, Any]:
    """The arguments of endpoint-add, checked as the kernel checks them:
    {address, port, dev, id, flags}."""
    if req.get("address") is None:
        raise HintedError("endpoint add needs an address", "e.g. `endpoint add 10.0.2.1 signal`")
    flags = req.get("flags") or []
    if isinstance(flags, str):
        flags = flags.replace(",", " ").split()
    if not isinstance(flags, (list, tuple)):
        raise HintedError("flags must be a list", "e.g. [\"signal\", \"backup\"]")
    for f in flags:
        if f == "implicit":
            raise HintedError("can't create IMPLICIT endpoint",
                              "implicit endpoints are made by the stack itself")
        if f not in ENDPOINT_FLAGS:
            raise HintedError(f"unknown endpoint flag {f!r}", "flags: " + ", ".join(ENDPOINT_FLAGS))
    flags = [f for f in ENDPOINT_FLAGS if f in flags]
    if "signal" in flags and "fullmesh" in flags:
        raise HintedError("flags mustn't have both signal and fullmesh",
                          "fullmesh applies to subflow endpoints: use `subflow fullmesh`")
    port = _int_arg(req, "port", 0, 65535) or 0
    if port and "signal" not in flags:
        raise HintedError("flags must have signal when using port",
                          "a port is announced to the peer: add the `signal` flag")
    dev = req.get("dev")
    if dev is not None and (not isinstance(dev, str) or not dev or len(dev) > 15):
        raise HintedError(f"bad device name {dev!r}", "give an interface name, see `ip link`")
    return {"address": check_address(req["address"]), "port": port, "dev": dev,
            "id": _int_arg(req, "id", 0, 255), "flags": flags}


def check_limits(req: dict[str, Any]) -> dict[str, int]:
    """The arguments of limits-set: subflows 0..32, add_addr_accepted 0..8."""
    out: dict[str, int] = {}
    for name in LIMIT_NAMES:
        v = req.get(name)
        if v is None:
            continue
        n = _int_arg({name: v}, name, -(1 << 31), 1 << 31)
        assert n is not None
        top = LIMIT_MAX[name]
        if n > top:
            raise HintedError(f"{name} {n}: limit greater than maximum ({top})",
                              f"{name} takes 0..{top}")
        if n < 0:
            raise HintedError(f"{name} {n}: a limit cannot be negative", f"give 0..{top}")
        out[name] = n
    if not out:
        raise HintedError("limits set needs subflows or add_addr_accepted",
                          "e.g. `limits set subflows 2 add_addr_accepted 2`")
    return out


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
        eps = self.dispatch(self.stack.endpoints)
        want = _int_arg(req, "id", 0, 255)
        if want is None:
            return eps
        eps = [e for e in eps if e.get("id") == want]
        if not eps:
            raise HintedError(f"no endpoint with id {want}",
                              "list the endpoints with `mptcp-bpf endpoint show`")
        return eps

    def _cmd_limits(self, req: dict[str, Any]) -> Any:
        return self.dispatch(self.stack.limits)

    def _changer(self, name: str) -> Callable[..., Any]:
        fn = getattr(self.stack, name, None)
        if not callable(fn):
            raise HintedError("this stack does not change endpoints or limits",
                              "it only reports them; start it with mptcp_bpf.stack.Stack")
        return fn

    def _cmd_endpoint_add(self, req: dict[str, Any]) -> Any:
        ep = check_endpoint(req)
        fn = self._changer("endpoint_add")
        return self.dispatch(lambda: fn(ep["address"], ep["port"], ep["dev"], ep["id"] or None,
                                        ep["flags"]))

    def _cmd_endpoint_delete(self, req: dict[str, Any]) -> Any:
        addr_id = _int_arg(req, "id", 0, 255)
        if addr_id is None:
            raise HintedError("endpoint delete needs an id", "e.g. `endpoint delete id 3`")
        address = check_address(req["address"]) if req.get("address") is not None else None
        fn = self._changer("endpoint_delete")
        return self.dispatch(lambda: fn(addr_id, address))

    def _cmd_endpoint_change(self, req: dict[str, Any]) -> Any:
        addr_id = _int_arg(req, "id", 0, 255)
        address = check_address(req["address"]) if req.get("address") is not None else None
        if addr_id is None and address is None:
            raise HintedError("endpoint change needs an id or an address",
                              "e.g. `endpoint change id 3 backup`")
        flags = {}
        for name in ("backup", "fullmesh"):
            v = req.get(name)
            if v is not None and not isinstance(v, bool):
                raise HintedError(f"{name} must be true or false, not {v!r}")
            flags[name] = v
        if flags["backup"] is None and flags["fullmesh"] is None:
            raise HintedError("endpoint change needs a flag to set",
                              "backup, nobackup, fullmesh or nofullmesh")
        fn = self._changer("endpoint_change")
        return self.dispatch(lambda: fn(addr_id, address, flags["backup"], flags["fullmesh"]))

    def _cmd_endpoint_flush(self, req: dict[str, Any]) -> Any:
        fn = self._changer("endpoint_flush")
        return self.dispatch(fn)

    def _cmd_limits_set(self, req: dict[str, Any]) -> Any:
        lim = check_limits(req)
        fn = self._changer("set_limits")
        return self.dispatch(lambda: fn(lim.get("subflows"), lim.get("add_addr_accepted")))

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
            "plugin-set", "monitor", "endpoint-add", "endpoint-delete", "endpoint-change",
            "endpoint-flush", "limits-set")


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
