"""The receive side of a subflow: in-order delivery to the owner, the out-of-order queue
and the SACK blocks we report (RFC 2018 §4: the newest block first).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

from .common import _first


class ReceiveMixin:
    """Methods of Subflow (mixed in); they use its attributes directly."""

    def _rcv_space(self) -> int:
        fn = self.rcv_window_fn
        if fn is not None:
            return max(0, fn())
        return max(0, self.config.rcv_buf - self._ooo_bytes)

    def _rcv_data(self, seq: int, payload: Any, plen: int, now: float) -> None:
        rcv_nxt = self.rcv_nxt
        if plen > self.rcv_mss:
            self.rcv_mss = min(plen, self.adv_mss)
        self.last_data_recv = now
        self.data_segs_in += 1
        if seq == rcv_nxt:
            self.rcv_nxt = rcv_nxt + plen
            self.bytes_received += plen
            self._hooks.on_data(self, seq - 1, payload)
            if self._ooo:
                self._drain_ooo()
                self._ack_pending = 2  # a hole was filled: ACK at once
            elif self.rcv_nxt - self._rcv_wup > self.rcv_mss:
                # more than one full segment unacked (as Linux): ACK now, or at the end of
                # the owner's receive batch (one ACK per batch, like GRO), capped at 64 KB
                d = self.defer_ack
                if d is not None and self.rcv_nxt - self._rcv_wup < 65536 and \
                        (self._ack_deferred or d(self)):
                    self._ack_deferred = True
                    self._ack_pending = 1
                else:
                    self._ack_pending = 2
            else:
                self._ack_pending = 1  # delayed ACK
        elif seq < rcv_nxt:
            cut = rcv_nxt - seq
            self.rcv_nxt = seq + plen
            self.bytes_received += plen - cut
            self._hooks.on_data(self, rcv_nxt - 1, payload[cut:])
            if self._ooo:
                self._drain_ooo()
            self._ack_pending = 2
        else:
            self._ooo_insert(seq, payload, plen)
            self._ack_pending = 2  # out of order: immediate (dup) ACK with SACK

    def _ooo_insert(self, seq: int, payload: Any, plen: int) -> None:
        self.rcv_ooopack += 1
        end = seq + plen
        # bounded memory: nothing beyond the buffer or the window we advertised
        if end - self.rcv_nxt > max(self.config.rcv_buf, self._rcv_adv_right - self.rcv_nxt):
            self.dropped += 1
            return
        ooo = self._ooo
        i = bisect_left(ooo, seq, key=_first)
        # drop exact/contained duplicates, keep it simple for partial overlaps
        if (i < len(ooo) and ooo[i][0] == seq and ooo[i][1] >= end) or \
                (i > 0 and ooo[i - 1][1] >= end):
            self._dsack = (seq, end)  # already queued: report the duplicate (RFC 2883)
            self._note_sack(seq, end)
            return
        ooo.insert(i, [seq, end, bytes(payload)])
        self._ooo_bytes += plen
        self._note_sack(seq, end)

    def _note_sack(self, seq: int, end: int) -> None:
        """RFC 2018 §4: the block holding the newest segment first, then the most recent."""
        lo, hi = seq, end
        keep: list[tuple[int, int]] = []
        for a, b in self._sack_blocks:
            if b < lo or a > hi:
                keep.append((a, b))
            else:
                lo = min(lo, a)
                hi = max(hi, b)
        self._sack_blocks = [(lo, hi)] + keep[:3]

    def _drain_ooo(self) -> None:
        ooo = self._ooo
        k = 0
        n = len(ooo)
        while k < n and ooo[k][0] <= self.rcv_nxt:
            seq, end, data = ooo[k]
            k += 1
            self._ooo_bytes -= end - seq
            if end <= self.rcv_nxt:
                continue
            cut = self.rcv_nxt - seq
            self.rcv_nxt = end
            self.bytes_received += end - seq - cut
            self._hooks.on_data(self, seq + cut - 1, memoryview(data)[cut:] if cut else data)
        del ooo[:k]  # one shift for the whole run (not one per entry)
        rn = self.rcv_nxt
        if self._sack_blocks:
            self._sack_blocks = [(a, b) for a, b in self._sack_blocks if b > rn]
