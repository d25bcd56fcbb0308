"""ACK processing and loss recovery of a subflow: cumulative and duplicate ACKs, the SACK
scoreboard (merged ranges; each ACK touches only newly SACKed segments), RFC 6675 loss
marking, NewReno partial ACKs (RFC 6582) and the retransmission timeout (RFC 6298 §5).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

from mptcp_bpf.wire.tcp import TcpOptions

from .common import FIN, R_TIMEOUT, CLOSED, _M32, _seg_seq


class RecoveryMixin:
    """Methods of Subflow (mixed in); they use its attributes directly."""

    def _process_ack(self, pkt: Any, opts: TcpOptions, seq: int, plen: int, now: float) -> bool:
        ack = (pkt.ack - self.iss - self.snd_una) & _M32
        if ack >= 0x80000000:
            ack -= 0x100000000
        ack += self.snd_una
        snd_una = self.snd_una
        if ack > self.snd_nxt:
            self._send_ack(now)  # acks something we never sent (RFC 9293, RFC 5961 §5)
            return False
        if ack < snd_una - self.max_snd_wnd:
            self._send_ack(now)
            return False
        self.last_ack_recv = now
        # send window (RFC 9293 SND.WL1/WL2)
        wnd = pkt.window << self.snd_wscale
        if self._snd_wl1 < seq or (self._snd_wl1 == seq and self._snd_wl2 <= ack):
            win_changed = wnd != self.snd_wnd
            self.snd_wnd = wnd
            self._snd_wl1 = seq
            self._snd_wl2 = ack
            if wnd > self.max_snd_wnd:
                self.max_snd_wnd = wnd
        else:
            win_changed = False
        sack = opts.sack if self.sack_ok else None
        sacked_before = self.sacked_out
        new_sack = self._on_sack(sack) if sack else 0
        if ack > snd_una:
            self._on_new_ack(ack, opts, now)
        elif ack == snd_una and self.snd_nxt > snd_una and not plen \
                and not win_changed and not pkt.flags & FIN:
            self._on_dupack(new_sack, now)
        elif new_sack and self.snd_nxt > snd_una:
            self._on_dupack(new_sack, now)
        if self.in_recovery:
            # DeliveredData (RFC 6937): newly cumulatively acked + newly SACKed bytes
            self._prr(self.snd_una - snd_una + self.sacked_out - sacked_before)
        if self.snd_wnd and self._persist_timer is not None:
            self._persist_timer.cancel()
            self._persist_timer = None
            self.probes = 0
        return True

    def _on_new_ack(self, ack: int, opts: TcpOptions, now: float) -> None:
        q = self._q
        i = self._head
        n = len(q)
        acked = ack - self.snd_una
        sample_seg = None
        fin_acked = False
        sacked_pop = 0
        lost_ptr = self._lost_ptr
        while i < n:
            s = q[i]
            if s.end > ack:
                break
            if s.sacked:
                self.sacked_out -= s.end - s.seq
                if i < lost_ptr:
                    sacked_pop += s.end - s.seq
            elif s.lost:
                self.lost_out -= s.end - s.seq
                if s.retrans:
                    self.retrans_out -= s.end - s.seq
            if not s.rexmit:
                sample_seg = s
            if s.fin:
                fin_acked = True
            q[i] = None  # type: ignore[call-overload]
            i += 1
        self._head = i
        if lost_ptr < i:
            self._lost_ptr = i
            self._sacked_below = 0
        else:
            self._sacked_below -= sacked_pop
        if self._rtx_ptr < i:
            self._rtx_ptr = i
        if i > 256 and i * 2 > n:
            del q[:i]
            self._head = 0
            self._lost_ptr -= i
            self._rtx_ptr -= i
        self.snd_una = ack
        if self._sack_ranges:
            rs = self._sack_ranges
            while rs and rs[0][1] <= ack:
                rs.pop(0)
            if rs and rs[0][0] < ack:
                rs[0][0] = ack
        if not self.sack_ok and self.sacked_out:
            # RFC 6582: each ACK of new data removes the dupacks it covers
            self.sacked_out = max(0, self.sacked_out - acked)
        if fin_acked:
            acked -= 1
        self.bytes_acked += acked
        self.dupacks = 0
        self.retransmits = 0
        # RTT (RFC 6298; Karn: not from retransmitted segments, unless timestamps say)
        rtt = None
        if sample_seg is not None:
            rtt = now - sample_seg.tx_time
        elif self.ts_ok and opts.ts is not None and opts.ts[1]:
            rtt = ((self._tsval(now) - opts.ts[1]) & _M32) / 1000.0
        if rtt is not None and rtt >= 0:
            self._rtt_sample(rtt, now, opts)
        # recovery bookkeeping
        if self.in_recovery:
            if ack >= self._recover:
                self.in_recovery = False
                self.cc.on_exit_recovery(self, now)
            elif not self.sack_ok:
                # RFC 6582 partial ACK: the next hole is lost too
                self._mark_head_lost()
        elif self.in_loss:
            if ack >= self._recover:
                self.in_loss = False
            self.cc.on_ack(self, acked, rtt, now)
        else:
            self.cc.on_ack(self, acked, rtt, now)
        if self.sack_ok and self.sacked_out:
            if self.in_recovery or self.in_loss:
                self._update_lost()
            elif self.sacked_out > (self.config.dupthresh - 1) * self.mss:
                self._enter_recovery(now)  # holes remain above the new cumulative ACK
        # timers
        if self.snd_nxt > self.snd_una:
            self._rto_deadline = now + self.rto
            if self._rto_timer is None:
                self._rto_timer = self.timers.schedule(self._rto_deadline, self._on_rto)
        else:
            self._rto_deadline = 0.0
        if fin_acked:
            self._on_fin_acked(now)
        if self._on_acked is not None and acked > 0:
            self._on_acked(self, acked)

    def _on_rto(self, now: float) -> None:
        self._rto_timer = None
        if self._rto_deadline == 0.0 or self.state is CLOSED:
            return
        if now < self._rto_deadline - 1e-9:
            self._rto_timer = self.timers.schedule(self._rto_deadline, self._on_rto)
            return
        if self.snd_nxt <= self.snd_una:
            self._rto_deadline = 0.0
            return
        if self.retransmits >= self.config.max_retries:
            self._finish(R_TIMEOUT, now)
            return
        # RFC 5681 §3.1: ssthresh only on the first RTO. Not when fast recovery is under
        # way either (Linux tcp_enter_loss): recovery set it already, and PRR has shrunk
        # cwnd and the pipe, so a new value would be ~2 MSS and leave a multi-second
        # linear climb (seen on TBF-shaped paths after a lost retransmission).
        first = self.retransmits == 0 and not self.in_recovery
        self.cc.on_rto(self, now, first=first)
        self.retransmits += 1
        self.rto_count += 1
        self.backoff += 1
        self.rto = min(self.rto * 2, self.config.max_rto)  # RFC 6298 §5.5
        self.in_recovery = False
        self.in_loss = True
        self._recover = self.snd_nxt
        self.dupacks = 0
        # RFC 6675 §5.1 / Linux tcp_enter_loss: everything not sacked is lost. From the
        # second RTO in a row on, SACKs are forgotten too: the receiver may have reneged
        # (RFC 2018 §8), and SACKed data that is never resent would stall for good.
        forget = self.retransmits > 1 or not self.sack_ok
        q = self._q
        lost = 0
        for i in range(self._head, len(q)):
            s = q[i]
            s.retrans = 0
            if forget:
                s.sacked = False
            if not s.sacked:
                s.lost = True
                lost += s.end - s.seq
        if forget:
            self.sacked_out = 0
            self._sack_ranges = []
            self._high_sacked = 0
        self.lost_out = lost
        self.retrans_out = 0
        self._lost_ptr = len(q)
        self._sacked_below = self.sacked_out
        self._rtx_ptr = self._head
        self._rto_deadline = now + self.rto
        self._rto_timer = self.timers.schedule(self._rto_deadline, self._on_rto)
        self.push(now, force_one=True)

    def _on_dupack(self, new_sack: int, now: float) -> None:
        self.dupacks += 1
        if not self.sack_ok:
            # count the dupack as one segment that left the network (Linux tcp_add_reno_sack)
            room = self.snd_nxt - self.snd_una - self.mss - self.sacked_out
            if room > 0:
                self.sacked_out += min(self.mss, room)
        if not self.in_recovery and not self.in_loss:
            if self.dupacks >= self.config.dupthresh or \
                    (self.sack_ok and self.sacked_out > (self.config.dupthresh - 1) * self.mss):
                self._enter_recovery(now)
        elif self.sack_ok:
            self._update_lost()

    def _enter_recovery(self, now: float) -> None:
        self.in_recovery = True
        self.recoveries += 1
        self.in_loss = False
        self._recover = self.snd_nxt
        self._prr_delivered = 0
        self._prr_out = 0
        self._recover_fs = max(1, self.snd_nxt - self.snd_una)
        self.cc.on_enter_recovery(self, now)
        self._mark_head_lost()
        if self.sack_ok:
            self._update_lost()

    def _prr(self, delivered: int) -> None:
        """Proportional Rate Reduction (RFC 6937, PRR-SSRB): how much recovery may send
        for this ACK, expressed as cwnd = pipe + sndcnt (as Linux does)."""
        if delivered < 0:
            delivered = 0
        self._prr_delivered += delivered
        pipe = self.in_flight
        ss = self.ssthresh
        if pipe > ss:
            sndcnt = -(-self._prr_delivered * ss // self._recover_fs) - self._prr_out
        else:
            sndcnt = min(ss - pipe, max(self._prr_delivered - self._prr_out, delivered) + self.mss)
        if sndcnt < 0:
            sndcnt = 0
        if not self._prr_out and sndcnt < self.mss:
            sndcnt = self.mss  # the fast retransmit itself always goes out
        self.cwnd = pipe + sndcnt

    def _mark_head_lost(self) -> None:
        q = self._q
        i = self._head
        if i >= len(q):
            return
        s = q[i]
        if not s.sacked and not s.lost:
            s.lost = True
            self.lost_out += s.end - s.seq
        elif s.lost and s.retrans and not self.sack_ok:
            # NewReno partial ACK on a segment already retransmitted: resend it
            self.retrans_out -= s.end - s.seq
            s.retrans = 0
        if self._rtx_ptr > i:
            self._rtx_ptr = i
        if self._lost_ptr <= i:
            self._lost_ptr = i + 1  # s is not sacked here: _sacked_below unchanged

    def _update_lost(self) -> None:
        """RFC 6675 IsLost: an unsacked segment with > (DupThresh-1)*MSS sacked above it."""
        q = self._q
        i = self._lost_ptr
        n = len(q)
        limit = (self.config.dupthresh - 1) * self.mss
        high = self._high_sacked
        below = self._sacked_below
        sacked_out = self.sacked_out
        while i < n:
            s = q[i]
            if s.seq >= high:
                break
            if s.sacked:
                below += s.end - s.seq
            else:
                if sacked_out - below <= limit:
                    break
                if not s.lost:
                    s.lost = True
                    self.lost_out += s.end - s.seq
            i += 1
        self._lost_ptr = i
        self._sacked_below = below

    def _on_sack(self, blocks: list[tuple[int, int]]) -> int:
        """Merge SACK blocks into the scoreboard; mark newly covered segments. Returns bytes."""
        base = self.iss + self.snd_una
        una = self.snd_una
        nxt = self.snd_nxt
        newly = 0
        for l32, r32 in blocks:
            left = una + ((l32 - base) & _M32)
            right = una + ((r32 - base) & _M32)
            if right > nxt or left >= right or left < una:
                continue  # stale or bogus (DSACK below una is ignored)
            for pl, pr in self._sack_insert(left, right):
                newly += self._mark_sacked(pl, pr)
            if right > self._high_sacked:
                self._high_sacked = right
        return newly

    def _sack_insert(self, left: int, right: int) -> list[tuple[int, int]]:
        """Add [left, right) to the merged ranges; return the parts that were new."""
        rs = self._sack_ranges
        new: list[tuple[int, int]] = []
        i = 0
        n = len(rs)
        while i < n and rs[i][1] < left:
            i += 1
        cur = left
        j = i
        lo = left
        hi = right
        while j < n and rs[j][0] <= right:
            a, b = rs[j]
            if a > cur:
                new.append((cur, a))
            if b > cur:
                cur = b
            lo = min(lo, a)
            hi = max(hi, b)
            j += 1
        if cur < right:
            new.append((cur, right))
        if new:
            rs[i:j] = [[lo, hi]]
        return new

    def _mark_sacked(self, left: int, right: int) -> int:
        q = self._q
        head = self._head
        lo = bisect_left(q, left, head, len(q), key=_seg_seq) if head < len(q) else head
        if lo > head and q[lo - 1].end > left:
            lo -= 1  # a segment straddling the left edge (should not happen)
        got = 0
        lost_ptr = self._lost_ptr
        n = len(q)
        while lo < n:
            s = q[lo]
            if s.seq >= right:
                break
            if not s.sacked and s.seq >= left and s.end <= right:
                ln = s.end - s.seq
                s.sacked = True
                got += ln
                self.sacked_out += ln
                if s.lost:
                    self.lost_out -= ln
                    if s.retrans:
                        self.retrans_out -= ln
                    s.lost = False
                if lo < lost_ptr:
                    self._sacked_below += ln
            lo += 1
        return got
