"""An in-memory IP network on virtual time, for tests of the protocol core.

Endpoints are IP addresses (bytes, 4 or 16 long). A node attaches a handler per address;
links join two addresses with a one-way delay, a rate (bits/s, serialisation plus a
drop-tail queue), seeded random loss and reordering. Packets are routed by their
(source, destination) pair, so a multi-homed host with two addresses has two paths.
Everything runs on one `TimerWheel` (`net.timers`), the same one the subflows use.

    net = Net(seed=1)
    a, b = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    net.link(a, b, delay=0.01, rate=100e6, loss=0.01)
    net.attach(a, lambda pkt, now: ...)        # handler(packet_bytes, now)
    net.send(packet_bytes)                     # or use net.send as a subflow's `output`
    net.run(until=5.0)                         # or net.run_until(lambda: done, timeout=30)

`net.now` is the virtual clock. `link.down = True` drops everything on a link;
`link.drop = fn(pkt) -> bool` drops chosen packets (e.g. "the 3rd data segment"),
`net.taps` are callables (pkt, now) that see every packet sent (captures).
"""

from __future__ import annotations

import random
from typing import Callable

from mptcp_bpf.timers import TimerWheel

Handler = Callable[[bytes, float], None]


def ip_addrs(pkt: bytes | bytearray | memoryview) -> tuple[bytes, bytes]:
    """(src, dst) of an IPv4 or IPv6 packet."""
    if pkt[0] >> 4 == 6:
        return bytes(pkt[8:24]), bytes(pkt[24:40])
    return bytes(pkt[12:16]), bytes(pkt[16:20])


class Pipe:
    """One direction of a link: queue, serialisation, delay, loss, reordering."""

    def __init__(self, net: "Net", delay: float, rate: float | None, loss: float,
                 reorder: float, reorder_delay: float, queue: int, jitter: float) -> None:
        self.net = net
        self.delay = delay
        self.rate = rate
        self.loss = loss
        self.reorder = reorder
        self.reorder_delay = reorder_delay
        self.queue = queue
        self.jitter = jitter
        self.down = False
        self.drop: Callable[[bytes], bool] | None = None
        self._busy_until = 0.0
        self._last_arrival = 0.0
        self.sent = 0
        self.delivered = 0
        self.lost = 0
        self.queue_drops = 0
        self.bytes = 0

    def put(self, pkt: bytes, handler_addr: bytes) -> None:
        net = self.net
        now = net.now
        self.sent += 1
        if self.down or (self.drop is not None and self.drop(pkt)):
            self.lost += 1
            return
        if self.loss and net.rng.random() < self.loss:
            self.lost += 1
            return
        start = now
        if self.rate:
            backlog = (self._busy_until - now) * self.rate / 8 if self._busy_until > now else 0.0
            if backlog + len(pkt) > self.queue:
                self.queue_drops += 1
                return
            start = max(now, self._busy_until) + len(pkt) * 8 / self.rate
            self._busy_until = start
        arrival = start + self.delay
        if self.jitter:
            arrival += net.rng.random() * self.jitter
        if self.reorder and net.rng.random() < self.reorder:
            arrival += self.reorder_delay
        elif not self.jitter:
            # FIFO unless reordering was asked for
            if arrival < self._last_arrival:
                arrival = self._last_arrival
            self._last_arrival = arrival
        self.bytes += len(pkt)
        net.timers.schedule(arrival, lambda t, p=pkt, a=handler_addr: net._deliver(p, a, t, self))


class Link:
    """A bidirectional link between two addresses; `ab` and `ba` are its two pipes."""

    def __init__(self, ab: Pipe, ba: Pipe) -> None:
        self.ab = ab
        self.ba = ba

    @property
    def down(self) -> bool:
        return self.ab.down and self.ba.down

    @down.setter
    def down(self, value: bool) -> None:
        self.ab.down = self.ba.down = value

    def set(self, **kw: object) -> None:
        """Change a parameter (delay, rate, loss, reorder, drop...) in both directions."""
        for k, v in kw.items():
            setattr(self.ab, k, v)
            setattr(self.ba, k, v)


