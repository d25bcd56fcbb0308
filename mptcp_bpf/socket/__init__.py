"""The socket API of our MPTCP stack: `mptcp_bpf.socket(family, type)` -> MptcpSocket.

`mptcp_bpf.socket` is both this package and callable (like the function of the issue's
API), so `mptcp_bpf.socket(AF_INET, SOCK_STREAM)` and `from mptcp_bpf.socket import
MptcpSocket` both work. Modules: `core` (the socket), `enhanced` (MPTCP socket options
and wrappers), `aio` (asyncio streams).
"""

from __future__ import annotations

import sys
import types
from typing import Any

from mptcp_bpf.socket.core import (AF_INET, AF_INET6, SHUT_RD, SHUT_RDWR, SHUT_WR, SOCK_STREAM,
                                   MptcpSocket, create_connection, create_server, socket,
                                   timeout)

__all__ = ["AF_INET", "AF_INET6", "SOCK_STREAM", "SHUT_RD", "SHUT_WR", "SHUT_RDWR",
           "MptcpSocket", "socket", "create_connection", "create_server", "timeout"]


class _CallableModule(types.ModuleType):
    """Lets `mptcp_bpf.socket(...)` create a socket although it names this package."""

    def __call__(self, *args: Any, **kwargs: Any) -> MptcpSocket:
        return socket(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
