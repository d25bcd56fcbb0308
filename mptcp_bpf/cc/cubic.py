"""CUBIC (RFC 9438), uncoupled: a window that grows as a cubic function of the time since
the last loss, for long fat paths; each subflow behaves like one CUBIC TCP flow."""

from __future__ import annotations

from typing import Any

from mptcp_bpf.tcp.congestion import CongestionControl, slow_start


def cubic_window(t: float, w_max: float, k: float, c: float) -> float:
    """RFC 9438 §4.2: W_cubic(t) = C (t - K)^3 + W_max (packets)."""
    return c * (t - k) ** 3 + w_max


def cubic_k(w_max: float, cwnd: float, c: float) -> float:
    """RFC 9438 §4.2: K = cbrt((W_max - cwnd_epoch) / C)."""
    return max(0.0, (w_max - cwnd) / c) ** (1.0 / 3.0)


class Cubic(CongestionControl):
    """RFC 9438 with fast convergence and the Reno-friendly region."""

    name = "cubic"

    def __init__(self, params: dict[str, Any] | None = None, group: Any = None) -> None:
        super().__init__(params, group)
        self.beta = float(self.params.get("beta", 0.7))
        self.c = float(self.params.get("c", 0.4))
        self.fast_convergence = bool(self.params.get("fast_convergence", True))
        self.w_max = 0.0
        self.w_last_max = 0.0
        self.epoch_start: float | None = None
        self.k = 0.0
        self.origin = 0.0
        self.w_est = 0.0
        self._frac = 0.0

    def on_ack(self, sf: Any, acked: int, rtt: float | None, now: float) -> None:
        if not sf.cwnd_limited:
            return
        if sf.cwnd < sf.ssthresh:
            acked = slow_start(sf, acked)   # bytes acked, as Linux (tcp.congestion)
            if not acked:
                return
        w = sf.cwnd / sf.mss
        if self.epoch_start is None:
            self.epoch_start = now
            if w < self.w_max:
                self.k, self.origin = cubic_k(self.w_max, w, self.c), self.w_max
            else:
                self.k, self.origin = 0.0, w
            self.w_est = w
        srtt = sf.srtt or rtt or 0.1
        t = now - self.epoch_start
        target = cubic_window(t + srtt, self.origin, self.k, self.c)
        target = min(max(target, w), 1.5 * w)
        # Reno-friendly estimate (RFC 9438 §4.3)
        alpha = 3 * (1 - self.beta) / (1 + self.beta)
        self.w_est += alpha * (acked / sf.mss) / w
        goal = max(target, self.w_est)
        inc = (goal - w) / w * (acked / sf.mss) * sf.mss + self._frac
        whole = int(inc)
        self._frac = inc - whole
        sf.cwnd += whole

    def ssthresh_on_loss(self, sf: Any) -> int:
        w = sf.cwnd / sf.mss
        if self.fast_convergence and w < self.w_last_max:
            self.w_last_max = w
            self.w_max = w * (1 + self.beta) / 2
        else:
            self.w_last_max = w
            self.w_max = w
        self.epoch_start = None
        return max(int(sf.cwnd * self.beta), 2 * sf.mss)
