"""Data-level receiving: mappings (a mapping may span segments, 8684 §3.3.1), the DSS
checksum (verified before delivery; the payload sum is pluggable so the fast path's
per-segment partial sums can be used), reassembly across subflows bounded by the
receive buffer, DATA_FIN (8684 §3.3.3), and the infinite mapping (8684 §3.7).
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right
from typing import Any

from mptcp_bpf.wire.checksum import csum_block_add, csum_partial, dss_checksum_ok

from .subflow import MASK64, MpSubflow, RxMap

MAX_RX_MAPS = 8192  # mappings remembered per subflow (bounded memory; > window / chunk)


def _map_ssn(m: RxMap) -> int:
    return m.ssn


class RecvMixin:
    """Receive side of a Connection."""

    # ------------------------------------------------------------ socket-facing
    def recv(self, n: int, now: float | None = None) -> bytes:
        q = self._rcvq
        if not q:
            if self.eof or self.error is not None:
                return b""
            raise BlockingIOError(11, "no data")
        before = self._rcv_space()
        out = []
        got = 0
        while q and got < n:
            chunk = q[0]
            take = n - got
            if len(chunk) <= take:
                out.append(q.popleft())
                got += len(chunk)
            else:
                out.append(chunk[:take])
                q[0] = chunk[take:]
                got += take
        self._rcv_queued -= got
        if self._peer_fin_done and not q:
            self.eof = True
        after = self._rcv_space()
        # window update when the advertised window grows noticeably (like tcp_cleanup_rbuf)
        if before < self.rcvbuf_limit // 2 <= after or (before == 0 and after > 0):
            self._send_window_update(self.host.now if now is None else now)
        return b"".join(out)

    def readable(self) -> bool:
        return bool(self._rcvq) or self.eof or self._peer_fin_done or self.error is not None

    def _rcv_space(self) -> int:
        """Free receive buffer: what every subflow advertises (8684 §3.3.4)."""
        return max(0, self.rcvbuf_limit - self._rcv_queued - self._ooo_bytes)

    def _send_window_update(self, now: float) -> None:
        """An ACK on every subflow: each peer subflow tracks its own copy of the window."""
        for s in self.subflows:
            if s.established:
                s.tcp.send_ack(now)

    # ------------------------------------------------------------ mappings
    def _rx_add_map(self, msf: MpSubflow, dsn: int, ssn: int, length: int, csum: int | None,
                    fin: bool) -> None:
        msf.rx_seen_map = True
        if length == 0:
            # infinite mapping (8684 §3.7): everything from ssn on maps 1:1 from dsn
            msf.infinite = (dsn, ssn)
            self.host.count("rx_infinite_map")
            self._do_fallback("infinite mapping")
            return
        if fin and ssn == 0 and length == 1:
            self._rx_data_fin((dsn - self.remote_idsn) & MASK64)
            return
        if ssn + (length - 1 if fin else length) <= msf.rx_ssn_next:
            if fin:
                self._rx_data_fin(((dsn - self.remote_idsn) & MASK64) + length - 1)
            return  # old mapping (retransmission)
        maps = msf.rx_maps
        m = RxMap(dsn, ssn, length, csum, fin)
        i = bisect_left(maps, ssn, key=_map_ssn)
        if i < len(maps) and maps[i].ssn == ssn:
            old = maps[i]
            if not old.same(m) and old.got == 0:
                maps[i] = m  # 8684 §3.3.1: a newer mapping for unreceived data replaces it
            return
        maps.insert(i, m)
        if len(maps) > MAX_RX_MAPS:
            maps.pop()  # the furthest one; the peer re-sends it (data level)
            self.host.count("rx_map_overflow")

    def _on_data(self, msf: MpSubflow, ssn0: int, data: Any) -> None:
        """In-order subflow data (ssn0 relative to the peer's ISN + 1, i.e. 0-based)."""
        ssn = ssn0 + 1
        n_all = len(data)
        msf.bytes_received += n_all
        msf.rx_ssn_next = ssn + n_all
        if self.fallback or msf.infinite is not None:
            # plain TCP (or an infinite mapping): the subflow stream IS the data stream
            self._rx_deliver(self.rcv_nxt, bytes(data))
            return
        mv = memoryview(data) if not isinstance(data, memoryview) else data
        maps = msf.rx_maps
        while mv:
            while maps and maps[0].end <= ssn and maps[0].got >= maps[0].data_len:
                maps.pop(0)
            m = maps[0] if maps else None   # in-order data: almost always the first one
            if m is not None and not m.ssn <= ssn < m.end:
                i = bisect_right(maps, ssn, key=_map_ssn) - 1
                m = maps[i] if i >= 0 and maps[i].ssn <= ssn < maps[i].end else None
            if m is None:
                if not msf.rx_seen_map and not msf.join and len(self.subflows) <= 1:
                    # 8684 §3.7: the first data carries no DSS -> fall back to TCP
                    self.host.count("fallback_no_dss")
                    self._do_fallback("first data without DSS")
                    self._rx_deliver(self.rcv_nxt, bytes(mv))
                    return
                self.host.count("rx_unmapped")
                return  # the peer re-sends at the data level
            off = ssn - m.ssn
            take = min(len(mv), m.data_len - off)
            piece = mv[:take]
            if m.csum is not None:
                if off != m.got:
                    self.host.count("rx_map_gap")
                    maps.remove(m)
                    return
                if m.sum is not None:
                    # the fast path's sum of this segment, else one sum over the whole
                    # mapping at the end (one C-speed pass instead of one per segment)
                    ps = self.host.fast_sum(piece)
                    m.sum = None if ps is None else csum_block_add(m.sum, ps, off)
                m.buf.append(bytes(piece))
                m.got += take
                if m.got == m.data_len:
                    maps.remove(m)
                    blob = b"".join(m.buf)
                    total = m.sum if m.sum is not None else csum_partial(blob)
                    if dss_checksum_ok(m.dsn, m.ssn, m.length, total, m.csum):
                        self._rx_deliver((m.dsn - self.remote_idsn) & MASK64, blob)
                        if m.fin:
                            self._rx_data_fin(((m.dsn - self.remote_idsn) & MASK64) + m.data_len)
                    else:
                        msf.csum_errors += 1
                        self.host.count("rx_csum_fail")
                        self._csum_failed(msf, m)
                        if msf.infinite is not None and len(mv) > take:
                            self._rx_deliver(self.rcv_nxt, bytes(mv[take:]))
                        return
            else:
                m.got = max(m.got, off + take)
                self._rx_deliver(((m.dsn - self.remote_idsn) & MASK64) + off, bytes(piece))
                if m.got >= m.data_len:
                    maps.remove(m)
                    if m.fin:
                        self._rx_data_fin(((m.dsn - self.remote_idsn) & MASK64) + m.data_len)
            ssn += take
            mv = mv[take:]

    # ------------------------------------------------------------ reassembly
    def _rx_deliver(self, rel: int, data: bytes) -> None:
        end = rel + len(data)
        nxt = self.rcv_nxt
        if end <= nxt or not data:
            return
        if rel < nxt:
            data = data[nxt - rel:]
            rel = nxt
        limit = nxt + self.rcvbuf_limit - self._rcv_queued
        if rel >= limit:
            self.host.count("rx_beyond_window")
            return
        if end > limit:
            data = data[:limit - rel]
            end = limit
            self.host.count("rx_beyond_window")
        if rel > nxt:
            old = self._ooo.get(rel)
            if old is None:
                heapq.heappush(self._ooo_keys, rel)
            elif len(old) >= len(data):
                return
            else:
                self._ooo_bytes -= len(old)
            self._ooo[rel] = data
            self._ooo_bytes += len(data)
            return
        self._rcvq.append(data)
        self._rcv_queued += len(data)
        nxt = end
        keys = self._ooo_keys
        ooo = self._ooo
        while keys and keys[0] <= nxt:
            k = heapq.heappop(keys)
            d = ooo.pop(k)
            self._ooo_bytes -= len(d)
            if k + len(d) > nxt:
                d = d[nxt - k:]
                self._rcvq.append(d)
                self._rcv_queued += len(d)
                nxt += len(d)
        self.rcv_nxt = nxt
        self._check_peer_fin()
        cb = self.on_readable
        if cb is not None:
            cb()

    def _rx_data_fin(self, rel: int) -> None:
        if self._peer_fin_rel is None:
            self._peer_fin_rel = rel
        self._check_peer_fin()

    def _check_peer_fin(self) -> None:
        if self._peer_fin_rel is not None and not self._peer_fin_done and self.rcv_nxt == self._peer_fin_rel:
            self.rcv_nxt += 1
            self._peer_fin_done = True
            if not self._rcvq:
                self.eof = True
            self._send_window_update(self.host.now)  # data-ACK the DATA_FIN now
            self._state_changed()
            cb = self.on_readable
            if cb is not None:
                cb()
