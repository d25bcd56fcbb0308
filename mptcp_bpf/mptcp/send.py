"""Data-level sending: the send buffer, scheduling chunks onto subflows with one DSS mapping
per chunk (8684 §3.3.1), the data ACK, the peer's window (8684 §3.3.4), re-injection and
DATA_FIN (8684 §3.3.3).

Internally data sequence numbers are relative (1 = first byte, growing without wrap);
they become 64-bit wire values by adding the IDSN modulo 2**64.
"""

from __future__ import annotations

from typing import Any

from mptcp_bpf.tcp.subflow import ACK
from mptcp_bpf.wire.checksum import csum_partial, dss_checksum

from .options import dss_bytes
from .subflow import MASK64, MpSubflow, TxMap

REINJECT_LIMIT = 1 << 20        # bytes re-injected at once by the data-level timer
DATA_RTO_MIN = 1.0              # seconds without data-ACK progress before re-injecting
MAP_MAX = 0xFFFF                # a DSS mapping's data-level length is 16 bits (8684 §3.3)
DATA_TICK = 0.25                # period of the data-level timer while data is outstanding


class SendMixin:
    """Send side of a Connection."""

    # ------------------------------------------------------------ socket-facing
    def send(self, data: bytes, now: float | None = None) -> int:
        if self.error is not None:
            raise BrokenPipeError(self.error, "connection failed")
        if self._shut_wr or self.closed:
            raise BrokenPipeError(32, "send after shutdown")
        room = self.sndbuf_limit - len(self._sndbuf)
        if room <= 0:
            return 0
        if len(data) > room:
            data = data[:room]
        self._sndbuf += data
        self._push(self.host.now if now is None else now)
        return len(data)

    def writable(self) -> bool:
        return (self.error is not None or self._shut_wr
                or (self.connected and len(self._sndbuf) < self.sndbuf_limit))

    @property
    def _snd_end(self) -> int:
        return self.snd_una + len(self._sndbuf)

    # ------------------------------------------------------------ scheduling
    def _push(self, now: float) -> None:
        """Hand chunks to subflows while the scheduler finds room (re-injections first)."""
        if self._pushing or self.closed:
            return
        if (not self._has_copies and not self._reinject and (not self._shut_wr or self._fin_sent)
                and self.snd_una + len(self._sndbuf) <= self.snd_nxt):
            return  # nothing queued (the common case after an input: no work at all)
        self._pushing = True
        try:
            if self.fallback:
                self._push_fallback(now)
            else:
                self._push_mptcp(now)
            self._maybe_send_data_fin(now)
        finally:
            self._pushing = False

    def _push_mptcp(self, now: float) -> None:
        if self._has_copies:
            left = False
            for s in self.subflows:
                if s.copies:
                    self._flush_copies(s, now)
                    left = left or bool(s.copies)
            self._has_copies = left
        if not self._data_ready:
            return
        sched = self.sched
        while True:
            cands = [s for s in self.subflows if s.established]
            if not cands:
                return
            if self._reinject:
                rel, n, excl = self._reinject[0]
                if rel + n <= self.snd_una or rel >= self.snd_nxt:
                    self._reinject.popleft()
                    continue
                if rel < self.snd_una:
                    n -= self.snd_una - rel
                    rel = self.snd_una
                n = min(n, self.snd_nxt - rel)
                pool = [s for s in cands if s.id not in excl] or cands
                sel = sched.select(self, pool, True)
                if not sel:
                    return
                n = min(n, sel[0].mss * self.chunk_segments)
                if not self._hand_out(sel, rel, n, now, reinjected=True):
                    return
                if n >= self._reinject[0][1] - (rel - self._reinject[0][0]):
                    self._reinject.popleft()
                else:
                    self._reinject[0] = (rel + n, self._reinject[0][1] - (rel + n - self._reinject[0][0]), excl)
                continue
            avail = self._snd_end - self.snd_nxt
            if avail <= 0:
                return
            wnd = self.snd_wnd_edge - self.snd_nxt
            if wnd <= 0:
                self.host.count("tx_window_limited")
                return
            fills = getattr(sched, "fills_subflow", False)
            if fills:
                # a subflow that still holds unsent data is blocked by its cwnd or by the
                # peer's TCP window (the kernel's joins start at ~42 KB): give it no more,
                # as the kernel's scheduler skips a subflow whose queue has not drained; it
                # sends on its own ACK clock (or persist timer) and its ACKs push again
                cands = [s for s in cands if not s.tcp.unsent_bytes]
                if not cands:
                    return
            sel = sched.select(self, cands, False)
            if not sel:
                return
            rel = self.snd_nxt
            n = min(avail, wnd, sel[0].mss * self.chunk_segments)
            if fills and n < avail and n < wnd and len(sel) == 1 and rel > 1:
                n = min(avail, wnd, self._fill_room(sel[0]))
            if not self._hand_out(sel, rel, n, now):
                return
            self.snd_nxt = rel + n
            if self._dtimer is None:
                self._arm_data_timer(now)

    def _fill_room(self, msf: MpSubflow) -> int:
        """One mapping for what the subflow can send now (whole MSS, at most MAP_MAX), at
        least a normal chunk. Only for a scheduler that says (`fills_subflow`) it would pick
        the same subflow again until its cwnd is full: the subflows get the same bytes as
        chunk by chunk, in fewer, larger mappings (as the kernel's 64 KB TSO mappings), and
        the subflow sends them in one burst."""
        t = msf.tcp
        mss = t.mss
        room = t.cwnd - t.in_flight - t.unsent_bytes
        room = min(room - room % mss, MAP_MAX - MAP_MAX % mss)
        return max(room, mss * self.chunk_segments)

    def _hand_out(self, sel: list, rel: int, n: int, now: float,
                  reinjected: bool = False) -> bool:
        """Give [rel, rel + n) to the selected subflows. One subflow: it takes the chunk.
        Several (redundant scheduling): the ones with window room take it now; a full one
        keeps only a copy pointer that is sent when room opens and forgotten once the data
        is data-acked (REFERENCE.md §3 redundant), so a slow path neither holds the send
        buffer nor queues stale data. False (nothing done) when no subflow has room."""
        if len(sel) == 1:
            sf = sel[0]
            self._send_chunk(sf, rel, n, now)
            if reinjected:
                sf.reinjected += n
            return True
        ready = [sf for sf in sel if sf.tcp is not None and sf.tcp.can_send()]
        if not ready:
            return False
        for sf in sel:
            if sf in ready:
                self._send_chunk(sf, rel, n, now)
                if reinjected:
                    sf.reinjected += n
            else:
                sf.copies.append((rel, n))
                self._has_copies = True
        return True

    def _flush_copies(self, msf: MpSubflow, now: float) -> None:
        """Send a subflow's pending redundant copies while it has room; drop acked ones."""
        q = msf.copies
        una = self.snd_una
        usable = msf.established and not msf.pf
        while q:
            rel, n = q[0]
            if rel + n <= una or not usable:
                q.popleft()
                self.host.count("redundant_copy_dropped")
                continue
            if not msf.tcp.can_send():
                return
            q.popleft()
            if rel < una:
                n -= una - rel
                rel = una
            self._send_chunk(msf, rel, n, now)

    def _send_chunk(self, msf: MpSubflow, rel: int, n: int, now: float) -> None:
        off = rel - self.snd_una
        with memoryview(self._sndbuf) as mv:  # one copy; the export ends before any del
            data = bytes(mv[off:off + n])
        dsn = (self.local_idsn + rel) & MASK64
        meta = TxMap(dsn, msf.tx_ssn, n)
        if self.csum:
            meta.csum = dss_checksum(dsn, msf.tx_ssn, n, csum_partial(data))
        if self.mpc_ack_pending and self.version == 1 and rel == 1 and msf.tx_ssn == 1 and not msf.join:
            meta.mpc = True  # 8684 §3.1: data on the third ACK (MP_CAPABLE with data length)
        msf.tx_ssn += n
        msf.tx_chunks.append((rel, n))
        msf.bytes_sent += n
        msf.tcp.send(data, meta, now)

    def _push_fallback(self, now: float) -> None:
        sf = self.subflows[0] if self.subflows else None
        if sf is None or sf.tcp is None or not sf.tcp.can_carry_data():
            return
        n = len(self._sndbuf)
        if n:
            # plain TCP: the subflow's own retransmission queue keeps the bytes
            room = max(0, self.sndbuf_limit - sf.tcp.unsent_bytes - sf.in_flight)
            n = min(n, room)
            if n <= 0:
                return
            data = bytes(self._sndbuf[:n])
            del self._sndbuf[:n]
            self.snd_una += n
            self.snd_nxt = self.snd_una
            sf.bytes_sent += n
            sf.tcp.send(data, None, now)
            self._notify_writable()
        if self._shut_wr and not self._sndbuf and not self._fin_sent:
            self._fin_sent = True
            sf.tcp.close(now)

    # ------------------------------------------------------------ options on our segments
    def _ack_options(self, msf: MpSubflow, meta: Any, length: int, flags: int) -> bytes:
        if self.fallback or msf.infinite_tx:
            if msf.infinite_base is not None and not msf.infinite_tx:
                # after MP_FAIL, until the infinite mapping went out (8684 §3.7): chunks
                # mapped before keep their mappings (the peer has not fallen back yet and
                # checks them), the first new data carries the infinite mapping, at a
                # mapping boundary as the kernel sends it
                if meta is not None:
                    ack = (self.remote_idsn + self.rcv_nxt) & MASK64
                    return dss_bytes(ack, meta.dsn, meta.ssn, meta.length, meta.csum, meta.fin)
                if length and msf.tcp.tx_ssn + 1 >= msf.infinite_base[0]:
                    return self._infinite_map_opt(msf)
            return b""
        hs = self._handshake_ack_options(msf, meta, length)
        if hs is not None:
            return hs
        if not msf.join and self.role == "client" and not self._rx_base_known:
            return b""
        ack = (self.remote_idsn + self.rcv_nxt) & MASK64 if self._rx_base_known else None
        if meta is not None:
            return dss_bytes(ack, meta.dsn, meta.ssn, meta.length, meta.csum, meta.fin)
        if length:
            return dss_bytes(ack)
        # pure ACK: DATA_FIN (resent on every ACK until acked) and pending signals
        if self._fin_sent and not self._fin_acked:
            dsn = (self.local_idsn + self._fin_rel) & MASK64
            csum = dss_checksum(dsn, 0, 1, 0) if self.csum else None
            opt = dss_bytes(ack, dsn, 0, 1, csum, True)
        else:
            opt = dss_bytes(ack)
        if msf.pending_opts:
            sig = msf.pending_opts[0]
            if len(opt) + len(sig) <= self.option_budget:
                opt += msf.pending_opts.pop(0)
            elif not (self._fin_sent and not self._fin_acked):
                opt = msf.pending_opts.pop(0)  # the data ACK rides on the next segment
        return opt

    def _data_options(self, msf: MpSubflow) -> bytes | None:
        """What _ack_options returns for a data segment that starts no chunk (meta None,
        length > 0), for a whole push of the subflow (tcp.Subflow._burst_header); None: no
        promise (fallback and infinite mappings depend on the segment)."""
        if self.fallback or msf.infinite_tx:
            return None
        return self._ack_options(msf, None, 1, ACK)

    # ------------------------------------------------------------ data ACK
    def _rx_data_ack(self, msf: MpSubflow, ack: int, ack8: bool, window: int | None) -> None:
        if not ack8:
            # expand a 32-bit data ACK around what we have sent (8684 §3.3.2)
            base = (self.local_idsn + self.snd_una) & MASK64
            ack = (base & ~0xFFFFFFFF) | ack
            if ((ack - base) & MASK64) > (1 << 63):
                ack = (ack + (1 << 32)) & MASK64
        rel = (ack - self.local_idsn) & MASK64
        top = self.snd_nxt + (1 if self._fin_sent else 0)
        if rel > top or rel < self.snd_una - (1 << 31):
            self.host.count("rx_data_ack_invalid")
            return
        if rel > self.snd_una:
            fin_acked = self._fin_sent and rel == self._fin_rel + 1
            data_rel = min(rel, self._snd_end)
            n = data_rel - self.snd_una
            if n > 0:
                del self._sndbuf[:n]
                self.snd_una = data_rel
            self._last_progress = self.host.now
            self._data_backoff = 0
            msf.pf = False
            una = self.snd_una
            tc = msf.tx_chunks  # other subflows' lists are trimmed by the data timer
            while tc and tc[0][0] + tc[0][1] <= una:
                tc.popleft()
            if fin_acked:
                self._fin_acked = True
                self._on_our_fin_acked()
            self._notify_writable()
        if window is not None:
            # 8684 §3.3.5: update only when the right edge grows. The subflows' windows
            # differ (each TCP sizes its own), so taking the latest one would shrink the
            # data-level window to the smallest subflow's (the kernel's joins: ~42 KB)
            edge = rel + window
            if edge > self.snd_wnd_edge:
                self.snd_wnd_edge = edge

    # ------------------------------------------------------------ re-injection
    def _reinject_from(self, msf: MpSubflow) -> None:
        """Queue the subflow's data not yet data-acked for the other subflows."""
        for rel, n in msf.tx_chunks:
            if rel + n > self.snd_una:
                self._reinject.append((rel, n, {msf.id}))
        msf.tx_chunks.clear()
        msf.copies.clear()  # another subflow took each of these chunks when it was queued

    def _arm_data_timer(self, now: float) -> None:
        if self.closed:
            return
        self._dtimer = self._timer(now + DATA_TICK, self._data_timer)

    def _data_rto(self) -> float:
        """Data-level timeout: twice the best live subflow's RTO (at least DATA_RTO_MIN)."""
        rtos = [s.tcp.rto for s in self.subflows if s.established and not s.pf and s.tcp.rto]
        base = max(DATA_RTO_MIN, 2 * min(rtos)) if rtos else DATA_RTO_MIN * 2
        return min(base * (1 << self._data_backoff), 60.0)  # backs off like an RTO

    def _data_timer(self, now: float) -> None:
        """Re-injection (REFERENCE.md §3): a subflow whose RTO fired is potentially failed
        and its unacked chunks go to the others; and when nothing is data-acked for a
        data-level RTO, the oldest unacked data is re-injected (covers a peer that dropped
        data at the data level after acking it on the subflow)."""
        self._dtimer = None
        if self.closed or self.fallback:
            return
        outstanding = self.snd_nxt > self.snd_una or (self._fin_sent and not self._fin_acked)
        if not outstanding:
            return
        una = self.snd_una
        for s in self.subflows:
            tc = s.tx_chunks
            while tc and tc[0][0] + tc[0][1] <= una:
                tc.popleft()
        for s in self.subflows:
            if not s.pf and s.tcp is not None and s.tcp.retransmits >= 1 and s.tx_chunks:
                if any(o is not s and o.established and not o.pf for o in self.subflows):
                    s.pf = True
                    self.host.count("reinject_rto")
                    self._reinject_from(s)
        if now - self._last_progress >= self._data_rto():
            self.host.count("data_rto")
            stuck = [s for s in self.subflows if s.tx_chunks and s.tx_chunks[0][0] <= self.snd_una]
            alive = [s for s in self.subflows if s.established and s not in stuck]
            if alive and self.snd_nxt > self.snd_una:
                n = min(self.snd_nxt - self.snd_una, REINJECT_LIMIT)
                self._reinject.append((self.snd_una, n, {s.id for s in stuck}))
            if self._fin_sent and not self._fin_acked:
                for s in self.subflows:
                    if s.established:
                        s.tcp.send_ack(now)
            self._last_progress = now
            self._data_backoff = min(self._data_backoff + 1, 6)
        self._push(now)
        self._arm_data_timer(now)

    # ------------------------------------------------------------ DATA_FIN
    def shutdown(self, now: float | None = None) -> None:
        now = self.host.now if now is None else now
        if self._shut_wr:
            return
        self._shut_wr = True
        self._push(now)
        self._state_changed()

    def _maybe_send_data_fin(self, now: float) -> None:
        if (not self._shut_wr or self._fin_sent or self.fallback
                or self.snd_nxt < self._snd_end or self._reinject):
            return
        est = [s for s in self.subflows if s.established]
        if not est:
            return
        self._fin_sent = True
        self._fin_rel = self._snd_end
        for s in est:  # 8684 §3.3.3: on any subflow; every pure ACK repeats it until acked
            s.tcp.send_ack(now)
        if self._dtimer is None:
            self._arm_data_timer(now)
        self._state_changed()

    def _notify_writable(self) -> None:
        cb = self.on_writable
        if cb is not None and len(self._sndbuf) < self.sndbuf_limit:
            cb()

    @property
    def _data_ready(self) -> bool:
        return bool(self._reinject) or self._snd_end > self.snd_nxt


__all__ = ["SendMixin"]
