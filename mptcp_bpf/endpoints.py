"""The endpoints and limits of one stack, as `ip mptcp endpoint|limits` changes them.

`EndpointTable(stack)` holds what only endpoints need (the device of each endpoint
address) and does add/delete/change/flush and limits set on the stack's host, under the
stack's lock and through `stack.call` so the loop sends the signals at once. `Stack`
keeps thin methods with the same names that delegate here (control.ControlServer's
protocol is unchanged).

Rank 5, below `stack` (6): the stack imports this module and hands itself in; this module
never imports the stack (a duck-typed `StackLike`). Arguments arrive checked by
control.check_endpoint/check_limits; what only the stack knows (ids, addresses, devices)
is checked here.
"""

from __future__ import annotations

import ipaddress
import socket as _socket
from typing import Any, Callable, Iterable, Protocol

from mptcp_bpf.errors import HintedError
from mptcp_bpf.mptcp.api import ENDPOINT_FLAGS

# the limits the stack starts with (MAX_SUBFLOWS, 8 addresses per family: REFERENCE.md §4);
# `limits set` takes subflows 0..32, add_addr_accepted 0..8
DEFAULT_LIMITS = {"subflows": 32, "add_addr_accepted": 8}
MAX_PER_FAMILY = 8   # endpoints per address family, as the kernel's MPTCP_PM_ADDR_MAX


