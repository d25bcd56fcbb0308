"""mptcp-bpf: a user-space Multipath TCP stack whose fast path runs as eBPF (XDP).

`mptcp_bpf.socket(family, type)` makes a socket of the stack (imported on first use, so
`import mptcp_bpf` stays cheap); the socket option numbers of the multipath-tcp.org kernel
and its socket-API fork are exported here: `mptcp_bpf.MPTCP_GET_SUB_IDS`, ...
"""

from __future__ import annotations

from typing import Any

from mptcp_bpf.sockopt import (IP_TOS, IPV6_TCLASS, MPTCP_CLOSE_SUB_ID, MPTCP_ENABLED,
                               MPTCP_GET_SUB_IDS, MPTCP_GET_SUB_INFO, MPTCP_GET_SUB_TUPLE,
                               MPTCP_INFO, MPTCP_INFO_FLAG_SAVE_MASTER, MPTCP_OPEN_SUB_ID,
                               MPTCP_OPEN_SUB_TUPLE, MPTCP_PATH_MANAGER, MPTCP_SCHEDULER,
                               MPTCP_SUB_GETSOCKOPT, MPTCP_SUB_SETSOCKOPT, SOL_TCP, TCP_INFO,
                               TCP_NODELAY)

__version__ = "0.1.0"

IPPROTO_TCP = SOL_TCP

_LAZY = {"socket", "MptcpSocket", "create_connection", "create_server", "aio", "Stack",
         "StackConfig"}


def __getattr__(name: str) -> Any:
    if name in ("socket", "aio"):
        import importlib
        return importlib.import_module(f"mptcp_bpf.{name}" if name == "socket"
                                       else "mptcp_bpf.socket.aio")
    if name in ("MptcpSocket", "create_connection", "create_server"):
        from mptcp_bpf.socket import core
        return getattr(core, name)
    if name in ("Stack", "StackConfig"):
        from mptcp_bpf import stack
        return getattr(stack, name)
    raise AttributeError(f"module 'mptcp_bpf' has no attribute {name!r}")
