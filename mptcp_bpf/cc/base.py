"""What the coupled controllers share: the connection's view of its subflows in packets.

A controller instance serves one subflow (api: `plugins.create("cc", name, group=...)`);
the group (tcp.congestion.CcGroup) lists the connection's subflows in `members`, and we
keep each member's controller in `group.controllers` so one controller can read another's
state (OLIA's loss distances, wVegas's rates).
"""

from __future__ import annotations

from typing import Any

from mptcp_bpf.tcp.congestion import CcGroup, CongestionControl, slow_start


BATCH_FRACTION = 8  # apply the coupled increase after every cwnd / 8 bytes acked


class CoupledCC(CongestionControl):
    """Reno slow start and loss response; subclasses give the congestion-avoidance step."""

    name = "coupled"

    def __init__(self, params: dict[str, Any] | None = None, group: CcGroup | None = None) -> None:
        super().__init__(params, group if group is not None else CcGroup())
        self._frac = 0.0  # sub-byte remainder of cwnd growth, so tiny increments add up
        self._acked = 0   # acknowledged bytes not yet applied (see on_ack)

    def init(self, sf: Any) -> None:
        super().init(sf)
        ctl = _controllers(self.group)
        ctl[id(sf)] = self
        self._frac = 0.0

    def release(self, sf: Any) -> None:
        super().release(sf)
        _controllers(self.group).pop(id(sf), None)

    def controller_of(self, sf: Any) -> "CoupledCC | None":
        return _controllers(self.group).get(id(sf))

    def peers(self) -> list[Any]:
        """Subflows that take part in the coupling: the ones with an RTT sample and a window.

        8684 leaves the set to the implementation; like the reference kernel we use the
        subflows that can send (established ones have an RTT from the handshake)."""
        return [m for m in self.group.members
                if m.srtt and m.srtt > 0 and m.cwnd > 0 and getattr(m, "established", True)]

    def grow(self, sf: Any, packets_per_packet: float, acked: int) -> None:
        """Add `packets_per_packet` packets per acknowledged packet (bytes: times `acked`)."""
        delta = packets_per_packet * acked + self._frac
        whole = int(delta) if delta >= 0 else -int(-delta)
        self._frac = delta - whole
        sf.cwnd = max(sf.mss, sf.cwnd + whole)

    def on_ack(self, sf: Any, acked: int, rtt: float | None, now: float) -> None:
        """Congestion avoidance in batches of 1/8 of the window: the increase is linear in
        the bytes acked, so batching only delays the coupling terms' refresh to 8 times per
        RTT (the reference kernel recomputes them about as rarely) and keeps the per-ACK
        cost near Reno's."""
        if not sf.cwnd_limited:
            return
        if sf.cwnd < sf.ssthresh:
            acked = slow_start(sf, acked)   # bytes acked, as Linux (tcp.congestion)
            if not acked:
                return
        pending = self._acked + acked
        if pending * BATCH_FRACTION < sf.cwnd:
            self._acked = pending
            return
        self._acked = 0
        peers = self.peers()
        if not any(p is sf for p in peers):
            self.grow(sf, sf.mss / sf.cwnd, pending)   # not coupled (yet): Reno's increase
            return
        self.grow(sf, self.increase(sf, peers), pending)

    def on_enter_recovery(self, sf: Any, now: float) -> None:
        self._acked = 0
        super().on_enter_recovery(sf, now)

    def on_rto(self, sf: Any, now: float, first: bool = True) -> None:
        self._acked = 0
        super().on_rto(sf, now, first)

    def increase(self, sf: Any, peers: list[Any]) -> float:
        """Congestion-avoidance increase of `sf`, in packets per acknowledged packet."""
        return sf.mss / sf.cwnd


def _controllers(group: CcGroup) -> dict[int, CoupledCC]:
    ctl = getattr(group, "controllers", None)
    if ctl is None:
        ctl = {}
        group.controllers = ctl  # type: ignore[attr-defined]
    return ctl


def packets(sf: Any) -> float:
    return sf.cwnd / sf.mss
