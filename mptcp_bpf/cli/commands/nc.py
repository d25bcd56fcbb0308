"""`mptcp-bpf nc`: ncat for streams over our MPTCP stack.

`mptcp-bpf nc -l [-p] PORT` accepts one connection, `mptcp-bpf nc HOST PORT` connects;
stdin goes to the connection, the connection to stdout. At stdin EOF we half-close
(DATA_FIN) and keep reading until the peer closes too. Exit status 0 only when both
directions ended cleanly.

Also home of the options nc and perf share (plug-ins, --set, --pcap, devices).
"""

from __future__ import annotations

import argparse
import os
import socket as _socket
import sys
import threading
import time
from typing import Any

from mptcp_bpf.errors import HintedError


# ---------------------------------------------------------------------- shared options
def add_stack_options(p: argparse.ArgumentParser) -> None:
    """--path-manager, --scheduler, --cc, --set, --pcap, --dev, -4/-6 (nc and perf)."""
    p.add_argument("-4", dest="family", action="store_const", const=4, help="IPv4 only")
    p.add_argument("-6", dest="family", action="store_const", const=6, help="IPv6 only")
    p.add_argument("--path-manager", metavar="NAME", help="path manager of this connection")
    p.add_argument("--scheduler", metavar="NAME", help="scheduler of this connection")
    p.add_argument("--cc", metavar="NAME", help="congestion control (lia, olia, balia, ...)")
    p.add_argument("--set", metavar="PLUGIN.PARAM=VALUE", action="append", default=[],
                   help="set a plug-in parameter, e.g. ndiffports.num_subflows=3")
    p.add_argument("--pcap", metavar="FILE", help="write what the stack sends and receives")
    p.add_argument("--dev", metavar="DEV", action="append",
                   help="run the stack on these devices (default: the fast path's, or all)")
    p.add_argument("--no-mptcp", action="store_true", help="plain TCP (MPTCP_ENABLED=0)")
    p.add_argument("--mptcp", action="store_true",
                   help="set MPTCP_ENABLED=1 (needed when net.mptcp.mptcp_enabled=2)")


def apply_sets(sets: list[str]) -> None:
    """--set PLUGIN.PARAM=VALUE (or KIND.PLUGIN.PARAM=VALUE) into the plug-in registry."""
    from mptcp_bpf import plugins
    for item in sets:
        key, sep, value = item.partition("=")
        parts = key.split(".")
        if not sep or len(parts) not in (2, 3):
            raise HintedError(f"bad --set {item!r}", "use PLUGIN.PARAM=VALUE, "
                              "e.g. --set ndiffports.num_subflows=3")
        if len(parts) == 3:
            kind, name, param = parts
        else:
            name, param = parts
            kinds = [k for k in plugins.KINDS if name in plugins.names(k)]
            if not kinds:
                known = ", ".join(n for k in plugins.KINDS for n in plugins.names(k))
                raise HintedError(f"no plug-in named {name!r}", f"plug-ins: {known}")
            kind = kinds[0]
        plugins.set_param(kind, name, param, value)


def check_plugin(kind: str, name: str | None, option: str) -> None:
    if name is None:
        return
    from mptcp_bpf import plugins
    if name not in plugins.names(kind):
        raise HintedError(f"{option}: no such plug-in {name!r}",
                          f"choose one of: {', '.join(plugins.names(kind))}")


def make_stack(args: argparse.Namespace) -> Any:
    """The namespace's stack of this process, configured from the common options
    (`args._stack`, when set, is used instead: tests run the commands in-process)."""
    from mptcp_bpf.socket.core import namespace_stack
    from mptcp_bpf.stack import StackConfig
    check_plugin("pm", args.path_manager, "--path-manager")
    check_plugin("sched", args.scheduler, "--scheduler")
    check_plugin("cc", args.cc, "--cc")
    apply_sets(args.set)
    if getattr(args, "_stack", None) is not None:
        return args._stack
    if os.geteuid() != 0:
        raise HintedError("the stack needs root (XDP, AF_XDP, BPF maps)", "run with sudo")
    cfg = StackConfig.from_sysctl(cc=args.cc, pcap=args.pcap)
    return namespace_stack(cfg, args.dev)


def new_socket(args: argparse.Namespace, family: int, stack: Any) -> Any:
    """A socket with the per-connection options (path manager, scheduler, MPTCP on/off)."""
    from mptcp_bpf import sockopt as so
    from mptcp_bpf.socket.core import MptcpSocket
    sock = MptcpSocket(family, stack=stack)
    try:
        if args.no_mptcp:
            sock.setsockopt(so.SOL_TCP, so.MPTCP_ENABLED, 0)
        elif args.mptcp:
            sock.setsockopt(so.SOL_TCP, so.MPTCP_ENABLED, 1)
        if args.path_manager:
            sock.setsockopt(so.SOL_TCP, so.MPTCP_PATH_MANAGER, args.path_manager.encode())
        if args.scheduler:
            sock.setsockopt(so.SOL_TCP, so.MPTCP_SCHEDULER, args.scheduler.encode())
    except OSError as exc:
        sock.close()
        raise HintedError(f"cannot set socket option: {exc}",
                          "check net.mptcp.mptcp_enabled (`mptcp-bpf sysctl`)") from exc
    return sock


