"""The delay line's scheduling, over a datagram socketpair instead of a TAP (no root)."""

from __future__ import annotations

import socket
import threading
import time

from mptcp_bpf.lab.delayline import DelayLine


def run_line(params: tuple[float, float, float], frames: int, gap: float = 0.002, seed: int = 1):
    """Send numbered frames through a DelayLine; return [(seq, delay_s)] in arrival order."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    theirs.setblocking(False)
    line = DelayLine("unit")
    fd = theirs.fileno()
    line.fds[fd] = ("1", "up")
    line.params[fd] = params
    line.last[fd] = 0.0
    line.reload_wanted = False
    line.rng.seed(seed)
    th = threading.Thread(target=line.run, daemon=True)
    th.start()
    sent: dict[int, float] = {}
    got: list[tuple[int, float]] = []

    def receive() -> None:
        ours.settimeout(3.0)
        while len(got) < frames:
            try:
                data = ours.recv(2048)
            except OSError:
                return
            seq = int.from_bytes(data[:4], "big")
            got.append((seq, time.monotonic() - sent[seq]))

    rx = threading.Thread(target=receive, daemon=True)
    try:
        for i in range(frames):
            sent[i] = time.monotonic()
            ours.send(i.to_bytes(4, "big") + b"x" * 60)
            if i == 0:
                rx.start()
            time.sleep(gap)
        rx.join(5)
    finally:
        line.stop = True
        th.join(3)
        ours.close()
        theirs.close()
    assert len(got) == frames
    return got


def test_fixed_delay_keeps_order_and_holds_long_enough():
    got = run_line((0.020, 0.0, 0.0), 30)
    assert [s for s, _ in got] == list(range(30))
    assert min(d for _, d in got) >= 0.0195  # never early; lateness depends on the machine


def test_jitter_spreads_but_never_reorders():
    got = run_line((0.010, 0.005, 0.0), 60, gap=0.001)
    assert [s for s, _ in got] == list(range(60))
    delays = [d for _, d in got]
    assert min(delays) >= 0.0045 and max(delays) - min(delays) > 0.002


def test_reorder_sends_some_frames_ahead():
    got = run_line((0.020, 0.0, 0.3), 60, gap=0.001, seed=3)
    order = [s for s, _ in got]
    assert sorted(order) == list(range(60))
    assert order != list(range(60))
    overtaken = sum(1 for i, s in enumerate(order) if any(o > s for o in order[:i]))
    assert overtaken >= 3  # frames held back while chosen ones went ahead
