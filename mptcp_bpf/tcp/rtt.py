"""RTT estimation and the retransmission timeout value (RFC 6298 §2, Karn via the callers).
"""

from __future__ import annotations

from mptcp_bpf.wire.tcp import TcpOptions

from .common import _M32


class RttMixin:
    """Methods of Subflow (mixed in); they use its attributes directly."""

    def _rtt_sample(self, rtt: float | None, now: float, opts: TcpOptions,
                    syn: bool = False) -> None:
        """RFC 6298 §2: SRTT/RTTVAR update, RTO = SRTT + max(G, 4 RTTVAR), clamped."""
        if syn:
            if self.syn_retransmits:
                if self.ts_ok and opts.ts is not None and opts.ts[1]:
                    rtt = ((self._tsval(now) - opts.ts[1]) & _M32) / 1000.0
                else:
                    return  # Karn: the SYN was retransmitted
            else:
                rtt = now - self._syn_time
        if rtt is None:
            return
        if self.min_rtt is None or rtt < self.min_rtt:
            self.min_rtt = rtt
        if self.srtt is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self.backoff = 0
        self._set_rto()

    def _set_rto(self) -> None:
        cfg = self.config
        rto = self.srtt + max(0.001, 4 * self.rttvar)
        if rto < cfg.min_rto:
            rto = cfg.min_rto
        self.rto = min(rto, cfg.max_rto)
