"""The lab's delay line: holds frames from the wire's TAPs until their release time.

Run as `python -m mptcp_bpf.lab.delayline NAME` inside the lab's wire namespace (started by
`Lab.link` when a delay, jitter or reordering is first set; killed by `lab down`). The tc
program redirects a delayed direction's frames to its TAP (tuP for up, tdP for down); this
process reads them, keeps them in a heap ordered by release time, and writes each back to the
same TAP, whose ingress program sends it on. SIGHUP re-reads the settings from the lab's state
file, so changes apply while traffic runs.

Per frame: release = arrival + delay (+ uniform jitter in [-jitter, +jitter]); jitter alone
never reorders (a release is never earlier than the previous one of the same direction).
With reorder P%, a frame is, with probability P, released at once, ahead of the frames
being held (netem's rule); without a delay the others are then held 1 ms.
Precision: select() sleeps with microsecond timeouts (hrtimer), frames due within 50 us are
released together; reads and writes are the only per-frame system calls.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import heapq
import json
import os
import random
import select
import signal
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
STATE_DIR = "/run/mptcp-bpf-lab"
MAX_HELD = 50_000
EARLY = 50e-6
REORDER_GAP = 1e-3


def open_tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


class DelayLine:
    """Frames in flight for every direction of every path of one lab."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.fds: dict[int, tuple[str, str]] = {}   # fd -> (path, dir)
        self.params: dict[int, tuple[float, float, float]] = {}
        self.last: dict[int, float] = {}
        self.heap: list[tuple[float, int, int, bytes]] = []
        self.seq = 0
        self.rng = random.Random()
        self.reload_wanted = True
        self.stop = False
        self.dropped = 0

    def open(self) -> None:
        st = self._state()
        for p, wire in st["wire"].items():
            for d, key in (("up", "tu"), ("down", "td")):
                fd = open_tap(wire[key])
                self.fds[fd] = (p, d)
                self.params[fd] = (0.0, 0.0, 0.0)
                self.last[fd] = 0.0

    def _state(self) -> dict:
        with open(os.path.join(STATE_DIR, f"{self.name}.json")) as f:
            return json.load(f)

    def reload(self) -> None:
        self.reload_wanted = False
        try:
            st = self._state()
        except (OSError, ValueError):
            return
        seed = None
        for fd, (p, d) in self.fds.items():
            cur = st["links"].get(p, {}).get(d, {})
            self.params[fd] = (float(cur.get("delay", 0)) / 1e3, float(cur.get("jitter", 0)) / 1e3,
                               float(cur.get("reorder", 0)) / 100)
            if cur.get("seed") is not None and seed is None:
                seed = int(cur["seed"])
        if seed is not None:
            self.rng.seed(seed)

    def run(self) -> None:
        # Signals wake select() through this pipe (PEP 475 would otherwise resume the wait).
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        except ValueError:
            pass  # not the main thread (tests): settings are then set directly
        fds = list(self.fds) + [wake_r]
        heap = self.heap
        push, pop = heapq.heappush, heapq.heappop
        read, write, now_fn = os.read, os.write, time.monotonic
        while not self.stop:
            if self.reload_wanted:
                self.reload()
            timeout = 0.25  # idle wake-ups to notice a stop request
            if heap:
                timeout = max(0.0, heap[0][0] - now_fn() - EARLY / 2)
            try:
                ready, _, _ = select.select(fds, [], [], timeout)
            except InterruptedError:
                ready = []
            now = now_fn()
            for fd in ready:
                if fd == wake_r:
                    try:
                        os.read(wake_r, 512)
                    except BlockingIOError:
                        pass
                    continue
                delay, jitter, reorder = self.params[fd]
                for _ in range(512):
                    try:
                        frame = read(fd, 65536)
                    except BlockingIOError:
                        break
                    except OSError as exc:
                        if exc.errno in (errno.EBADFD, errno.EIO, errno.ENODEV):
                            return  # the TAP (the lab) is gone
                        break
                    if len(heap) >= MAX_HELD:
                        self.dropped += 1
                        continue
                    if reorder and self.rng.random() < reorder:
                        release = now
                    else:
                        release = now + (delay if delay or not reorder else REORDER_GAP)
                        if jitter:
                            release += self.rng.uniform(-jitter, jitter)
                            if release < self.last[fd]:
                                release = self.last[fd]
                        self.last[fd] = release
                    self.seq += 1
                    push(heap, (release, self.seq, fd, frame))
            due = now_fn() + EARLY
            while heap and heap[0][0] <= due:
                _, _, fd, frame = pop(heap)
                try:
                    write(fd, frame)
                except OSError as exc:
                    if exc.errno in (errno.EBADFD, errno.ENODEV):
                        return
                    self.dropped += 1


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m mptcp_bpf.lab.delayline LAB_NAME", file=sys.stderr)
        return 2
    line = DelayLine(args[0])

    def on_hup(signum: int, frame: object) -> None:
        line.reload_wanted = True

    def on_term(signum: int, frame: object) -> None:
        line.stop = True

    signal.signal(signal.SIGHUP, on_hup)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        line.open()
    except OSError as exc:
        print(f"error: {exc}", flush=True)
        return 1
    line.reload()
    gc.disable()  # tuples of bytes make no cycles; no collector pauses in the hot loop
    # Real-time priority: on a loaded machine a normal process wakes milliseconds late. The
    # loop sleeps in select() between releases, and the kernel's RT throttling bounds it.
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    except (OSError, AttributeError):
        try:
            os.nice(-5)
        except OSError:
            pass
    print("ready", flush=True)
    try:
        sys.stdout.close()
    except OSError:
        pass
    line.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
