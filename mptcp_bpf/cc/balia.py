"""BALIA, the balanced linked adaptation algorithm (Peng, Walid, Hwang, Low, 2016)."""

from __future__ import annotations

from typing import Any, Sequence

from mptcp_bpf.cc.base import CoupledCC


def balia_increase(r: int, cwnds: Sequence[float], rtts: Sequence[float]) -> float:
    """Per ACK on r: (x_r / rtt_r) / (sum x)^2 * (1 + a_r)/2 * (4 + a_r)/5, x = w / rtt,
    a_r = max(x) / x_r (packets per packet acked)."""
    xs = [w / t for w, t in zip(cwnds, rtts)]
    a = max(xs) / xs[r]
    total = sum(xs)
    return (xs[r] / rtts[r]) / (total * total) * (1 + a) / 2 * (4 + a) / 5


def balia_decrease(r: int, cwnds: Sequence[float], rtts: Sequence[float]) -> float:
    """On loss on r: w_r decreases by (w_r / 2) * min(a_r, 1.5) packets."""
    xs = [w / t for w, t in zip(cwnds, rtts)]
    a = max(xs) / xs[r]
    return cwnds[r] / 2 * min(a, 1.5)


class Balia(CoupledCC):
    """BALIA: balances responsiveness, TCP-friendliness and window oscillation."""

    name = "balia"

    def increase(self, sf: Any, peers: list[Any]) -> float:
        r = next(k for k, p in enumerate(peers) if p is sf)
        return balia_increase(r, [p.cwnd / p.mss for p in peers], [p.srtt for p in peers])

    def ssthresh_on_loss(self, sf: Any) -> int:
        peers = self.peers()
        if not any(p is sf for p in peers):
            return super().ssthresh_on_loss(sf)
        r = next(k for k, p in enumerate(peers) if p is sf)
        cwnds = [p.cwnd / p.mss for p in peers]
        dec = balia_decrease(r, cwnds, [p.srtt for p in peers])
        return max(int((cwnds[r] - dec) * sf.mss), 2 * sf.mss)
