"""LIA, the linked-increases algorithm of RFC 6356 (coupled congestion avoidance)."""

from __future__ import annotations

from typing import Any, Sequence

from mptcp_bpf.cc.base import CoupledCC


def lia_alpha(cwnds: Sequence[float], rtts: Sequence[float]) -> float:
    """RFC 6356 §3: alpha = w_total * max(w_i / rtt_i^2) / (sum w_i / rtt_i)^2 (w in packets)."""
    total = sum(cwnds)
    best = max(w / (r * r) for w, r in zip(cwnds, rtts))
    denom = sum(w / r for w, r in zip(cwnds, rtts))
    return total * best / (denom * denom)


def lia_increase(i: int, cwnds: Sequence[float], rtts: Sequence[float]) -> float:
    """RFC 6356 §3: per ACK on i, min(alpha / w_total, 1 / w_i) packets per packet acked."""
    alpha = lia_alpha(cwnds, rtts)
    return min(alpha / sum(cwnds), 1.0 / cwnds[i])


class Lia(CoupledCC):
    """RFC 6356 linked increases: no more than one TCP on a shared bottleneck."""

    name = "lia"

    def increase(self, sf: Any, peers: list[Any]) -> float:
        cwnds = [p.cwnd / p.mss for p in peers]
        rtts = [p.srtt for p in peers]
        i = next(k for k, p in enumerate(peers) if p is sf)
        return lia_increase(i, cwnds, rtts)
