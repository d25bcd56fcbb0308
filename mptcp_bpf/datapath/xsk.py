"""AF_XDP sockets in pure Python: ctypes for the syscalls, mmap for UMEM and rings.

Why: the fast path redirects owned segments into an XSKMAP; this module reads them out of
shared memory in batches and sends ours the same way, with no compiled extension.
Python's `socket` refuses AF_XDP, so socket/bind/setsockopt/getsockopt/sendto go through
libc. Per-packet work is one slice copy and one desc store; ring indices move once per batch.

Layout of the UMEM: frames [0, n_rx) are receive buffers (all of them live in the fill
ring or in the RX ring at any time); frames [n_rx, n_rx + n_tx) are transmit buffers
handed out from a free list and returned by completion reaping.

Memory ordering: the kernel uses acquire/release on the ring indices; on x86-64 (TSO) plain
loads and stores in program order are enough, and each Python ring access is a separate
C-level load/store, so this module is correct on x86-64 only (checked at import).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import platform
import struct
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mptcp_bpf.errors import HintedError

if platform.machine() not in ("x86_64", "AMD64"):  # pragma: no cover
    raise ImportError("datapath.xsk relies on x86-64 memory ordering for its ring indices")

AF_XDP = 44
SOL_XDP = 283
SOCK_RAW = 3

# socket options (uapi linux/if_xdp.h)
XDP_MMAP_OFFSETS = 1
XDP_RX_RING = 2
XDP_TX_RING = 3
XDP_UMEM_REG = 4
XDP_UMEM_FILL_RING = 5
XDP_UMEM_COMPLETION_RING = 6
XDP_STATISTICS = 7
XDP_OPTIONS = 8
XDP_MAX_TX_SKB_BUDGET = 9

# bind flags
XDP_SHARED_UMEM = 1 << 0
XDP_COPY = 1 << 1
XDP_ZEROCOPY = 1 << 2
XDP_USE_NEED_WAKEUP = 1 << 3

# umem flags
XDP_UMEM_UNALIGNED_CHUNK_FLAG = 1 << 0
XDP_UMEM_TX_SW_CSUM = 1 << 1
XDP_UMEM_TX_METADATA_LEN = 1 << 2

XDP_RING_NEED_WAKEUP = 1 << 0
XDP_OPTIONS_ZEROCOPY = 1 << 0

# descriptor options
XDP_PKT_CONTD = 1 << 0
XDP_TX_METADATA = 1 << 1
XDP_TXMD_FLAGS_CHECKSUM = 1 << 1

XDP_PGOFF_RX_RING = 0
XDP_PGOFF_TX_RING = 0x80000000
XDP_UMEM_PGOFF_FILL_RING = 0x100000000
XDP_UMEM_PGOFF_COMPLETION_RING = 0x180000000

XDP_PACKET_HEADROOM = 256
TX_META_LEN = 24  # struct xsk_tx_metadata: u64 flags; u16 csum_start, csum_offset; ...
TX_OFFSET = XDP_PACKET_HEADROOM  # where a TX packet starts inside its frame
MSG_DONTWAIT = 0x40

_OFF = struct.Struct("4Q")  # struct xdp_ring_offset
_UMEM_REG = struct.Struct("QQIIII")
_SXDP = struct.Struct("HHIII")
_STATS_FIELDS = ("rx_dropped", "rx_invalid_descs", "tx_invalid_descs", "rx_ring_full",
                 "rx_fill_ring_empty_descs", "tx_ring_empty_descs")
_TXMETA_CSUM = struct.Struct("=QHH")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.sendto.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                         ctypes.c_void_p, ctypes.c_uint]
_libc.setsockopt.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                             ctypes.c_uint]
_libc.getsockopt.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                             ctypes.POINTER(ctypes.c_uint)]
_libc.bind.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint]


def _err(what: str) -> OSError:
    e = ctypes.get_errno()
    return OSError(e, f"{what}: {os.strerror(e)}")


def _setsockopt(fd: int, opt: int, value: bytes) -> None:
    buf = ctypes.create_string_buffer(value, len(value))
    if _libc.setsockopt(fd, SOL_XDP, opt, buf, len(value)) != 0:
        raise _err(f"setsockopt(SOL_XDP, {opt})")


def _setsockopt_u32(fd: int, opt: int, value: int) -> None:
    _setsockopt(fd, opt, struct.pack("I", value))


def _getsockopt(fd: int, opt: int, size: int) -> bytes:
    buf = ctypes.create_string_buffer(size)
    n = ctypes.c_uint(size)
    if _libc.getsockopt(fd, SOL_XDP, opt, buf, ctypes.byref(n)) != 0:
        raise _err(f"getsockopt(SOL_XDP, {opt})")
    return buf.raw[: n.value]


def _pow2(n: int, what: str) -> int:
    if n <= 0 or n & (n - 1):
        raise HintedError(f"{what}={n} is not a power of two", "use e.g. 2048 or 4096")
    return n


class _Ring:
    """One mmapped ring: producer/consumer/flags as 1-element u32 views, descs as u64s."""

    def __init__(self, fd: int, off: tuple[int, int, int, int], size: int, desc_size: int,
                 pgoff: int) -> None:
        prod, cons, desc, flags = off
        self.size = size
        self.mask = size - 1
        self.map = mmap.mmap(fd, desc + size * desc_size, mmap.MAP_SHARED | mmap.MAP_POPULATE,
                             mmap.PROT_READ | mmap.PROT_WRITE, offset=pgoff)
        mv = memoryview(self.map)
        self._views = [mv]
        self.prod = mv[prod:prod + 4].cast("I")
        self.cons = mv[cons:cons + 4].cast("I")
        self.flags = mv[flags:flags + 4].cast("I")
        self.descs = mv[desc:desc + size * desc_size].cast("Q")
        self._views += [self.prod, self.cons, self.flags, self.descs]
        self.words = desc_size // 8  # u64 words per descriptor

    def close(self) -> None:
        for v in reversed(self._views):
            v.release()
        self._views.clear()
        self.map.close()


@dataclass
class XskConfig:
    """Sizes of the UMEM and rings (powers of two)."""

    frame_size: int = 2048  # 2048 or 4096
    rx_size: int = 4096  # RX ring and fill ring entries; also the number of RX frames
    tx_size: int = 2048  # TX ring and completion ring entries; also the number of TX frames
    meta_len: int = 0  # bytes of XDP metadata in front of each received packet
    copy: bool = True  # XDP_COPY (veth); False lets the kernel pick (zero-copy if it can)
    tx_csum: bool = True  # ask for TX checksum offload (software in copy mode)
    tx_budget: int = 0  # XDP_MAX_TX_SKB_BUDGET (0: as large as the TX ring)


class XskSocket:
    """One AF_XDP socket with its own UMEM, bound to (ifindex, queue)."""

    def __init__(self, ifindex: int, queue: int = 0, config: XskConfig | None = None,
                 netns: str | None = None) -> None:
        """Create, register the UMEM, map the rings and bind (retrying a busy queue).

        netns: the namespace the device lives in (the socket is created there).
        """
        self.fd = -1
        self._rings: list[_Ring] = []
        self.umem: mmap.mmap | None = None
        self._umv: memoryview | None = None
        c = self.config = config or XskConfig()
        if c.frame_size not in (2048, 4096):
            raise HintedError(f"frame size {c.frame_size} not supported", "use 2048 or 4096")
        _pow2(c.rx_size, "rx_size")
        _pow2(c.tx_size, "tx_size")
        if c.meta_len < 0 or c.meta_len > XDP_PACKET_HEADROOM - 32 or c.meta_len % 4:
            raise HintedError(f"meta_len {c.meta_len} invalid", "a multiple of 4 up to 224")
        self.ifindex, self.queue, self.netns = ifindex, queue, netns
        self._umem_ptr: Any = None
        self.tx_csum = False
        self.zerocopy = False
        self.rx_packets = self.tx_packets = self.tx_dropped = self.kicks = 0
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    # --- setup -------------------------------------------------------------------------
    def _socket(self) -> int:
        fd = _libc.socket(AF_XDP, SOCK_RAW | os.O_CLOEXEC, 0)
        if fd < 0:
            e = ctypes.get_errno()
            if e in (errno.EAFNOSUPPORT, errno.EINVAL):
                raise HintedError("the kernel has no AF_XDP sockets",
                                  "enable CONFIG_XDP_SOCKETS")
            if e == errno.EPERM:
                raise HintedError("AF_XDP socket: not permitted", "run as root")
            raise OSError(e, f"socket(AF_XDP): {os.strerror(e)}")
        return fd

    def _setup(self) -> None:
        c = self.config
        if self.netns is None:
            self.fd = self._socket()
        else:
            from mptcp_bpf.datapath.tun import run_in_netns

            self.fd = run_in_netns(self.netns, self._socket)
        nframes = c.rx_size + c.tx_size
        self.umem = mmap.mmap(-1, nframes * c.frame_size,
                              mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE)
        self._umem_ptr = ctypes.c_char.from_buffer(self.umem)
        addr = ctypes.addressof(self._umem_ptr)
        self._register_umem(addr, nframes * c.frame_size)
        _setsockopt_u32(self.fd, XDP_UMEM_FILL_RING, c.rx_size)
        _setsockopt_u32(self.fd, XDP_UMEM_COMPLETION_RING, c.tx_size)
        _setsockopt_u32(self.fd, XDP_RX_RING, c.rx_size)
        _setsockopt_u32(self.fd, XDP_TX_RING, c.tx_size)
        offs = _getsockopt(self.fd, XDP_MMAP_OFFSETS, 4 * _OFF.size)
        rx_o, tx_o, fr_o, cr_o = (_OFF.unpack_from(offs, i * _OFF.size) for i in range(4))
        self.rx = _Ring(self.fd, rx_o, c.rx_size, 16, XDP_PGOFF_RX_RING)
        self._rings.append(self.rx)
        self.tx = _Ring(self.fd, tx_o, c.tx_size, 16, XDP_PGOFF_TX_RING)
        self._rings.append(self.tx)
        self.fill = _Ring(self.fd, fr_o, c.rx_size, 8, XDP_UMEM_PGOFF_FILL_RING)
        self._rings.append(self.fill)
        self.comp = _Ring(self.fd, cr_o, c.tx_size, 8, XDP_UMEM_PGOFF_COMPLETION_RING)
        self._rings.append(self.comp)

        # every RX frame goes to the fill ring; TX frames wait in the free list
        fs = c.frame_size
        self.fill.descs[:] = array("Q", range(0, c.rx_size * fs, fs))
        self.fill.prod[0] = (self.fill.prod[0] + c.rx_size) & 0xFFFFFFFF
        self._tx_free = list(range(c.rx_size * fs, nframes * fs, fs))
        self._tx_outstanding = 0
        self._rx_cons = self.rx.cons[0]
        self._fill_prod = self.fill.prod[0]
        self._tx_prod = self.tx.prod[0]
        self._comp_cons = self.comp.cons[0]
        self._held: list[int] = []  # RX frames lent out by recv_batch(copy=False)
        self._bind()
        if c.tx_budget >= 0:
            try:
                _setsockopt_u32(self.fd, XDP_MAX_TX_SKB_BUDGET, c.tx_budget or c.tx_size)
            except OSError:
                pass  # older kernels: 32 per sendto, send_batch kicks more often
        try:
            opts = _getsockopt(self.fd, XDP_OPTIONS, 4)
            self.zerocopy = bool(struct.unpack("I", opts)[0] & XDP_OPTIONS_ZEROCOPY)
        except OSError:
            pass
        self._umv = memoryview(self.umem)

    def _register_umem(self, addr: int, length: int) -> None:
        """XDP_UMEM_REG; with tx_csum, first try the TX metadata area for checksum offload."""
        c = self.config
        if c.tx_csum:
            flags = XDP_UMEM_TX_METADATA_LEN | (XDP_UMEM_TX_SW_CSUM if c.copy else 0)
            try:
                _setsockopt(self.fd, XDP_UMEM_REG,
                            _UMEM_REG.pack(addr, length, c.frame_size, 0, flags, TX_META_LEN))
                self.tx_csum = True
                return
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
        _setsockopt(self.fd, XDP_UMEM_REG,
                    _UMEM_REG.pack(addr, length, c.frame_size, 0, 0, 0)[:24])

    def _bind(self) -> None:
        flags = XDP_USE_NEED_WAKEUP | (XDP_COPY if self.config.copy else 0)
        sa = _SXDP.pack(AF_XDP, flags, self.ifindex, self.queue, 0)
        buf = ctypes.create_string_buffer(sa, len(sa))
        # the previous socket on this queue is released by a kernel work item shortly
        # after close(): a bind right after it may see EBUSY for a moment
        deadline = time.monotonic() + 5.0
        delay = 0.002
        while _libc.bind(self.fd, buf, len(sa)) != 0:
            e = ctypes.get_errno()
            if e == errno.EBUSY and time.monotonic() < deadline:
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
                continue
            if e == errno.ENODEV:
                raise HintedError(f"no device with ifindex {self.ifindex} (queue "
                                  f"{self.queue}) in this namespace",
                                  "check the device name, its namespace and queue count")
            if e == errno.EBUSY:
                raise HintedError(f"queue {self.queue} of ifindex {self.ifindex} already "
                                  "has an AF_XDP socket", "close the other socket first")
            raise OSError(e, f"bind(AF_XDP ifindex {self.ifindex} queue {self.queue}): "
                             f"{os.strerror(e)}")

    # --- receive -----------------------------------------------------------------------
    def fileno(self) -> int:
        return self.fd

    def rx_pending(self) -> int:
        return (self.rx.prod[0] - self._rx_cons) & 0xFFFFFFFF

    def recv_batch(self, max_n: int = 64, copy: bool = True
                   ) -> list[tuple[bytes | memoryview, bytes]]:
        """Up to max_n received packets as (packet, metadata), never blocking.

        metadata: the `meta_len` bytes the XDP program put in front of the packet (b"" when
        meta_len is 0). copy=True returns bytes and recycles the frames at once;
        copy=False returns memoryviews into the UMEM that stay valid only until the next
        recv_batch call (their frames go back to the fill ring then).
        """
        taken = self._take(max_n)
        if taken is None:
            return []
        addrs, lens = taken
        m = self.config.meta_len
        um = self.umem if copy else self._umv
        out: list[tuple[bytes | memoryview, bytes]] = []
        append = out.append
        if m:
            umem = self.umem
            for a, ln in zip(addrs, lens):
                append((um[a:a + ln], umem[a - m:a]))
        else:
            for a, ln in zip(addrs, lens):
                append((um[a:a + ln], b""))
        self._recycle(addrs, copy)
        return out

    def recv_l3(self, max_n: int, magic: bytes, l3_pos: int, default_l3: int = 14
                ) -> tuple[list[tuple[bytes, bytes]], int]:
        """Like recv_batch, but each packet starts at its L3 header, read as a u16 (host
        order) at `l3_pos` of the metadata when it starts with `magic`, else `default_l3`.
        One copy per packet straight out of the UMEM. Returns (packets, malformed count)."""
        taken = self._take(max_n)
        if taken is None:
            return [], 0
        addrs, lens = taken
        m = self.config.meta_len
        umem = self.umem
        out: list[tuple[bytes, bytes]] = []
        append = out.append
        bad = 0
        hi = l3_pos + 1
        for a, ln in zip(addrs, lens):
            meta = umem[a - m:a]
            l3 = (meta[l3_pos] | meta[hi] << 8) if meta.startswith(magic) else default_l3
            if l3 >= ln:
                bad += 1
                continue
            append((umem[a + l3:a + ln], meta))
        self._recycle(addrs, True)
        return out, bad

    def _take(self, max_n: int) -> tuple[list[int], list[int]] | None:
        """Consume up to max_n RX descriptors: (addresses, lengths), or None."""
        if self._held:
            self._refill(self._held)
            self._held = []
        rx = self.rx
        n = (rx.prod[0] - self._rx_cons) & 0xFFFFFFFF
        if n == 0:
            return None
        if n > max_n:
            n = max_n
        start = self._rx_cons & rx.mask
        end = start + n
        if end <= rx.size:
            words = rx.descs[2 * start:2 * end].tolist()
        else:
            words = rx.descs[2 * start:].tolist() + rx.descs[:2 * (end - rx.size)].tolist()
        self._rx_cons = (self._rx_cons + n) & 0xFFFFFFFF
        rx.cons[0] = self._rx_cons
        self.rx_packets += n
        # the upper half of the second word is `options` (XDP_PKT_CONTD needs XDP_USE_SG,
        # which we never ask for): it is 0, the word is the length
        return words[0::2], words[1::2]

    def _recycle(self, addrs: list[int], now: bool) -> None:
        fmask = ~(self.config.frame_size - 1)
        bases = [a & fmask for a in addrs]
        if now:
            self._refill(bases)
        else:
            self._held = bases

    def _refill(self, bases: list[int]) -> None:
        fill = self.fill
        n = len(bases)
        start = self._fill_prod & fill.mask
        end = start + n
        if end <= fill.size:
            fill.descs[start:end] = array("Q", bases)
        else:
            cut = fill.size - start
            fill.descs[start:] = array("Q", bases[:cut])
            fill.descs[:n - cut] = array("Q", bases[cut:])
        self._fill_prod = (self._fill_prod + n) & 0xFFFFFFFF
        fill.prod[0] = self._fill_prod

    # --- transmit ----------------------------------------------------------------------
    def reap(self) -> int:
        """Return completed TX frames to the free list; how many."""
        comp = self.comp
        n = (comp.prod[0] - self._comp_cons) & 0xFFFFFFFF
        if n == 0:
            return 0
        start = self._comp_cons & comp.mask
        end = start + n
        fmask = ~(self.config.frame_size - 1)
        if end <= comp.size:
            done = comp.descs[start:end].tolist()
        else:
            done = comp.descs[start:].tolist() + comp.descs[:end - comp.size].tolist()
        self._comp_cons = (self._comp_cons + n) & 0xFFFFFFFF
        comp.cons[0] = self._comp_cons
        self._tx_free.extend(a & fmask for a in done)
        self._tx_outstanding -= n
        return n

    def tx_free(self) -> int:
        return len(self._tx_free)

    def send_batch(self, frames: Sequence[bytes | bytearray | memoryview],
                   csum: Sequence[tuple[int, int] | None] | None = None,
                   heads: Sequence[bytes] | None = None, kick: bool = True) -> int:
        """Queue frames on the TX ring and kick the kernel once; returns how many were queued.
        kick=False: publish only; the caller calls kick_nolock() (or kick()) later.

        csum: per frame, None or (csum_start, csum_offset) to have the kernel finish the
        L4 checksum (the checksum field must hold the pseudo-header sum, not complemented);
        only when `self.tx_csum` is True. heads: per frame, bytes written in front of it
        (an Ethernet header), so callers need not concatenate. Frames that do not fit (no
        free TX frame, too long) are counted in tx_dropped.
        """
        if not self._tx_free or len(self._tx_free) < len(frames):
            self.reap()
        free = self._tx_free
        umem = self.umem
        tx = self.tx
        descs = tx.descs
        mask = tx.mask
        prod = self._tx_prod
        maxlen = self.config.frame_size - TX_OFFSET
        use_meta = self.tx_csum and csum is not None
        pack_meta = _TXMETA_CSUM.pack_into
        queued = 0
        unpublished = 0
        for i, f in enumerate(frames):
            ln = len(f)
            h = heads[i] if heads is not None else b""
            hl = len(h)
            if ln + hl > maxlen or ln + hl == 0:
                self.tx_dropped += 1
                continue
            if not free:
                # every TX frame is in flight: hand over what we queued, let the kernel
                # send it (copy mode transmits inside sendto), take the completions back
                if unpublished:
                    self._publish(prod, unpublished)
                    unpublished = 0
                else:
                    self.kick()
                self.reap()
                if not free:
                    self.tx_dropped += 1
                    continue
            base = free.pop()
            a = base + TX_OFFSET
            if hl:
                umem[a:a + hl] = h
                umem[a + hl:a + hl + ln] = f
                ln += hl
            else:
                umem[a:a + ln] = f
            opts = 0
            if csum is not None:
                cs = csum[i]
                if cs is not None:
                    if use_meta:
                        pack_meta(umem, a - TX_META_LEN, XDP_TXMD_FLAGS_CHECKSUM, cs[0], cs[1])
                        opts = XDP_TX_METADATA
                    else:  # no offload: finish the sum here, as the kernel would
                        finish_csum(umem, a + cs[0], a + ln, a + cs[0] + cs[1])
            j = 2 * (prod & mask)
            descs[j] = a
            descs[j + 1] = ln | (opts << 32)
            prod += 1
            queued += 1
            unpublished += 1
        if unpublished:
            self._publish(prod, unpublished, kick)
        return queued

    def _publish(self, prod: int, n: int, kick: bool = True) -> None:
        """Move the TX producer index to `prod` (n new descriptors) and kick."""
        self._tx_prod = prod & 0xFFFFFFFF
        self.tx.prod[0] = self._tx_prod
        self._tx_outstanding += n
        self.tx_packets += n
        if kick:
            self.kick()

    def kick_nolock(self) -> bool:
        """sendto() until the kernel took the TX ring, never reaping (so it may run without
        the owner's lock while another thread queues); False: the kernel wants completions
        reaped first (call kick() under the lock)."""
        for _ in range(64):
            if (self.tx.cons[0] - self._tx_prod) & 0xFFFFFFFF == 0:
                return True
            if _libc.sendto(self.fd, None, 0, MSG_DONTWAIT, None, 0) >= 0:
                continue
            e = ctypes.get_errno()
            if e == errno.ENETDOWN:
                return True
            return False
        return (self.tx.cons[0] - self._tx_prod) & 0xFFFFFFFF == 0

    def kick(self) -> None:
        """sendto() until the kernel took the TX ring (copy mode sends up to the budget per
        call and says EAGAIN when more is left or the completion ring is full)."""
        for _ in range(64):
            self.kicks += 1
            if _libc.sendto(self.fd, None, 0, MSG_DONTWAIT, None, 0) >= 0:
                if (self.tx.cons[0] - self._tx_prod) & 0xFFFFFFFF == 0:
                    return
                continue
            e = ctypes.get_errno()
            if e in (errno.EAGAIN, errno.EBUSY, errno.ENOBUFS):
                self.reap()
                if (self.tx.cons[0] - self._tx_prod) & 0xFFFFFFFF == 0:
                    return
                if e != errno.EAGAIN:
                    time.sleep(0)
                continue
            if e == errno.ENETDOWN:
                return  # device down: frames stay queued until it comes up
            raise OSError(e, f"sendto(AF_XDP): {os.strerror(e)}")

    def tx_pending(self) -> int:
        """Frames queued on the TX ring that the kernel has not consumed yet."""
        return (self._tx_prod - self.tx.cons[0]) & 0xFFFFFFFF

    # --- misc --------------------------------------------------------------------------
    def statistics(self) -> dict[str, int]:
        """XDP_STATISTICS (kernel drop counters) plus our own counters."""
        raw = _getsockopt(self.fd, XDP_STATISTICS, 8 * len(_STATS_FIELDS))
        vals = struct.unpack(f"{len(raw) // 8}Q", raw)
        st = dict(zip(_STATS_FIELDS, vals))
        st.update(rx_packets=self.rx_packets, tx_packets=self.tx_packets,
                  tx_dropped=self.tx_dropped, kicks=self.kicks)
        return st

    @property
    def closed(self) -> bool:
        return self.fd < 0 and self.umem is None

    def close(self) -> None:
        """Close the socket, unmap rings and UMEM. Safe to call twice."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)
        if self._umv is not None:
            self._umv.release()
            self._umv = None
        for r in self._rings:
            r.close()
        self._rings.clear()
        self._umem_ptr = None
        if self.umem is not None:
            try:
                self.umem.close()
            except BufferError:  # a caller still holds a copy=False view: let GC unmap it
                pass
            self.umem = None

    def __enter__(self) -> XskSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if hasattr(self, "fd"):
                self.close()
        except Exception:
            pass


def _fold(s: int) -> int:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def finish_csum(buf: Any, start: int, end: int, field: int) -> None:
    """Ones'-complement sum of buf[start:end] (the field holding the pseudo-header sum),
    complemented into the 16-bit field: what the kernel does for CHECKSUM_PARTIAL.

    Sum of big-endian 16-bit words == the whole big number mod 0xFFFF (2**16 = 1 mod 0xFFFF),
    so int.from_bytes does the per-byte work at C speed."""
    data = buf[start:end]
    if (end - start) & 1:
        data += b"\0"
    r = int.from_bytes(data, "big") % 0xFFFF
    c = ~(r or 0xFFFF) & 0xFFFF
    buf[field] = c >> 8
    buf[field + 1] = c & 0xFF


def prepare_tx_csum(frame: bytearray | memoryview, l3off: int = 14) -> tuple[int, int] | None:
    """Set up TX checksum offload for a TCP or UDP frame (IPv4 without fragments, IPv6
    without extension headers): writes the pseudo-header sum (not complemented) into the L4
    checksum field, as CHECKSUM_PARTIAL wants, and returns (csum_start, csum_offset) for
    send_batch(csum=...). None when the frame is something else (send it fully summed).

    Why: the kernel (software in copy mode, XDP_UMEM_TX_SW_CSUM) then sums the payload,
    so Python never touches payload bytes on TX.
    """
    if len(frame) < l3off + 20:
        return None
    ver = frame[l3off] >> 4
    if ver == 4:
        ihl = (frame[l3off] & 15) * 4
        proto = frame[l3off + 9]
        l4 = l3off + ihl
        length = int.from_bytes(frame[l3off + 2:l3off + 4], "big") - ihl
        addrs = bytes(frame[l3off + 12:l3off + 20])
    elif ver == 6 and len(frame) >= l3off + 40:
        proto = frame[l3off + 6]
        l4 = l3off + 40
        length = int.from_bytes(frame[l3off + 4:l3off + 6], "big")
        addrs = bytes(frame[l3off + 8:l3off + 40])
    else:
        return None
    if proto == 6:
        off = 16
    elif proto == 17:
        off = 6
    else:
        return None
    if l4 + off + 2 > len(frame) or length < off + 2:
        return None
    s = int.from_bytes(addrs, "big")
    folded = 0
    while s:
        folded += s & 0xFFFFFFFF
        s >>= 32
    folded += proto + length
    folded = _fold(_fold(folded))
    frame[l4 + off] = folded >> 8
    frame[l4 + off + 1] = folded & 0xFF
    return l4, off


# --- a minimal redirect program (tests, benchmarks, and use without the full fast path) ----
_REDIRECT_C = r"""
#include <uapi/linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>

BPF_XSKMAP(xsks, 64);
BPF_ARRAY(hits, u64, 2);

struct meta { u32 magic; u16 l3off; u16 l4off; };

int redirect(struct xdp_md *ctx) {
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end) return XDP_PASS;
    u16 l4off = 0; u8 proto = 0;
    if (eth->h_proto == htons(ETH_P_IP)) {
        struct iphdr *ip = (void *)(eth + 1);
        if ((void *)(ip + 1) > end || ip->ihl < 5) return XDP_PASS;
        proto = ip->protocol; l4off = 14 + ip->ihl * 4;
    } else if (eth->h_proto == htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = (void *)(eth + 1);
        if ((void *)(ip6 + 1) > end) return XDP_PASS;
        proto = ip6->nexthdr; l4off = 14 + 40;
    } else return XDP_PASS;
    if (!(proto == IPPROTO_UDP && (WANT & 1)) && !(proto == IPPROTO_TCP && (WANT & 2)))
        return XDP_PASS;
    __be16 *ports = data + l4off;
    if ((void *)(ports + 2) > end || ports[1] != htons(PORT)) return XDP_PASS;
    if (META_LEN && bpf_xdp_adjust_meta(ctx, -(int)META_LEN)) return XDP_PASS;
#if MPB_META
    if (META_LEN) {  /* the layout of struct mpb_meta (bpf/mptcp_common.h) */
        u16 *m = (void *)(long)ctx->data_meta;
        if ((void *)(m + 14) > (void *)(long)ctx->data) return XDP_PASS;
        __builtin_memset(m, 0, 28);
        m[0] = 0x4d50; m[1] = 0x0081; /* OWNED | LISTENER */ m[8] = 14; m[9] = l4off;
    }
#else
    if (META_LEN) {
        struct meta *m = (void *)(long)ctx->data_meta;
        if ((void *)(m + 1) > (void *)(long)ctx->data) return XDP_PASS;
        m->magic = 0x4d504258; m->l3off = 14; m->l4off = l4off;
    }
#endif
    int k = 0; u64 *h = hits.lookup(&k); if (h) __sync_fetch_and_add(h, 1);
    return xsks.redirect_map(ctx->rx_queue_index, XDP_PASS);
}
"""

REDIRECT_META = struct.Struct("=IHH")  # magic 'MPBX', L3 offset, L4 offset
REDIRECT_MAGIC = 0x4D504258


class RedirectProgram:
    """XDP: UDP and/or TCP to one destination port -> XSKMAP[rx queue], with an 8-byte
    metadata header (REDIRECT_META) in front of the frame; everything else passes.
    With mpb_meta=True the header is a 28-byte struct mpb_meta instead (magic, flags
    OWNED|LISTENER, l3_off, l4_off; the rest zero), so it stands in for the fast path.

    Why: exercises AF_XDP without the full fast path (tests, tools/bench_xsk.py).
    """

    META_LEN = REDIRECT_META.size
    MPB_META_LEN = 28

    def __init__(self, ifname: str, port: int, netns: str | None = None, udp: bool = True,
                 tcp: bool = False, xdp_flags: int = 0, meta: bool = True,
                 mpb_meta: bool = False) -> None:
        from bcc import BPF  # heavy import: only when a program is wanted

        from mptcp_bpf.datapath.tun import run_in_netns

        self.ifname, self.netns, self.flags = ifname, netns, xdp_flags
        self.attached = False
        mlen = (self.MPB_META_LEN if mpb_meta else self.META_LEN) if meta else 0
        self.bpf = BPF(text=_REDIRECT_C, cflags=[
            f"-DPORT={port}", f"-DWANT={(1 if udp else 0) | (2 if tcp else 0)}",
            f"-DMETA_LEN={mlen}", f"-DMPB_META={int(mpb_meta)}", "-w"])
        fn = self.bpf.load_func("redirect", BPF.XDP)
        self._run = run_in_netns
        run_in_netns(netns, lambda: BPF.attach_xdp(ifname, fn, xdp_flags))
        self.attached = True

    def set_xsk(self, queue: int, fd: int | None) -> None:
        """Frames of rx `queue` go to socket `fd` (None: remove the entry)."""
        if fd is None:
            try:
                del self.bpf["xsks"][ctypes.c_int(queue)]
            except KeyError:
                pass
        else:
            self.bpf["xsks"][ctypes.c_int(queue)] = ctypes.c_int(fd)

    def hits(self) -> int:
        return int(self.bpf["hits"][ctypes.c_int(0)].value)

    def close(self) -> None:
        if self.attached:
            self.attached = False
            from bcc import BPF

            try:
                self._run(self.netns, lambda: BPF.remove_xdp(self.ifname, self.flags))
            except Exception:
                pass  # device or namespace already gone: the program went with it
        self.bpf.cleanup()

    def __enter__(self) -> RedirectProgram:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
