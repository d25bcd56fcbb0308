"""MP_CAPABLE (8684 §3.1, 6824 §3.1) and MP_JOIN (8684 §3.2) for both roles.

v1 client: SYN carries MP_CAPABLE without key; the third ACK carries both keys, and the
first data may ride on it (MP_CAPABLE with data-level length). 4th-ACK rule: the client
keeps MP_CAPABLE on its pure ACKs (and resends one on a timer) until a DSS arrives from
the server. v0: the SYN carries the client key, the third ACK both keys, data uses DSS.
A server answers in the client's version.
"""

from __future__ import annotations

from typing import Any

from mptcp_bpf.wire import WireError
from mptcp_bpf.wire.crypto import join_hmac, key_token_idsn
from mptcp_bpf.wire.mptcp import (MPC_FLAG_A, MPC_FLAG_C, MPC_FLAG_H, MpCapable, MpJoinAck,
                                  MpJoinSyn, MpJoinSynAck, emit, parse_mptcp)

from . import api
from .options import mptcp_options, pad4
from .subflow import SF_ESTABLISHED, SF_PRE, MpSubflow

MPC_ACK_RETRIES = 4
JOIN_ACK_RETRIES = 5


class HandshakeMixin:
    """MP_CAPABLE / MP_JOIN state of a Connection (see connection.py for the fields)."""

    # ------------------------------------------------------------ options we send
    def _mpc_flags(self) -> int:
        f = MPC_FLAG_H | (MPC_FLAG_A if self.csum else 0)
        if self.role == api.SERVER and self.version == 1 and self.host.config.deny_join_id0:
            f |= MPC_FLAG_C   # 8684 §3.1: no joins to our initial address+port
        return f

    def _syn_options(self, msf: MpSubflow) -> bytes:
        if msf.join:
            if msf.active:
                return emit(MpJoinSyn(self.remote_token, msf.nonce_local, msf.local_id, msf.backup))
            h = join_hmac(self.local_key, self.remote_key, msf.nonce_local, msf.nonce_remote,
                          self.version)
            return emit(MpJoinSynAck(int.from_bytes(h[:8], "big"), msf.nonce_local,
                                     msf.local_id, msf.backup))
        if self.fallback:
            return b""
        if msf.active:
            tries = msf.tcp.syn_retransmits if msf.tcp is not None else 0
            if tries >= self.host.config.syn_retries:
                # 8684 §3.7: a middlebox may drop SYNs with unknown options; try plain TCP
                self._do_fallback("syn_retries")
                return b""
            if self.version == 0:
                return pad4(emit(MpCapable(0, self._mpc_flags(), self.local_key)))
            return emit(MpCapable(1, self._mpc_flags()))
        return pad4(emit(MpCapable(self.version, self._mpc_flags(), self.local_key)))

    def _handshake_ack_options(self, msf: MpSubflow, meta: Any, length: int) -> bytes | None:
        """Options for the third ACK and its retransmissions; None = not in a handshake."""
        if msf.join:
            if msf.join_ack_pending and length == 0:
                h = join_hmac(self.local_key, self.remote_key, msf.nonce_local,
                              msf.nonce_remote, self.version)
                return emit(MpJoinAck(h[:20]))  # 24 bytes
            return None
        if not self.mpc_ack_pending:
            return None
        if meta is not None and meta.mpc:
            return pad4(emit(MpCapable(1, self._mpc_flags(), self.local_key, self.remote_key,
                                       meta.length, meta.csum if self.csum else None)))
        if length == 0:
            return emit(MpCapable(self.version, self._mpc_flags(), self.local_key, self.remote_key))
        return None

    # ------------------------------------------------------------ client: SYN/ACK
    def _on_syn_options(self, msf: MpSubflow, opts: Any) -> None:
        raw = opts if isinstance(opts, (bytes, bytearray, memoryview)) else getattr(opts, "raw", None)
        subs = []
        for o in (mptcp_options(bytes(raw)) if raw is not None else getattr(opts, "mptcp", [])):
            try:
                subs.append(parse_mptcp(o, syn=True, ack=True))
            except WireError:
                self.host.count("rx_malformed")
        if not msf.active:
            return  # server: the host already read the SYN's options
        if msf.join:
            self._on_join_synack(msf, [s for s in subs if isinstance(s, MpJoinSynAck)])
            return
        mpc = next((s for s in subs if isinstance(s, MpCapable)), None)
        if self.fallback:
            return
        if mpc is None or mpc.sender_key is None or mpc.version != self.version:
            self.host.count("fallback_synack")
            self._do_fallback("no MP_CAPABLE in SYN/ACK")  # 8684 §3.7
            return
        self._set_remote_key(mpc.sender_key)
        if mpc.checksum_required:
            self.csum = True
        self.no_initial_join = mpc.version == 1 and mpc.no_source_join  # 8684 §3.1 C flag
        self.mpc_ack_pending = True
        self._mpc_retries = 0

    def _set_remote_key(self, key: int) -> None:
        self.remote_key = key
        self.remote_token, self.remote_idsn = key_token_idsn(key, self.version)
        self._rx_base_known = True

    def _on_join_synack(self, msf: MpSubflow, subs: list) -> None:
        if not subs:
            self.host.count("join_synack_missing")
            self._reset_subflow(msf, "no MP_JOIN in SYN/ACK", reason=0)
            return
        s = subs[0]
        want = join_hmac(self.remote_key, self.local_key, s.nonce, msf.nonce_local, self.version)
        if int.from_bytes(want[:8], "big") != s.hmac:
            self.host.count("join_synack_hmac_fail")
            self._reset_subflow(msf, "MP_JOIN SYN/ACK HMAC mismatch", reason=0)
            return
        msf.nonce_remote = s.nonce
        msf.remote_id = s.addr_id
        msf.peer_backup = s.backup
        msf.join_ack_pending = True
        msf.mp_state = SF_PRE
        self._join_retries = 0

    # ------------------------------------------------------------ server: third ACK
    def _rx_mpc(self, msf: MpSubflow, mpc: MpCapable) -> None:
        """MP_CAPABLE after the SYN: the third ACK (keys) or v1 data on it."""
        if self.role != "server" or msf.join or self.fallback:
            return
        if mpc.sender_key is None or mpc.receiver_key is None:
            return
        if mpc.receiver_key != self.local_key:
            self.host.count("mpc_ack_bad_key")
            return
        if self.remote_key is None:
            self._set_remote_key(mpc.sender_key)
        if mpc.checksum_required:
            self.csum = True
        self._fully_established(msf)
        if mpc.data_len:
            # the mapping is implicit: DSN = IDSN + 1, SSN = 1 (8684 §3.1)
            self._rx_add_map(msf, (self.remote_idsn + 1) & ((1 << 64) - 1), 1, mpc.data_len,
                             mpc.checksum if self.csum else None, False)

    def _rx_join_ack(self, msf: MpSubflow, ack: MpJoinAck) -> None:
        if msf.active or msf.join_verified:
            return
        want = join_hmac(self.remote_key, self.local_key, msf.nonce_remote, msf.nonce_local,
                         self.version)[:20]
        if ack.hmac != want:
            self.host.count("join_ack_hmac_fail")
            self._reset_subflow(msf, "MP_JOIN ACK HMAC mismatch", reason=0)
            return
        lim = self.host.config.join_limit
        if lim is not None and sum(1 for s in self.subflows if s.join and s is not msf
                                   and (s.active or s.join_verified)) >= lim:
            # like the kernel's `ip mptcp limits subflow N`: the join is refused at its
            # third ACK (MPJoinRejected), after the SYN/ACK; reason 3 = prohibited (8684 §3.6)
            self.host.count("join_rejected")
            self._reset_subflow(msf, "join limit reached", reason=3)
            return
        msf.join_verified = True
        self._maybe_join_established(msf)

    def _maybe_join_established(self, msf: MpSubflow) -> None:
        """Server: a join counts once the TCP handshake is done AND the HMAC verified."""
        if msf.join_verified and msf.tcp_established:
            self.host._join_verified(self, msf)
            msf.mp_state = SF_ESTABLISHED
            msf.tcp.send_ack(self.host.now)  # 8684 §3.2: ack the third ACK
            self._sf_ready(msf)

    # ------------------------------------------------------------ 4th-ACK rule timers
    def _arm_handshake_timer(self, msf: MpSubflow) -> None:
        rto = max(0.2, getattr(msf.tcp, "rto", 1.0) or 1.0)
        self._timer(self.host.now + rto, lambda now, m=msf: self._handshake_timer(m, now))

    def _handshake_timer(self, msf: MpSubflow, now: float) -> None:
        if msf.tcp is None or self.closed:
            return
        if msf.join and msf.join_ack_pending:
            self._join_retries += 1
            if self._join_retries > JOIN_ACK_RETRIES:
                self._reset_subflow(msf, "MP_JOIN ACK never acknowledged", reason=0)
                return
            msf.tcp.send_ack(now)
            self._arm_handshake_timer(msf)
        elif not msf.join and self.mpc_ack_pending:
            self._mpc_retries += 1
            if self._mpc_retries > MPC_ACK_RETRIES:
                # a silent peer: assume it has our keys (it would have reset otherwise)
                self.mpc_ack_pending = False
                self._fully_established(msf)
                return
            msf.tcp.send_ack(now)
            self._arm_handshake_timer(msf)
