"""Signals: ADD_ADDR (8684 §3.4.1, HMAC + echo + retransmission), REMOVE_ADDR (§3.4.2),
MP_PRIO (§3.3.8), MP_FASTCLOSE (§3.5), MP_TCPRST (§3.6), MP_FAIL and fallback (§3.7).

Signals ride on pure ACKs (`MpSubflow.pending_opts`, then `tcp.send_ack`): ADD_ADDR of
an IPv6 address does not fit next to a DSS and timestamps, so it goes alone, as the kernel
does.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Iterable

from mptcp_bpf.wire.crypto import add_addr_hmac
from mptcp_bpf.wire.mptcp import (AddAddr, MpFail, MpFastclose, MpPrio, MpTcpRst, RemoveAddr,
                                  emit)

from .api import RemoteAddr
from .options import dss_bytes, pad4
from .subflow import MASK64, MpSubflow

ADD_ADDR_RETRIES = 4
ADD_ADDR_TIMEOUT = 1.0  # seconds between ADD_ADDR retransmissions (kernel: add_addr_timeout)

# MP_TCPRST reason codes (8684 §3.6)
RST_UNSPEC = 0
RST_MPTCP_ERROR = 1
RST_RESOURCE = 2
RST_ADMIN = 3
RST_TOO_MUCH_OUTSTANDING = 4
RST_UNACCEPTABLE_PERF = 5
RST_MIDDLEBOX = 6


class SignalsMixin:
    """Address signalling, priority, resets and failure handling of a Connection."""

    # ------------------------------------------------------------ sending signals
    def _signal(self, opt: bytes, sf: MpSubflow | None = None) -> bool:
        """Queue `opt` on a pure ACK of `sf` (or the best established subflow) and send it."""
        if sf is None:
            est = [s for s in self.subflows if s.established]
            if not est:
                return False
            sf = min(est, key=lambda s: (s.backup, s.srtt or 0.0))
        sf.pending_opts.append(pad4(opt))
        sf.tcp.send_ack(self.host.now)
        return True

    def announce(self, addr_id: int, address: Any, port: int | None = None) -> None:
        """Announce an address (8684 §3.4.1). One ADD_ADDR in flight at a time, as the kernel
        PM does (pm->addr_signal): a kernel peer handles one ADD_ADDR at a time and drops one
        arriving meanwhile (AddAddrDrop), so the next waits for the echo or the give-up."""
        address = ipaddress.ip_address(address)
        if self.version == 1 and self._add_addr_pending:
            self._add_addr_queue = [q for q in self._add_addr_queue if q[0] != addr_id]
            self._add_addr_queue.append((addr_id, address, port))
            return
        if self.version == 0:
            sub = AddAddr(addr_id, address, port, None, False, 0)
        else:
            h = add_addr_hmac(self.local_key, self.remote_key, addr_id, address, port)
            sub = AddAddr(addr_id, address, port, h, False, 1)
        self._announced[addr_id] = (address, port)
        opt = emit(sub)
        if self._signal(opt):
            self.host.count("add_addr_tx")
            self._event("announced", rem_id=addr_id, addr=str(address), port=port, local=True)
            if self.version == 1:
                self._add_addr_pending[addr_id] = [opt, 0]
                self._timer(self.host.now + ADD_ADDR_TIMEOUT,
                            lambda now, i=addr_id: self._add_addr_timer(i, now))

    def _add_addr_timer(self, addr_id: int, now: float) -> None:
        p = self._add_addr_pending.get(addr_id)
        if p is None or self.closed:
            return
        p[1] += 1
        if p[1] > ADD_ADDR_RETRIES:
            del self._add_addr_pending[addr_id]
            self._announce_next()
            return
        self._signal(p[0])
        self._timer(now + ADD_ADDR_TIMEOUT * (1 << p[1]),
                    lambda t, i=addr_id: self._add_addr_timer(i, t))

    def _announce_next(self) -> None:
        """Send the next queued ADD_ADDR once none is awaiting its echo."""
        while self._add_addr_queue and not self._add_addr_pending and not self.closed:
            addr_id, address, port = self._add_addr_queue.pop(0)
            self.announce(addr_id, address, port)

    def remove_addr(self, ids: Iterable[int]) -> None:
        ids = tuple(ids)
        if not ids:
            return
        self._add_addr_queue = [q for q in self._add_addr_queue if q[0] not in ids]
        for i in ids:
            self._announced.pop(i, None)
            self._add_addr_pending.pop(i, None)
        self._announce_next()
        doomed = [s for s in self.subflows if s.local_id in ids]
        self._signal(emit(RemoveAddr(ids)), next((s for s in self.subflows
                                                  if s.established and s not in doomed), None))
        self.host.count("rm_addr_tx", len(ids))   # per id, as the kernel's RmAddrTx
        for s in doomed:
            self._close_removed(s)
        self._event("removed", rem_id=ids[0], local=True)

    def close_local(self, ids: Iterable[int]) -> None:
        """Close the subflows of local address ids with no RM_ADDR (the kernel's flush does
        this for endpoints it never announced)."""
        ids = tuple(ids)
        for s in [s for s in self.subflows if s.local_id in ids]:
            self._close_removed(s)

    def _close_removed(self, s: MpSubflow) -> None:
        """A subflow of a removed address (8684 §3.4.2): re-inject its data, then FIN when
        nothing is outstanding on it, else a plain RST; no MP_TCPRST, as the kernel does
        (its selftests expect MPRstTx/MPRstRx = 0 for removals)."""
        t = s.tcp
        quiet = t is not None and t.unsent_bytes == 0 and t.in_flight == 0
        self._close_sf(s, reinject=True, reset=not quiet, rst_opts=b"")

    def set_prio(self, sf: Any, backup: bool) -> None:
        sf.backup = bool(backup)
        opt = emit(MpPrio(bool(backup), sf.local_id if self.version == 0 else None))
        if sf.established:
            self._signal(opt, sf)
        self.host.count("mp_prio_tx")
        self._event("sf_priority", sf=sf)

    # ------------------------------------------------------------ receiving signals
    def _rx_add_addr(self, msf: MpSubflow, a: AddAddr) -> None:
        if a.echo:
            self._add_addr_pending.pop(a.addr_id, None)
            self.host.count("add_addr_echo_rx")
            self._announce_next()
            return
        if a.version == 1:
            if self.remote_key is None:
                return
            want = add_addr_hmac(self.remote_key, self.local_key, a.addr_id, a.address, a.port)
            if want != a.hmac:
                self.host.count("add_addr_hmac_fail")  # 8684 §3.4.1: silently dropped
                return
            self._signal(emit(AddAddr(a.addr_id, a.address, a.port, None, True, 1)), msf)
        self.host.count("add_addr_rx")
        port = a.port or self.remote_port
        for ra in self.remote_addresses:
            if ra.id == a.addr_id:
                if ra.address == a.address and ra.port == port:
                    return  # retransmission
                self.remote_addresses.remove(ra)
                break
        if sum(1 for r in self.remote_addresses if r.address.version == a.address.version) >= 8:
            self.host.count("add_addr_limit")
            return
        ra = RemoteAddr(a.addr_id, a.address, port)
        self.remote_addresses.append(ra)
        self._event("announced", rem_id=a.addr_id, addr=str(a.address), port=port)
        self._pm_call("on_add_addr", ra)

    def _rx_remove_addr(self, msf: MpSubflow, r: RemoveAddr) -> None:
        # per id, as the kernel's RmAddr (one RM_ADDR of a flush carries several)
        self.host.count("rm_addr_rx", len(r.ids))
        ids = set(r.ids)
        self.remote_addresses = [a for a in self.remote_addresses if a.id not in ids or a.id == 0
                                 and not any(s.remote_id == 0 for s in self.subflows)]
        for s in [s for s in self.subflows if s.remote_id in ids]:
            self._close_removed(s)
        for i in ids:
            self._event("removed", rem_id=i)
        self._pm_call("on_rm_addr", tuple(r.ids))

    def _rx_prio(self, msf: MpSubflow, p: MpPrio) -> None:
        self.host.count("mp_prio_rx")
        targets = [msf] if p.addr_id is None else [s for s in self.subflows if s.remote_id == p.addr_id]
        for s in targets:
            # the peer's wish only: `backup` stays ours, so our own later MP_PRIO (an
            # endpoint set to backup) still goes out, as the kernel's (request_bkup)
            s.peer_backup = p.backup
            self._event("sf_priority", sf=s)

    def _rx_fastclose(self, msf: MpSubflow, f: MpFastclose) -> None:
        if f.receiver_key != self.local_key:
            self.host.count("fastclose_bad_key")
            return
        self.host.count("fastclose_rx")
        self._fail(104, "MP_FASTCLOSE from the peer")  # ECONNRESET
        for s in list(self.subflows):
            self._close_sf(s, reinject=False, reset=True, rst_opts=b"")

    def _rx_tcprst(self, msf: MpSubflow, r: MpTcpRst) -> None:
        msf.error = f"peer reset (MP_TCPRST reason {r.reason}{', transient' if r.transient else ''})"
        self.host.count("tcprst_rx")

    def _rx_fail(self, msf: MpSubflow, f: MpFail) -> None:
        """The peer saw a bad DSS checksum at f.dsn (8684 §3.7)."""
        self.host.count("mp_fail_rx")
        if len(self.subflows) > 1:
            self._close_sf(msf, reinject=True, reset=True)
            return
        if msf.infinite is not None or msf.infinite_base is not None:
            # the answer to our own MP_FAIL (or a repeat): the kernel echoes MP_FAIL and
            # falls back with its next data (infinite mapping); the stream is 1:1 already.
            # We fall back when that infinite mapping (or a subflow FIN) arrives, not now:
            # data we sent without DSS before it makes the kernel fall back another way
            # (DssFallback) and it never sends the infinite mapping (kernel: fail_tout = 0)
            self.host.count("mp_fail_response_rx")
            return
        # answer with MP_FAIL as well, as the kernel does (mptcp_pm_mp_fail_received)
        self.host.count("mp_fail_tx")
        self._signal(emit(MpFail((self.remote_idsn + self.rcv_nxt) & MASK64)), msf)
        # only subflow: answer with an infinite mapping and fall back to TCP. It rides on
        # the next segment with data (the kernel reads mappings only there); from the
        # fallback on, subflow byte tx_ssn + k is data byte snd_nxt + k (one subflow)
        if msf.infinite_base is None:
            msf.infinite_base = (msf.tx_ssn, self.snd_nxt)
        self._do_fallback("MP_FAIL")

    def _infinite_map_opt(self, msf: MpSubflow) -> bytes:
        """The infinite mapping (8684 §3.7, data-level length 0) for the segment being
        built: DSN and SSN of its first byte."""
        msf.infinite_tx = True
        self.host.count("infinite_map_tx")
        ssn = msf.tcp.tx_ssn + 1
        base_ssn, base_rel = msf.infinite_base
        dsn = (self.local_idsn + base_rel + (ssn - base_ssn)) & MASK64
        ack = (self.remote_idsn + self.rcv_nxt) & MASK64 if self._rx_base_known else None
        return dss_bytes(ack, dsn, ssn & 0xFFFFFFFF, 0, 0 if self.csum else None)

    # ------------------------------------------------------------ checksum failure
    def _csum_failed(self, msf: MpSubflow, m: Any) -> None:
        """8684 §3.7: reset the subflow with MP_FAIL, or MP_FAIL + fallback if it is alone."""
        fail = emit(MpFail(m.dsn))
        if len(self.subflows) > 1 or msf.join:
            self._close_sf(msf, reinject=True, reset=True,
                           rst_opts=pad4(fail) + pad4(emit(MpTcpRst(RST_MPTCP_ERROR))))
            return
        self.host.count("mp_fail_tx")
        self._signal(fail, msf)
        msf.rx_maps.clear()
        # the peer answers with an infinite mapping from m.dsn (8684 §3.7): from here on
        # the subflow stream is the data stream, the failed bytes included (nothing can
        # re-send them: TCP acked them), as the kernel does (its selftests accept them)
        msf.infinite = (m.dsn, m.ssn)
        self._rx_deliver((m.dsn - self.remote_idsn) & MASK64, b"".join(m.buf))

    # ------------------------------------------------------------ fallback
    def _do_fallback(self, why: str) -> None:
        if self.fallback:
            return
        self.fallback = True
        self.fallback_reason = why
        self.mpc_ack_pending = False
        self.host.count("fallback")
        self._event("fallback", reason=why)
        # bytes of a mapping held for its checksum are in the stream: deliver them (the
        # peer falls back at that mapping and never re-sends them), then forget mappings
        for s in self.subflows:
            for m in s.rx_maps:
                if m.buf:
                    self._rx_deliver((m.dsn - self.remote_idsn) & MASK64, b"".join(m.buf))
            s.rx_maps.clear()
        n = self.snd_nxt - self.snd_una
        if n > 0:
            # data mapped but not data-acked stays with the subflow: it is now the stream
            del self._sndbuf[:n]
            self.snd_una = self.snd_nxt
        self._reinject.clear()

    # ------------------------------------------------------------ fast close
    def abort(self, now: float | None = None) -> None:
        """MP_FASTCLOSE (8684 §3.5): RST carrying the peer's key on every subflow."""
        if self.closed:
            return
        # the kernel puts MP_TCPRST (unspecified) next to MP_FASTCLOSE on each RST
        opts = b"" if self.fallback or self.remote_key is None else (
            pad4(emit(MpFastclose(self.remote_key))) + pad4(emit(MpTcpRst(RST_UNSPEC))))
        self.host.count("fastclose_tx")
        for s in list(self.subflows):
            self._close_sf(s, reinject=False, reset=True, rst_opts=opts)
        self._fail(104, "aborted")
