"""Inspection of a subflow: info() for the CLI and tcp_info() with the fields (and units) of
Linux's struct tcp_info that mean something here.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from .common import STATE_NUMBERS
from .congestion import INFINITE_SSTHRESH


class InspectMixin:
    """Methods of Subflow (mixed in); they use its attributes directly."""

    def info(self) -> dict[str, Any]:
        """State for inspection (relative sequence numbers, seconds, bytes)."""
        return {
            "state": self.state,
            "local": f"{ipaddress.ip_address(self.local[0])}:{self.local[1]}",
            "remote": f"{ipaddress.ip_address(self.remote[0])}:{self.remote[1]}",
            "srtt": self.srtt, "rttvar": self.rttvar, "rto": self.rto, "min_rtt": self.min_rtt,
            "cwnd": self.cwnd, "ssthresh": self.ssthresh, "in_flight": self.in_flight,
            "mss": self.mss, "snd_una": self.snd_una, "snd_nxt": self.snd_nxt,
            "rcv_nxt": self.rcv_nxt, "snd_wnd": self.snd_wnd, "bytes_sent": self.bytes_sent,
            "bytes_acked": self.bytes_acked, "bytes_received": self.bytes_received,
            "retransmits": self.total_retrans, "in_recovery": self.in_recovery,
            "sack": self.sack_ok, "timestamps": self.ts_ok,
            "wscale": (self.snd_wscale, self.rcv_wscale) if self.ws_ok else None,
        }

    def tcp_info(self, now: float | None = None) -> dict[str, int]:
        """The fields of Linux's struct tcp_info that mean something here (Linux units:
        microseconds, packets; the last_* ages in milliseconds when `now` is given)."""
        mss = max(1, self.mss)

        def age(t: float) -> int:
            return int(max(0.0, now - t) * 1000) if now is not None and t else 0
        us = 1_000_000
        opts = (1 if self.ts_ok else 0) | (2 if self.sack_ok else 0) | (4 if self.ws_ok else 0)
        ca = 4 if self.in_loss else 3 if self.in_recovery else 1 if self.dupacks else 0
        q = self._q
        out_pkts = max(0, len(q) - self._head)
        return {
            "tcpi_state": STATE_NUMBERS[self.state], "tcpi_ca_state": ca,
            "tcpi_retransmits": self.retransmits, "tcpi_probes": self.probes,
            "tcpi_backoff": self.backoff, "tcpi_options": opts,
            "tcpi_snd_wscale": self.snd_wscale, "tcpi_rcv_wscale": self.rcv_wscale,
            "tcpi_rto": int(self.rto * us), "tcpi_ato": int(self.config.delack_time * us),
            "tcpi_snd_mss": self.mss, "tcpi_rcv_mss": self.rcv_mss,
            "tcpi_unacked": out_pkts, "tcpi_sacked": -(-self.sacked_out // mss),
            "tcpi_lost": -(-self.lost_out // mss), "tcpi_retrans": -(-self.retrans_out // mss),
            "tcpi_fackets": 0,
            "tcpi_last_data_sent": age(self.last_data_sent), "tcpi_last_ack_sent": 0,
            "tcpi_last_data_recv": age(self.last_data_recv),
            "tcpi_last_ack_recv": age(self.last_ack_recv),
            "tcpi_pmtu": self.adv_mss + 40, "tcpi_rcv_ssthresh": self.config.rcv_buf,
            "tcpi_rtt": int((self.srtt or 0) * us), "tcpi_rttvar": int((self.rttvar or 0) * us),
            "tcpi_snd_ssthresh": (0x7FFFFFFF if self.ssthresh >= INFINITE_SSTHRESH
                                  else self.ssthresh // mss),
            "tcpi_snd_cwnd": self.cwnd // mss, "tcpi_advmss": self.adv_mss,
            "tcpi_reordering": self.config.dupthresh, "tcpi_rcv_rtt": 0,
            "tcpi_rcv_space": self._rcv_space(), "tcpi_total_retrans": self.total_retrans,
            "tcpi_bytes_acked": self.bytes_acked, "tcpi_bytes_received": self.bytes_received,
            "tcpi_segs_out": self.segs_out, "tcpi_segs_in": self.segs_in,
            "tcpi_notsent_bytes": self.unsent_bytes,
            "tcpi_min_rtt": int((self.min_rtt or 0) * us),
            "tcpi_data_segs_in": self.data_segs_in, "tcpi_data_segs_out": self.data_segs_out,
            "tcpi_bytes_sent": self.bytes_sent + self.bytes_retrans,
            "tcpi_bytes_retrans": self.bytes_retrans, "tcpi_rcv_ooopack": self.rcv_ooopack,
            "tcpi_snd_wnd": self.snd_wnd, "tcpi_rcv_wnd": self._rcv_wnd_adv,
            "tcpi_delivered": self.bytes_acked // mss, "tcpi_total_rto": self.rto_count & 0xFFFF,
        }
