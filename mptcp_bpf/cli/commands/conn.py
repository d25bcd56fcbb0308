"""`mptcp-bpf conn show [TOKEN]`: the running stack's MPTCP connections, like `ss -M`.

Also the helpers the other inspection commands share (subflow, endpoint, limits, monitor):
they all ask the stack of this network namespace through its control socket.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

from mptcp_bpf.cli.common import emit
from mptcp_bpf.control import ControlClient
from mptcp_bpf.errors import HintedError


def client(args: argparse.Namespace) -> ControlClient:
    return ControlClient(getattr(args, "socket", None) or None)


def add_socket_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--socket", metavar="PATH",
                   help="control socket (default: the stack of this network namespace)")


def add_show_command(sub: argparse._SubParsersAction, name: str, help: str, show_help: str,
                     token_help: str, func: Callable[[argparse.Namespace], int]) -> None:
    """`NAME show|list [TOKEN] [--socket PATH]`, and `NAME` alone shows too."""
    p = sub.add_parser(name, help=help)
    cmds = p.add_subparsers(dest="command", metavar="COMMAND")
    show = cmds.add_parser("show", aliases=["list"], help=show_help)
    show.add_argument("token", nargs="?", help=token_help)
    add_socket_option(show)
    show.set_defaults(func=func)
    p.set_defaults(func=func, token=None, socket=None)


def request_by_token(args: argparse.Namespace, what: str) -> tuple[int | None, Any]:
    """The stack's `what` (a control request), of connection `args.token` only if given."""
    tok = parse_token(args.token)
    return tok, client(args).request(what, **({"token": tok} if tok is not None else {}))


def parse_token(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text, 16)  # tokens are always shown in hex
    except ValueError:
        raise HintedError(f"bad token {text!r}",
                          "give it in hex as `conn show` prints it, e.g. 0x1a2b3c4d") from None


def hexa(value: Any, width: int = 8) -> str:
    """Tokens and keys as 0x..., whether the stack gave an int or hex text."""
    if isinstance(value, str):
        try:
            value = int(value, 16)
        except ValueError:
            return value
    if isinstance(value, int) and not isinstance(value, bool):
        return f"0x{value:0{width}x}"
    return "-" if value is None else str(value)


def addr(value: Any) -> str:
    """(ip, port) or "ip:port" or {"address", "port"} as ip:port ([v6]:port)."""
    if isinstance(value, dict):
        value = (value.get("address") or value.get("ip"), value.get("port"))
    if isinstance(value, (list, tuple)) and len(value) >= 2:
        host, port = str(value[0]), value[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return "-" if value is None else str(value)


def ms(value: Any) -> str:
    """RTT in seconds (float) as milliseconds."""
    if value is None:
        return "-"
    try:
        return f"{float(value) * 1000:.2f}ms"
    except (TypeError, ValueError):
        return str(value)


def with_extras(lines: list[str], d: dict[str, Any], shown: set[str]) -> str:
    """`lines`, then one line of the scalar fields of `d` not in `shown` (what a newer
    stack reports shows up without a CLI change)."""
    rest = [f"{k} {v}" for k, v in d.items()
            if k not in shown and v is not None and not isinstance(v, (dict, list))]
    if rest:
        lines.append("\t" + " ".join(rest))
    return "\n".join(lines)


CONN_SHOWN = {"token", "version", "state", "csum", "checksum", "local_key", "remote_key",
              "keys", "pm", "path_manager", "sched", "scheduler", "cc", "subflows", "role",
              "remote_token", "bytes_sent", "bytes_received", "bytes_acked", "fallback",
              "local", "remote"}


def _count(c: dict[str, Any], key: str, seq: str) -> Any:
    """A byte count, or derived from a relative data sequence number (1 = first byte)."""
    if c.get(key) is not None:
        return c[key]
    rel = c.get(seq)
    return rel - 1 if isinstance(rel, int) and rel > 0 else "-"


def format_conn(c: dict[str, Any]) -> str:
    keys = c.get("keys") if isinstance(c.get("keys"), dict) else {}
    lkey = c.get("local_key", keys.get("local"))
    rkey = c.get("remote_key", keys.get("remote"))
    csum = c.get("csum", c.get("checksum"))
    head = (f"token {hexa(c.get('token'))} {c.get('state', '-')} v{c.get('version', '?')}"
            f" {c.get('role', '')}".rstrip())
    lines = [head]
    lines.append(f"\tlocal {addr(c.get('local'))} remote {addr(c.get('remote'))}"
                 f" remote_token {hexa(c.get('remote_token'))}"
                 f" local_key {hexa(lkey, 16)} remote_key {hexa(rkey, 16)}"
                 f" csum {'on' if csum else 'off'}"
                 + (" fallback" if c.get("fallback") else ""))
    lines.append(f"\tpm {c.get('pm', c.get('path_manager', '-'))}"
                 f" sched {c.get('sched', c.get('scheduler', '-'))} cc {c.get('cc', '-')}"
                 f" bytes_sent {_count(c, 'bytes_sent', 'snd_nxt')}"
                 f" bytes_acked {_count(c, 'bytes_acked', 'snd_una')}"
                 f" bytes_received {_count(c, 'bytes_received', 'rcv_nxt')}"
                 f" subflows {len(c.get('subflows') or [])}")
    return with_extras(lines, c, CONN_SHOWN)


def register(sub: argparse._SubParsersAction) -> None:
    add_show_command(sub, "conn", "MPTCP connections of the running stack",
                     "show connections (like ss -M)", "only this connection (local token)",
                     show_conns)


def show_conns(args: argparse.Namespace) -> int:
    tok, conns = request_by_token(args, "conns")
    if tok is not None and not conns:
        raise HintedError(f"no connection with token {hexa(tok)}",
                          "list them with `mptcp-bpf conn show`")
    text = "\n".join(format_conn(c) for c in conns) if conns else "no MPTCP connections"
    emit(args, conns, text)
    return 0