def resolve(host: str, family: int | None) -> tuple[int, str]:
    fam = {4: _socket.AF_INET, 6: _socket.AF_INET6, None: 0}[family]
    try:
        info = _socket.getaddrinfo(host, None, fam, _socket.SOCK_STREAM)
    except _socket.gaierror as exc:
        raise HintedError(f"cannot resolve {host!r}: {exc.strerror}",
                          "give an IPv4 or IPv6 address") from None
    return info[0][0], info[0][4][0]


def parse_port(value: Any) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise HintedError(f"bad port {value!r}", "a port is a number from 1 to 65535") from None
    if not 0 < port < 65536:
        raise HintedError(f"port {port} out of range", "a port is a number from 1 to 65535")
    return port


def linger_close(sock: Any, timeout: float = 5.0) -> None:
    """Close and wait (bounded) until the connection finished its closing handshake, so
    our DATA_FIN is acknowledged before the process (and its stack) goes away."""
    conn = sock.connection
    sock.close()
    if conn is None:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if getattr(conn, "state", "CLOSED") in ("CLOSED", "TIME_WAIT"):
            return
        time.sleep(0.02)


def shutdown_stack(stack: Any, args: argparse.Namespace | None = None) -> None:
    if args is not None and getattr(args, "_stack", None) is stack:
        return
    try:
        stack.close()
    except Exception:
        pass


# ---------------------------------------------------------------------- nc
def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("nc", help="ncat-like streams over our MPTCP stack",
                       description=__doc__.splitlines()[0])
    p.add_argument("-l", "--listen", action="store_true", help="accept one connection")
    p.add_argument("-p", "--port", dest="lport", metavar="PORT",
                   help="port to listen on (with -l) or source port")
    p.add_argument("-s", "--source", metavar="ADDR", help="local address")
    p.add_argument("-w", "--wait", type=float, metavar="SECS", help="connect timeout")
    p.add_argument("target", nargs="*", metavar="HOST PORT",
                   help="HOST PORT to connect to, or PORT with -l")
    add_stack_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.listen:
        if len(args.target) > 1:
            raise HintedError("too many arguments for -l", "use: mptcp-bpf nc -l [-p] PORT")
        port = parse_port(args.lport or (args.target[0] if args.target else None))
        host = args.source
    else:
        if len(args.target) != 2:
            raise HintedError("need HOST and PORT", "use: mptcp-bpf nc HOST PORT "
                              "(or mptcp-bpf nc -l PORT to listen)")
        host, port = args.target[0], parse_port(args.target[1])
    stack = make_stack(args)
    try:
        if args.listen:
            fam = _socket.AF_INET6 if (args.family == 6 or (host and ":" in host)) \
                else _socket.AF_INET
            lsock = new_socket(args, fam, stack)
            try:
                lsock.bind((host or "", port))
                lsock.listen(1)
                conn, _ = lsock.accept()
            finally:
                lsock.close()
        else:
            fam, ip = resolve(host, args.family)
            conn = new_socket(args, fam, stack)
            if args.wait:
                conn.settimeout(args.wait)
            if args.source or args.lport:
                conn.bind((args.source or "", int(args.lport or 0)))
            try:
                conn.connect((ip, port))
            except OSError as exc:
                conn.close()
                print(f"mptcp-bpf nc: {host} {port}: {exc.strerror or exc}", file=sys.stderr)
                return 1
            conn.settimeout(None)
        return pump(conn)
    finally:
        shutdown_stack(stack, args)


def pump(conn: Any) -> int:
    """stdin -> conn (half-close at EOF), conn -> stdout; 0 only for a clean end: both
    directions finished (our DATA_FIN sent after stdin's EOF, the peer's received)."""
    state: dict[str, Any] = {"sending": False, "send_ok": None, "abandoned": False}
    fin_in = sys.stdin.buffer
    fout = sys.stdout.buffer

    def sender() -> None:
        try:
            read = getattr(fin_in, "read1", fin_in.read)
            while True:
                data = read(65536)
                if not data:
                    break
                state["sending"] = True
                conn.sendall(data)
                state["sending"] = False
            state["sending"] = True
            conn.shutdown(_socket.SHUT_WR)
            state["send_ok"] = True
        except OSError as exc:
            if state.get("abandoned"):
                return  # the peer closed and we stopped waiting for stdin: not an error
            print(f"mptcp-bpf nc: send: {exc.strerror or exc}", file=sys.stderr)
            state["send_ok"] = False
        finally:
            state["sending"] = False

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    recv_ok = True
    try:
        while True:
            data = conn.recv(262144)
            if not data:
                break
            fout.write(data)
            fout.flush()
    except OSError as exc:
        print(f"mptcp-bpf nc: recv: {exc.strerror or exc}", file=sys.stderr)
        recv_ok = False
    # The peer half-closed: it may still receive, so stdin keeps flowing until its EOF
    # (an error of the peer ends the sender too).
    if recv_ok:
        t.join()
    else:
        state["abandoned"] = True
    ok = bool(recv_ok and state["send_ok"])
    linger_close(conn)
    return 0 if ok else 1
