"""The stack's packet ports: one protocol over TUN and over XDP + AF_XDP.

Why: the protocol core consumes and produces whole IP packets (docs/ARCHITECTURE.md);
a port hides where they come from. `recv_batch` returns (IP packet, metadata) pairs:
metadata is the fast path's header (bytes) on XdpPort, None on TunPort.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from mptcp_bpf.datapath.tun import TunDevice, open_tun

if TYPE_CHECKING:  # pragma: no cover
    from mptcp_bpf.datapath.neigh import NeighbourCache
    from mptcp_bpf.datapath.xsk import XskSocket

Packet = bytes | bytearray | memoryview


@runtime_checkable
class PacketPort(Protocol):
    """What the stack needs from a packet source/sink."""

    def fileno(self) -> int: ...

    def recv_batch(self, max_n: int = 64) -> list[tuple[Packet, bytes | None]]: ...

    def send_batch(self, packets: Sequence[Packet]) -> int: ...

    def close(self) -> None: ...


# (csum_start, csum_offset) from the IP header -> from the Ethernet header (a few keys)
_ETH_CS: dict[tuple[int, int], tuple[int, int]] = {}


class TunPort:
    """Packets through a TUN device (kernel interop without XDP). Metadata is always None."""

    def __init__(self, tun: TunDevice) -> None:
        self.tun = tun

    @classmethod
    def open(cls, name: str, netns: str | None = None, **kw: Any) -> TunPort:
        """Create the device (see tun.open_tun for addrs=, routes=, mtu=)."""
        return cls(open_tun(name, netns, **kw))

    def fileno(self) -> int:
        return self.tun.fd

    def recv_batch(self, max_n: int = 64) -> list[tuple[Packet, bytes | None]]:
        return [(p, None) for p in self.tun.read_batch(max_n)]

    def send_batch(self, packets: Sequence[Packet]) -> int:
        return self.tun.write_batch(packets)

    def stats(self) -> dict[str, int]:
        t = self.tun
        return {"rx_packets": t.rx_packets, "tx_packets": t.tx_packets,
                "tx_dropped": t.tx_dropped}

    def close(self) -> None:
        self.tun.close()

    def __enter__(self) -> TunPort:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _TimerFd:
    """A timerfd (Python 3.11 has no os.timerfd_*): wakes the stack's epoll while packets
    wait for a neighbour, so they leave as soon as it is resolved."""

    def __init__(self) -> None:
        import ctypes

        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.timerfd_create(1, 0o4000 | 0o2000000)  # MONOTONIC, NONBLOCK|CLOEXEC
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create")
        self.armed = False

    def arm(self, interval: float) -> None:
        import struct as _s

        sec, nsec = int(interval), int((interval % 1) * 1e9) or 1
        spec = _s.pack("4q", sec, nsec, sec, nsec)  # periodic
        self._libc.timerfd_settime(self.fd, 0, spec, None)
        self.armed = True

    def disarm(self) -> None:
        if self.armed:
            self._libc.timerfd_settime(self.fd, 0, bytes(32), None)
            self.armed = False
        self.drain()

    def drain(self) -> None:
        import os

        try:
            os.read(self.fd, 8)
        except OSError:
            pass

    def close(self) -> None:
        import os

        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


_L3_POS = 16  # offset of l3_off in struct mpb_meta (checked in XdpPort.__init__)


class XdpPort:
    """Packets through the XDP fast path and AF_XDP sockets on one device.

    One socket per receive queue (the fast path's XSKMAP gets each), sharing nothing;
    fileno() is an epoll fd over them (plus a timer while packets wait for a neighbour).
    RX: Ethernet is stripped using the metadata's L3 offset; the metadata bytes (struct
    mpb_meta, see structs.Meta.parse) come along. TX: the Ethernet header comes from the
    NeighbourCache (route + neighbour table of the kernel); packets for a destination that
    is not resolved yet wait (bounded) and leave once it is.
    """

    PENDING_MAX = 256  # packets waiting for neighbours, all destinations together
    PENDING_TIMEOUT = 3.0  # seconds before waiting packets are dropped

    def __init__(self, ifname: str, fastpath: Any, queues: Sequence[int] | None = None,
                 netns: str | None = None, config: Any = None,
                 neigh: NeighbourCache | None = None) -> None:
        import select

        from mptcp_bpf.datapath import structs as S
        from mptcp_bpf.datapath.neigh import NeighbourCache
        from mptcp_bpf.datapath.xsk import XskConfig, XskSocket

        self.ifname, self.fastpath, self.netns = ifname, fastpath, netns
        self.socks: list[XskSocket] = []
        self._mapped: list[int] = []
        self.neigh = neigh or NeighbourCache(ifname, netns)
        self._own_neigh = neigh is None
        self.ifindex = self.neigh.ifindex
        self._ep = select.epoll()
        self._timer = _TimerFd()
        self._pending: list[tuple[float, bytes, Packet]] = []
        self.counters = {"rx_packets": 0, "tx_packets": 0, "tx_no_neigh": 0,
                         "tx_dropped": 0, "rx_malformed": 0}
        self._magic = S.MPB_META_MAGIC.to_bytes(2, "little")
        assert S.MpbMeta.l3_off.offset == _L3_POS and S.MpbMeta.magic.offset == 0
        try:
            if queues is None:
                queues = range(min(self._rx_queues(), S.MPB_MAX_QUEUES))
            for q in queues:
                cfg = config or XskConfig()
                cfg = XskConfig(**{**cfg.__dict__, "meta_len": S.META_SIZE})
                try:
                    sock = XskSocket(self.ifindex, q, cfg, netns=netns)
                except OSError as e:
                    # IFLA_NUM_RX_QUEUES counts allocated queues; bind refuses the ones
                    # beyond the real count with EINVAL: stop there
                    if q > 0 and e.errno == errno.EINVAL:
                        break
                    raise
                self.socks.append(sock)
                fastpath.set_xsk(self.ifindex, q, sock.fd)
                self._mapped.append(q)
                self._ep.register(sock.fd, select.EPOLLIN)
            self._ep.register(self._timer.fd, select.EPOLLIN)
        except BaseException:
            self.close()
            raise
        self.tx = self.socks[0]

    def _rx_queues(self) -> int:
        link = self.neigh.ipr.get_links(self.ifindex)[0]
        return int(link.get_attr("IFLA_NUM_RX_QUEUES") or 1)

    @property
    def tx_csum_offload(self) -> bool:
        """True when send_batch(csum=...) makes the kernel fill L4 checksums."""
        return self.tx.tx_csum

    def fileno(self) -> int:
        return self._ep.fileno()

    def recv_batch(self, max_n: int = 64) -> list[tuple[Packet, bytes | None]]:
        """Received IP packets (Ethernet stripped) with their fast-path metadata bytes."""
        if self._pending or self._timer.armed:
            self._timer.drain()
            self._flush_pending()
        if len(self.socks) == 1:
            out, bad = self.tx.recv_l3(max_n, self._magic, _L3_POS)
        else:
            out, bad = [], 0
            for sock in self.socks:
                room = max_n - len(out)
                if room <= 0:
                    break
                got, b = sock.recv_l3(room, self._magic, _L3_POS)
                out += got
                bad += b
        if bad:
            self.counters["rx_malformed"] += bad
        self.counters["rx_packets"] += len(out)
        return out  # type: ignore[return-value]

    def kick_tx(self) -> bool:
        return self.tx.kick_nolock()

    def kick_tx_locked(self) -> None:
        self.tx.kick()

    def send_batch(self, packets: Sequence[Packet],
                   csum: Sequence[tuple[int, int] | None] | None = None,
                   kick: bool = True) -> int:
        """Send IP packets; csum (with tx_csum_offload): per packet None or
        (csum_start, csum_offset) relative to the IP header. Returns how many left now."""
        import time

        if self._pending:
            self._flush_pending()
        now = time.monotonic()
        entries = self.neigh.entries
        heads: list[bytes] = []
        frames: list[Packet] = []
        cs: list[tuple[int, int] | None] | None = [] if csum is not None else None
        last_dst = None  # a burst goes to one neighbour: look it up once per run
        h = None
        for i, p in enumerate(packets):
            if not p:
                self.counters["tx_dropped"] += 1
                continue
            dst = p[16:20] if p[0] >> 4 == 4 else p[24:40]
            if dst != last_dst or h is None:
                dst = bytes(dst)
                e = entries.get(dst)
                h = e.header if e is not None and now < e.expires else None
                if h is None:
                    h = self.neigh.header_for(dst, now)
                    if h is None:
                        last_dst = None
                        self._wait(now, dst, p)
                        continue
                last_dst = dst
            heads.append(h)
            frames.append(p)
            if cs is not None:
                c = csum[i]  # type: ignore[index]
                if c is None:
                    cs.append(None)
                else:
                    t = _ETH_CS.get(c)
                    if t is None:
                        t = _ETH_CS[c] = (c[0] + 14, c[1])
                    cs.append(t)
        if not frames:
            return 0
        n = self.tx.send_batch(frames, cs, heads, kick)
        self.counters["tx_packets"] += n
        self.counters["tx_dropped"] += len(frames) - n
        return n

    def _wait(self, now: float, dst: bytes, p: Packet) -> None:
        self.counters["tx_no_neigh"] += 1
        if len(self._pending) >= self.PENDING_MAX:
            self._pending.pop(0)
            self.counters["tx_dropped"] += 1
        self._pending.append((now, dst, bytes(p)))
        if not self._timer.armed:
            self._timer.arm(0.01)

    def _flush_pending(self) -> None:
        import time

        now = time.monotonic()
        keep: list[tuple[float, bytes, Packet]] = []
        ready: dict[bytes, bytes | None] = {}
        heads: list[bytes] = []
        frames: list[Packet] = []
        for t, dst, p in self._pending:
            if dst not in ready:
                ready[dst] = self.neigh.header_for(dst, now)
            h = ready[dst]
            if h is not None:
                heads.append(h)
                frames.append(p)
            elif now - t < self.PENDING_TIMEOUT:
                keep.append((t, dst, p))
            else:
                self.counters["tx_dropped"] += 1
        self._pending = keep
        if not keep:
            self._timer.disarm()
        if frames:
            n = self.tx.send_batch(frames, None, heads)
            self.counters["tx_packets"] += n
            self.counters["tx_dropped"] += len(frames) - n

    def stats(self) -> dict[str, int]:
        out = dict(self.counters)
        for s in self.socks:
            for k, v in s.statistics().items():
                if k in ("rx_dropped", "rx_ring_full", "rx_fill_ring_empty_descs",
                         "rx_invalid_descs", "tx_invalid_descs"):
                    out[k] = out.get(k, 0) + v
        out["pending"] = len(self._pending)
        return out

    def close(self) -> None:
        for q in self._mapped:
            try:
                self.fastpath.set_xsk(self.ifindex, q, None)
            except Exception:
                pass  # the fast path may be gone already
        self._mapped = []
        for s in self.socks:
            s.close()
        self.socks = []
        self._timer.close()
        self._ep.close()
        if self._own_neigh and self.neigh is not None:
            self.neigh.close()

    def __enter__(self) -> XdpPort:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