class Net:
    """The network: addresses, links, the virtual clock and the shared TimerWheel."""

    def __init__(self, seed: int = 0, timers: TimerWheel | None = None) -> None:
        self.timers = timers or TimerWheel()
        self.rng = random.Random(seed)
        self.now = 0.0
        self._handlers: dict[bytes, Handler] = {}
        self._pipes: dict[tuple[bytes, bytes], Pipe] = {}
        self.taps: list[Handler] = []
        self.unroutable = 0
        self.undeliverable = 0

    def attach(self, addr: bytes, handler: Handler) -> None:
        """Deliver packets destined to `addr` to handler(packet, now)."""
        self._handlers[bytes(addr)] = handler

    def detach(self, addr: bytes) -> None:
        self._handlers.pop(bytes(addr), None)

    def link(self, a: bytes, b: bytes, delay: float = 0.005, rate: float | None = None,
             loss: float = 0.0, reorder: float = 0.0, reorder_delay: float | None = None,
             queue: int = 256 * 1024, jitter: float = 0.0, delay_ba: float | None = None) -> Link:
        """Join a and b. rate in bit/s (None: infinite), queue in bytes (drop-tail),
        loss/reorder are per-packet probabilities; a reordered packet is held
        `reorder_delay` (default: 2 * delay) longer."""
        rd = reorder_delay if reorder_delay is not None else 2 * delay + 0.001
        ab = Pipe(self, delay, rate, loss, reorder, rd, queue, jitter)
        ba = Pipe(self, delay if delay_ba is None else delay_ba, rate, loss, reorder, rd, queue,
                  jitter)
        self._pipes[(bytes(a), bytes(b))] = ab
        self._pipes[(bytes(b), bytes(a))] = ba
        return Link(ab, ba)

    def send(self, pkt: bytes | bytearray | memoryview) -> None:
        """Put an IP packet on the link of its (src, dst) pair (dropped if there is none)."""
        if type(pkt) is not bytes:
            pkt = bytes(pkt)
        # (src, dst) as slices of bytes: already bytes, no ip_addrs() call per packet
        key = (pkt[8:24], pkt[24:40]) if pkt[0] >> 4 == 6 else (pkt[12:16], pkt[16:20])
        if self.taps:
            for tap in self.taps:
                tap(pkt, self.now)
        pipe = self._pipes.get(key)
        if pipe is None:
            self.unroutable += 1
            return
        pipe.put(pkt, key[1])

    def _deliver(self, pkt: bytes, dst: bytes, now: float, pipe: Pipe) -> None:
        h = self._handlers.get(dst)
        if h is None:
            self.undeliverable += 1
            return
        pipe.delivered += 1
        h(pkt, now)

    def call_at(self, t: float, fn: Callable[[float], None]) -> None:
        """Run fn(now) at virtual time t (test scripting)."""
        self.timers.schedule(t, fn)

    def step(self) -> bool:
        """Advance to the next deadline and fire it; False when nothing is scheduled."""
        t = self.timers.next_deadline()
        if t is None:
            return False
        if t > self.now:
            self.now = t
        self.timers.run_due(self.now)
        return True

    def run(self, until: float) -> None:
        """Run every event up to virtual time `until`; the clock ends at `until`."""
        timers = self.timers
        while True:
            t = timers.next_deadline()
            if t is None or t > until:
                break
            if t > self.now:
                self.now = t
            timers.run_due(self.now)
        if until > self.now:
            self.now = until

    def run_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Run until predicate() is true (checked after every event) or `timeout`
        virtual seconds passed; returns predicate()."""
        end = self.now + timeout
        timers = self.timers
        while not predicate():
            t = timers.next_deadline()
            if t is None or t > end:
                self.now = max(self.now, end) if t is not None else self.now
                return predicate()
            if t > self.now:
                self.now = t
            timers.run_due(self.now)
        return True
