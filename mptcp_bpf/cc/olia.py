"""OLIA, the opportunistic linked-increases algorithm (Khalili et al., 2013)."""

from __future__ import annotations

from typing import Any, Sequence

from mptcp_bpf.cc.base import CoupledCC

_REL = 1e-9


def _argmax(values: Sequence[float]) -> set[int]:
    top = max(values)
    return {i for i, v in enumerate(values) if v >= top - abs(top) * _REL}


def olia_epsilons(cwnds: Sequence[float], rtts: Sequence[float],
                  loss_bytes: Sequence[float]) -> list[float]:
    """The eps_r of every path: B = argmax l_p / rtt_p^2 (best), M = argmax w_p (largest).

    eps_r = 1/(n |B\\M|) for r in B\\M; -1/(n |M|) for r in M when B\\M is not empty; else 0.
    """
    n = len(cwnds)
    best = _argmax([l / (r * r) for l, r in zip(loss_bytes, rtts)])
    largest = _argmax(cwnds)
    collected = best - largest
    eps = [0.0] * n
    if not collected:
        return eps
    for r in range(n):
        if r in collected:
            eps[r] = 1.0 / (n * len(collected))
        elif r in largest:
            eps[r] = -1.0 / (n * len(largest))
    return eps


def olia_increase(r: int, cwnds: Sequence[float], rtts: Sequence[float],
                  loss_bytes: Sequence[float]) -> float:
    """Per ACK on r: (w_r / rtt_r^2) / (sum_p w_p / rtt_p)^2 + eps_r / w_r (packets)."""
    denom = sum(w / t for w, t in zip(cwnds, rtts))
    eps = olia_epsilons(cwnds, rtts, loss_bytes)[r]
    return (cwnds[r] / (rtts[r] ** 2)) / (denom * denom) + eps / cwnds[r]


class Olia(CoupledCC):
    """OLIA: LIA's responsiveness with Pareto-optimal pooling (window moves to best paths)."""

    name = "olia"

    def __init__(self, params: dict[str, Any] | None = None, group: Any = None) -> None:
        super().__init__(params, group)
        self.since_loss = 0   # l_2: bytes acked since the last loss
        self.between = 0      # l_1: bytes acked between the last two losses

    def loss_distance(self) -> int:
        """l_r = max(l_1r, l_2r), the bytes between the last two losses (or since the last)."""
        return max(self.between, self.since_loss)

    def on_ack(self, sf: Any, acked: int, rtt: float | None, now: float) -> None:
        self.since_loss += acked
        super().on_ack(sf, acked, rtt, now)

    def on_enter_recovery(self, sf: Any, now: float) -> None:
        self.between, self.since_loss = self.since_loss, 0
        super().on_enter_recovery(sf, now)

    def on_rto(self, sf: Any, now: float, first: bool = True) -> None:
        if first:
            self.between, self.since_loss = self.since_loss, 0
        super().on_rto(sf, now, first)

    def increase(self, sf: Any, peers: list[Any]) -> float:
        cwnds = [p.cwnd / p.mss for p in peers]
        rtts = [p.srtt for p in peers]
        ls = []
        for p in peers:
            ctl = self.controller_of(p)
            ls.append(float(ctl.loss_distance()) if isinstance(ctl, Olia) else 0.0)
        r = next(k for k, p in enumerate(peers) if p is sf)
        return olia_increase(r, cwnds, rtts, ls)
