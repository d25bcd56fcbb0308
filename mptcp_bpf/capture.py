"""A pcapng writer for what the stack sends and receives (`--pcap FILE`).

Cheap per packet: one struct.pack_into-free concatenation into a bytearray, written to the
file in batches (every `flush_bytes` or when `flush()`/`close()` is called), so the hot
path never makes a syscall per packet. Blocks follow the pcapng spec (draft-ietf-opsawg-
pcapng): SHB, one IDB per interface (LINKTYPE_RAW = 101 for IP packets, or Ethernet = 1),
EPB with nanosecond timestamps and the direction flag.
"""

from __future__ import annotations

import struct
import time
from typing import BinaryIO

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101          # the packet starts with the IPv4 or IPv6 header

_SHB_TYPE = 0x0A0D0D0A
_IDB_TYPE = 0x00000001
_EPB_TYPE = 0x00000006
_BYTE_ORDER_MAGIC = 0x1A2B3C4D

_OPT_END = 0
_OPT_SHB_USERAPPL = 4
_OPT_IF_NAME = 2
_OPT_IF_TSRESOL = 9
_OPT_EPB_FLAGS = 2

INBOUND = 1
OUTBOUND = 2

_EPB_HEAD = struct.Struct("<IIIIIII")   # type, total len, if id, ts hi, ts lo, caplen, len
_EPB_FLAGS_TAIL = struct.Struct("<HHIHHI")  # flags option, end of options, total len
_U32 = struct.Struct("<I")
_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def _block(btype: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", btype, total) + body + _U32.pack(total)


class PcapngWriter:
    """Appends packets to a pcapng file; not thread-safe (the stack's loop owns it)."""

    def __init__(self, target: str | BinaryIO, flush_bytes: int = 1 << 20,
                 snaplen: int = 262144, application: str = "mptcp-bpf") -> None:
        self._own = isinstance(target, str)
        self._f: BinaryIO = open(target, "wb") if isinstance(target, str) else target
        self._buf = bytearray()
        self.flush_bytes = flush_bytes
        self.snaplen = snaplen
        self._ifaces: dict[tuple[str, int], int] = {}
        self.packets = 0
        self.closed = False
        body = struct.pack("<IHHq", _BYTE_ORDER_MAGIC, 1, 0, -1)
        body += _option(_OPT_SHB_USERAPPL, application.encode()) + _option(_OPT_END, b"")
        self._buf += _block(_SHB_TYPE, body)

    def interface(self, name: str = "mptcp-bpf", linktype: int = LINKTYPE_RAW) -> int:
        """The id of interface `name` (an IDB is written the first time it is used)."""
        key = (name, linktype)
        if_id = self._ifaces.get(key)
        if if_id is None:
            if_id = len(self._ifaces)
            self._ifaces[key] = if_id
            body = struct.pack("<HHI", linktype, 0, self.snaplen)
            body += _option(_OPT_IF_NAME, name.encode()) + _option(_OPT_IF_TSRESOL, b"\x09")
            body += _option(_OPT_END, b"")
            self._buf += _block(_IDB_TYPE, body)
        return if_id

    def write(self, packet: bytes | bytearray | memoryview, if_id: int = 0,
              ts_ns: int | None = None, direction: int = 0,
              outbound: bool | None = None) -> None:
        """One packet on interface `if_id` (from `interface()`); ts in ns since the epoch;
        direction INBOUND / OUTBOUND / 0 (unknown), or outbound=True/False."""
        if not self._ifaces:
            self.interface()
        if ts_ns is None:
            ts_ns = time.time_ns()
        if outbound is not None:
            direction = OUTBOUND if outbound else INBOUND
        n = len(packet)
        cap = n if n <= self.snaplen else self.snaplen
        pad = _PAD[cap & 3]
        total = 28 + cap + len(pad) + 12 + 4
        buf = self._buf
        buf += _EPB_HEAD.pack(_EPB_TYPE, total, if_id, ts_ns >> 32, ts_ns & 0xFFFFFFFF, cap, n)
        buf += packet if cap == n else bytes(packet[:cap])
        buf += pad
        buf += _EPB_FLAGS_TAIL.pack(_OPT_EPB_FLAGS, 4, direction & 3, _OPT_END, 0, total)
        self.packets += 1
        if len(buf) >= self.flush_bytes:
            self.flush()

    def write_many(self, packets: "list[bytes] | tuple[bytes, ...]", outbound: bool | None = None,
                   if_id: int = 0) -> None:
        """A batch of packets with one timestamp read (the stack's RX/TX batches)."""
        ts = time.time_ns()
        d = 0 if outbound is None else (OUTBOUND if outbound else INBOUND)
        for p in packets:
            self.write(p, if_id, ts, d)

    def flush(self) -> None:
        if self._buf and not self.closed:
            self._f.write(self._buf)
            self._f.flush()
            self._buf.clear()

    def close(self) -> None:
        if self.closed:
            return
        self.flush()
        self.closed = True
        if self._own:
            self._f.close()

    def __enter__(self) -> "PcapngWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_blocks(data: bytes) -> list[tuple[int, bytes]]:
    """(block type, body) of every block of a little-endian pcapng file (for tests/tools)."""
    out = []
    off = 0
    while off + 12 <= len(data):
        btype, total = struct.unpack_from("<II", data, off)
        if total < 12 or off + total > len(data):
            raise ValueError(f"truncated block at offset {off}")
        out.append((btype, data[off + 8: off + total - 4]))
        off += total
    return out
