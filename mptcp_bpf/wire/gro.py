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

__all__ = ["coalesce", "SumMeta", "MAX_MERGED"]

MAX_MERGED = 65535 - 1500   # payload bytes per merged segment (a GSO-sized packet)
_ACK, _PSH = 0x10, 0x08
_from = int.from_bytes


class SumMeta:
    """Metadata of a merged segment: the ones'-complement sum of its whole payload, as
    the fast path gives it per frame (`payload_sum`, the form of csum_partial)."""

    __slots__ = ("payload_sum",)

    def __init__(self, payload_sum: int) -> None:
        self.payload_sum = payload_sum


def coalesce(items: list[tuple[Any, Any]],
             sum_of: Optional[Callable[[Any, int], Optional[int]]] = None,
             on_bad: Optional[Callable[[Any], None]] = None
             ) -> list[tuple[InPacket, Any, int]]:
    """(IP packet, meta) pairs in arrival order -> (parsed packet, meta, segments merged).

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
        raw, meta = items[i]
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
            q, qm = items[j]
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
        last = items[j - 1][0]
        merged = InPacket(p.family, p.src, p.dst, p.sport, p.dport, p.seq, p.ack, last[fpos],
                          p.window, p.options, memoryview(b"".join(pieces)),
                          p.tos, p.ttl, p.segment)
        append((merged, SumMeta(s) if s is not None else None, len(pieces)))
        i = j
    return out
