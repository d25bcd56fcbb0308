"""Receive coalescing (GRO in software) of received IP packets.

Why: the per-segment work of a subflow and of MPTCP (options, ACK, mapping, delivery) costs
tens of microseconds in Python; a receive batch from one sender is mostly runs of in-order
segments that differ only in sequence number. Merged, that work runs once per run, and
the segments after the first of a run are checked on their raw header bytes, not parsed.

The rule is Linux's tcp_gro_receive: same addresses, ports, TOS/TTL, ACK number, window and
option bytes (hence one DSS mapping and data ACK, 8684 §3.3), the next segment starts where
the previous one ends, flags exactly ACK (PSH allowed on the last, which ends the run),
payload in every segment, at most MAX_MERGED bytes. IPv4 without IP options and IPv6
without extension headers; anything else passes through one by one.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from .checksum import csum_add
from .errors import WireError
from .packet import InPacket, parse_ip_packet

__all__ = ["coalesce", "thin_acks", "SumMeta", "MAX_MERGED"]

MAX_MERGED = 65535 - 1500   # payload bytes per merged segment (a GSO-sized packet)
_ACK, _PSH = 0x10, 0x08
_from = int.from_bytes
_NOP_NOP_TS = b"\x01\x01\x08\x0a"


class SumMeta:
    """Metadata of a merged segment: the ones'-complement sum of its whole payload, as
    the fast path gives it per frame (`payload_sum`, the form of csum_partial)."""

    __slots__ = ("payload_sum",)

    def __init__(self, payload_sum: int) -> None:
        self.payload_sum = payload_sum


def _pure_ack(raw: Any) -> tuple[bytes, int] | None:
    """(flow key, ACK number) of a pure cumulative ACK that a later one may supersede:
    flags exactly ACK, no payload, options only NOP/EOL, timestamps and an MPTCP DSS that
    carries a data ACK and nothing else (no mapping, no DATA_FIN: 8684 §3.3). A SACK
    option (SACK or D-SACK, RFC 2018/2883) or any other option makes it not one."""
    n = len(raw)
    if n < 40 or n > 124:           # 20/40 + 20 + 40 bytes of options at most
        return None
    h = bytes(raw)                  # indexing bytes is faster than a memoryview
    v = h[0]
    if v == 0x45:
        if h[33] != _ACK or h[9] != 6:
            return None
        o = 20
        end = h[2] << 8 | h[3]
    elif v >> 4 == 6:
        if n < 60 or h[53] != _ACK or h[6] != 6:
            return None
        o = 40
        end = 40 + (h[4] << 8 | h[5])
    else:
        return None
    start = o + (h[o + 12] >> 4) * 4
    if end != start or end > n:
        return None
    i = o + 20
    if start - i >= 12 and h[i:i + 4] == _NOP_NOP_TS:
        i += 12                     # the usual layout first: NOP NOP timestamps
    while i < start:
        k = h[i]
        if k == 1:
            i += 1
            continue
        if k == 0:
            break
        if i + 1 >= start:
            return None
        ln = h[i + 1]
        if ln < 2:
            return None
        if k == 30:
            # MPTCP: only a DSS (subtype 2) whose flags are A (data ACK) and maybe a
            if ln < 4 or h[i + 2] >> 4 != 2 or h[i + 3] & 0xFC or not h[i + 3] & 1:
                return None
        elif k != 8:
            return None
        i += ln
    return _flow_key(h), _from(h[o + 8:o + 12], "big")


def thin_acks(items: list[Any]) -> tuple[list[Any], int]:
    """Drop the pure cumulative ACKs that a later pure ACK of the same flow in the same
    receive batch supersedes (a larger ACK number): the TCP endpoint would process each
    only to have the next one redo it. Items are packets or (packet, meta) pairs; returns
    (kept items in order, number dropped).

    Kept, so loss detection and recovery see what they would have (RFC 5681 §2: a
    duplicate ACK is never merged away; RFC 2018/6675: SACK state): an ACK not followed
    by a larger one; every ACK with SACK blocks, data, flags other than ACK, or options
    other than timestamps and a data-ACK-only DSS; and an ACK whose predecessor of the
    same flow in the batch does not have a smaller ACK number, i.e. the first of a flow
    in the batch (it may repeat the previous batch's ACK: a duplicate) and any repeat.
    The later ACK carries a window, timestamp echo and data ACK at least as recent."""
    n = len(items)
    if n < 3:
        return items, 0
    last: dict[bytes, tuple[int, int, int]] = {}   # flow -> (index, ack, ack before it)
    drop: list[int] = []
    for i in range(n):
        item = items[i]
        raw = item[0] if type(item) is tuple else item
        try:
            pa = _pure_ack(raw)
        except IndexError:
            pa = None
        if pa is None:
            if last and len(raw) >= 40:  # a packet that is not a pure ACK ends its run
                last.pop(_flow_key(raw), None)
            continue
        key, ack = pa
        prev = last.get(key)
        if prev is None:
            last[key] = (i, ack, -1)
            continue
        j, pack, before = prev
        if 0 < (ack - pack) & 0xFFFFFFFF < 0x80000000:
            if before >= 0 and 0 < (pack - before) & 0xFFFFFFFF < 0x80000000:
                drop.append(j)
            last[key] = (i, ack, pack)
        else:
            last[key] = (i, ack, -1)   # a repeat (possible duplicate ACK): keep both
    if not drop:
        return items, 0
    ds = set(drop)
    return [items[i] for i in range(n) if i not in ds], len(drop)


def _flow_key(raw: Any) -> bytes:
    v = raw[0]
    if v >> 4 == 4:
        o = (v & 0x0F) * 4
        return bytes(raw[12:20]) + bytes(raw[o:o + 4])
    return bytes(raw[8:44])


def coalesce(items: list[Any],
             sum_of: Optional[Callable[[Any, int], Optional[int]]] = None,
             on_bad: Optional[Callable[[Any], None]] = None
             ) -> list[tuple[InPacket, Any, int]]:
    """IP packets or (IP packet, meta) pairs in arrival order -> (parsed packet, meta,
    segments merged).

    Packets that do not parse go to `on_bad` and are left out. A merged packet's payload
    is one new buffer; `segment` stays the first packet's (its TCP checksum is not
    re-verifiable). Its meta is a SumMeta when `sum_of(meta, length)` gave every piece's
    payload sum, else None (the consumer sums the payload itself).
    """
    out: list[tuple[InPacket, Any, int]] = []
    append = out.append
    n = len(items)
    i = 0
    while i < n:
        raw = items[i]
        if type(raw) is tuple:
            raw, meta = raw
        else:
            meta = None
        try:
            p = parse_ip_packet(raw)
        except WireError:
            if on_bad is not None:
                on_bad(raw)
            i += 1
            continue
        j = i + 1
        plen = len(p.payload)
        v = raw[0]
        if not (plen and p.flags == _ACK and j < n and (v == 0x45 or (v >> 4 == 6
                                                                    and raw[6] == 6))):
            append((p, meta, 1))
            i = j
            continue
        o = 20 if v == 0x45 else 40          # TCP header offset
        start = o + 20 + len(p.options)      # payload offset
        h = bytes(raw[:start])
        # bytes every follower must repeat: IP version/TOS (traffic class, flow label),
        # DF/TTL/protocol (next header, hop limit), addresses and ports; ACK and data
        # offset; window; options. Its seq, IP length and flags are checked apart.
        if o == 20:
            consts = ((0, 2), (6, 10), (12, 24), (28, 33), (34, 36), (40, start))
            lpos, lbase = 2, 0
        else:
            consts = ((0, 4), (6, 44), (48, 53), (54, 56), (60, start))
            lpos, lbase = 4, 40
        consts = tuple((a, b, h[a:b]) for a, b in consts)
        fpos = o + 13
        spos = o + 4
        total = plen
        nxt = (p.seq + plen) & 0xFFFFFFFF
        pieces = [p.payload]
        metas = [meta]
        while j < n:
            q = items[j]
            if type(q) is tuple:
                q, qm = q
            else:
                qm = None
            fl = q[fpos] if len(q) > start else 0
            if fl != _ACK and fl != _ACK | _PSH:
                break
            end = lbase + (q[lpos] << 8 | q[lpos + 1])
            ql = end - start
            if ql <= 0 or end > len(q) or total + ql > MAX_MERGED:
                break
            for a, b, c in consts:
                if q[a:b] != c:
                    break
            else:
                if _from(q[spos:spos + 4], "big") == nxt:
                    pieces.append(memoryview(q)[start:end])
                    metas.append(qm)
                    total += ql
                    nxt = (nxt + ql) & 0xFFFFFFFF
                    j += 1
                    if fl & _PSH:
                        break
                    continue
            break
        if len(pieces) == 1:
            append((p, meta, 1))
            i = j
            continue
        s: Optional[int] = None
        if sum_of is not None:
            # ones'-complement sum of the pieces: a piece at an odd offset counts
            # byte-swapped (csum_block_add), one fold at the end
            acc = 0
            off = 0
            for piece, m in zip(pieces, metas):
                ln = len(piece)
                ps = sum_of(m, ln) if m is not None else None
                if ps is None:
                    break
                acc += ((ps << 8) | (ps >> 8)) & 0xFFFF if off & 1 else ps
                off += ln
            else:
                s = csum_add(acc & 0xFFFF, acc >> 16)
        last = items[j - 1]
        if type(last) is tuple:
            last = last[0]
        merged = InPacket(p.family, p.src, p.dst, p.sport, p.dport, p.seq, p.ack, last[fpos],
                          p.window, p.options, memoryview(b"".join(pieces)),
                          p.tos, p.ttl, p.segment)
        append((merged, SumMeta(s) if s is not None else None, len(pieces)))
        i = j
    return out