class StackLike(Protocol):
    """What the table uses of a `stack.Stack`."""

    lock: Any
    host: Any
    devices: list[str]
    ports: list[Any]
    reservations: Any
    _port_by_src: dict[bytes, Any]

    def call(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any: ...
    def _on_listen(self, family: int, ip: Any, port: int, add: bool = True, *rest: Any) -> None: ...
    def _on_event(self, event: Any, *args: Any, **kw: Any) -> None: ...


class EndpointTable:
    """Endpoints (the host's local addresses) and limits of one stack."""

    def __init__(self, stack: StackLike) -> None:
        self.stack = stack
        self.devs: dict[str, str | None] = {}   # endpoint address -> its device

    def note_device(self, address: str, dev: str | None) -> None:
        """Remember the device packets from `address` leave through (shown by `show`)."""
        self.devs[str(ipaddress.ip_address(address))] = dev

    # ----------------------------------------------------------------- reading
    def show(self) -> list[dict]:
        st = self.stack
        with st.lock:
            return [self.row(a) for a in getattr(st.host, "addresses", None) or ()]

    def row(self, a: Any) -> dict:
        """Flags as ip mptcp prints them; addresses found on devices (`auto`) are announced
        by servers and joined from by clients: shown as signal and subflow."""
        flags = getattr(a, "flags", None)
        have = {"signal", "subflow"} if flags is None else set(flags)
        if getattr(a, "backup", False):
            have.add("backup")
        return {"id": a.id, "address": str(a.address), "port": getattr(a, "port", 0) or 0,
                "flags": [f for f in ENDPOINT_FLAGS if f in have],
                "dev": self.devs.get(str(a.address)), "auto": flags is None}

    def find(self, addr_id: int | None, address: str | None = None) -> Any:
        """The host's local address with that id and/or address (HintedError if none)."""
        want = ipaddress.ip_address(address) if address else None
        if addr_id is None and want is None:
            raise HintedError("which endpoint?", "name it: `id ID` or its address")
        for la in self.stack.host.addresses:
            if (addr_id is None or la.id == addr_id) and (want is None or la.address == want):
                return la
        what = f"id {addr_id}" if addr_id is not None else str(address)
        raise HintedError(f"endpoint {what} not found (address not found)",
                          "list the endpoints with `mptcp-bpf endpoint show`")

    def port_for(self, address: str, dev: str | None) -> Any:
        """The port packets from `address` leave through; the address must be on this host
        and on (or `dev` must be) a device the stack runs on."""
        st = self.stack
        if not st.devices:  # in-process ports (tests): no devices to check against
            return st.ports[0] if st.ports else None
        on = address_device(address)
        if on is None:
            raise HintedError(f"{address} is not an address of this host",
                              f"add it to a device first (`ip addr add {address}/24 dev "
                              f"{dev or st.devices[0]}`) or use one `ip addr` lists")
        use = dev or on
        for p in st.ports:
            if getattr(p, "ifname", None) == use:
                return p
        raise HintedError(f"the stack does not run on {use}",
                          f"it runs on {', '.join(st.devices)}: use an address of one of "
                          "them, or name one with `dev`")

    # ----------------------------------------------------------------- changing
    def add(self, address: str, port: int = 0, dev: str | None = None,
            addr_id: int | None = None, flags: Iterable[str] = ()) -> dict:
        """`ip mptcp endpoint add`: path managers of live connections announce it
        (`signal`) or join from it (`subflow`) at once."""
        st = self.stack
        a = ipaddress.ip_address(address)
        fl = set(flags)
        backup = "backup" in fl
        fl.discard("backup")
        xport = self.port_for(str(a), dev)   # netlink: outside the stack lock

        def add() -> dict:
            fam = sum(1 for la in st.host.addresses if la.address.version == a.version)
            for la in st.host.addresses:
                if la.address == a:
                    raise HintedError(f"endpoint {a} already exists (id {la.id})",
                                      "delete it first, or change its backup/fullmesh "
                                      f"flags: `mptcp-bpf endpoint change id {la.id} backup`")
                if addr_id and la.id == addr_id:
                    raise HintedError(f"endpoint id {addr_id} is in use ({la.address})",
                                      "pick another id, or leave `id` out to get a free one")
            if fam >= MAX_PER_FAMILY:
                raise HintedError(f"too many IPv{a.version} endpoints "
                                  f"({MAX_PER_FAMILY} at most)",
                                  "delete one first (`mptcp-bpf endpoint delete id N`)")
            if port:
                try:
                    st.reservations.reserve(a.version, port, str(a))
                except OSError as exc:
                    raise HintedError(f"cannot use port {port} on {a}: {exc.strerror}",
                                      "pick a free port") from None
                st._on_listen(a.version, a.packed, port, True)
            if xport is not None:
                st._port_by_src[a.packed] = xport
            self.devs[str(a)] = dev or getattr(xport, "ifname", None)
            la = st.host.add_address(str(a), addr_id=addr_id or None, backup=backup,
                                     port=port, flags=frozenset(fl))
            row = self.row(la)
            self.event("endpoint_added", row)
            return row
        return st.call(add)

    def delete(self, addr_id: int, address: str | None = None) -> dict:
        """`ip mptcp endpoint delete`: REMOVE_ADDR and the subflows using it closed, on
        every live connection (8684 §3.4.2, through the path managers)."""
        st = self.stack
        if addr_id == 0:
            raise HintedError("id 0 names each connection's initial address: this stack "
                              "does not delete it", "delete an endpoint by its own id "
                              "(`mptcp-bpf endpoint show`)")

        def delete() -> dict:
            la = self.find(addr_id)
            if address is not None and self.find(None, address) is not la:
                raise HintedError(f"endpoint id {addr_id} is {la.address}, not {address}",
                                  "give the id alone, as `endpoint show` lists it")
            row = self.row(la)
            st.host.remove_address(str(la.address))
            if la.port:
                st.reservations.release(la.address.version, la.port)
                st._on_listen(la.address.version, la.address.packed, la.port, False)
            self.event("endpoint_removed", row)
            return row
        return st.call(delete)

    def change(self, addr_id: int | None = None, address: str | None = None,
               backup: bool | None = None, fullmesh: bool | None = None) -> dict:
        """`ip mptcp endpoint change`: backup sends MP_PRIO on the subflows using the
        address (8684 §3.3.8); fullmesh makes clients join it to every peer address."""
        st = self.stack

        def change() -> dict:
            la = self.find(addr_id, address)
            flags = getattr(la, "flags", None)
            new = None
            if fullmesh is not None:
                if fullmesh and (flags is None or "signal" in flags):
                    raise HintedError(f"endpoint id {la.id} is a signal endpoint: flags "
                                      "mustn't have both signal and fullmesh (invalid flags)",
                                      "add a `subflow` endpoint for the address instead")
                base = set(flags or ())
                new = frozenset(base | {"fullmesh"} if fullmesh else base - {"fullmesh"})
                if flags is None and not fullmesh:
                    new = None   # an address found on a device is not fullmesh-flagged
            st.host.change_address(la, backup=backup, flags=new)
            row = self.row(la)
            self.event("endpoint_changed", row)
            return row
        return st.call(change)

    def flush(self) -> list[dict]:
        """`ip mptcp endpoint flush`: every endpoint deleted at once, so each connection
        sends one REMOVE_ADDR with all the ids it announced, as the kernel does."""
        st = self.stack

        def flush() -> list[dict]:
            rows = [self.row(la) for la in st.host.addresses]
            for la in st.host.flush_addresses():
                if la.port:
                    st.reservations.release(la.address.version, la.port)
                    st._on_listen(la.address.version, la.address.packed, la.port, False)
            for row in rows:
                self.event("endpoint_removed", row)
            return rows
        return st.call(flush)

    def event(self, kind: str, row: dict) -> None:
        """A monitor event for an endpoint change (flags as ip prints them: a,b)."""
        self.stack._on_event(dict(row, type=kind, flags=",".join(row["flags"])))

    # ----------------------------------------------------------------- limits
    def limits(self) -> dict:
        cfg = getattr(self.stack.host, "config", None)
        sub = getattr(cfg, "join_limit", None)
        acc = getattr(cfg, "add_addr_accepted", None)
        return {"subflows": DEFAULT_LIMITS["subflows"] if sub is None else sub,
                "add_addr_accepted": DEFAULT_LIMITS["add_addr_accepted"] if acc is None else acc}

    def set_limits(self, subflows: int | None = None,
                   add_addr_accepted: int | None = None) -> dict:
        """`ip mptcp limits set`: additional subflows per connection (joins opened by the
        path manager and accepted by the host) and ADD_ADDRs used; new decisions only."""
        st = self.stack

        def set_() -> dict:
            cfg = st.host.config
            if subflows is not None:
                cfg.join_limit = int(subflows)
            if add_addr_accepted is not None:
                cfg.add_addr_accepted = int(add_addr_accepted)
            lim = self.limits()
            st._on_event(dict(lim, type="limits_set"))
            return lim
        return st.call(set_)


def address_device(address: str) -> str | None:
    """The device of this namespace that carries `address` (pyroute2), or None."""
    from pyroute2 import IPRoute
    want = ipaddress.ip_address(address)
    fam = _socket.AF_INET if want.version == 4 else _socket.AF_INET6
    with IPRoute() as ipr:
        for msg in ipr.get_addr(family=fam):
            got = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            if got and ipaddress.ip_address(got) == want:
                links = ipr.get_links(msg["index"])
                return links[0].get_attr("IFLA_IFNAME") if links else None
    return None
