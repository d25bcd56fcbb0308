"""Random early drop at a lab bottleneck (bpf/lab_aqm.c on the wire device's egress hook).

Why: no RED/CoDel/PIE qdisc exists here, and at a drop-tail TBF the loss epochs fall on
whichever flow sends at the wrong instant (phase effect), which skews fairness results
between senders with different ACK timing. `Aqm.attach(lab, path, dir, rate, ...)` keeps a
virtual copy of the TBF's queue (same rate and bucket) and drops early with a probability rising with
its backlog. It needs the lab's own impairments (rate, delay) set first: the lab adds its
clsact qdisc only when it first needs its program, and would fail if ours was there.

The program and its map live as long as the filter (removed with `detach` or when the lab
goes down); nothing is pinned. The calling process keeps the map handle for settings and
counters.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mptcp_bpf.errors import HintedError
from mptcp_bpf.lab import bpfmap, impair, sh

BPF_SOURCE = Path(__file__).resolve().parents[2] / "bpf" / "lab_aqm.c"
PREF = 7
FIELDS = ("rate", "min_th", "max_th", "max_p", "burst", "level", "last_ns", "passed",
          "early_drops", "forced_drops", "max_backlog")


class Aqm:
    """One compiled program serving any number of (lab, path, direction) bottlenecks."""

    def __init__(self) -> None:
        try:
            from bcc import BPF  # type: ignore[import-not-found]
        except ImportError as exc:
            raise HintedError("bcc is not available", "install python3-bpfcc (tools/bootstrap)") from exc
        self._bpf = BPF(src_file=str(BPF_SOURCE).encode(), cflags=["-w"])
        self._fn = self._bpf.load_func(b"lab_aqm", BPF.SCHED_CLS)
        self._table = self._bpf[b"aqm"]
        self.attached: list[tuple[str, str, int]] = []  # (netns, device, ifindex)

    @staticmethod
    def device(lab: Any, path: int, dir: str) -> str:
        """The wire device whose egress carries direction `dir` ('up' or 'down') of `path`."""
        if dir not in ("up", "down"):
            raise HintedError(f"bad direction {dir!r}", "use up (client->server) or down")
        w = lab.wire_devices(path)
        return w["b"] if dir == "up" else w["a"]

    def attach(self, lab: Any, path: int, dir: str, rate: int, min_ms: float = 5.0,
               max_ms: float = 25.0, max_p: float = 0.1) -> None:
        """Early drop on `path` direction `dir` for a bottleneck of `rate` bit/s.

        Thresholds are in ms of the rate (5 and 25 ms: a queue a few packets deep at
        10-50 Mbit/s, well below the TBF's 100 ms limit, so drops are early, not tail)."""
        if rate <= 0:
            raise HintedError(f"rate {rate}", "give the bottleneck's rate in bit/s")
        ns = lab.ns("wire")
        dev = self.device(lab, path, dir)
        ifindex = int(lab.state["ifindex"][dev])
        bps = rate // 8
        entry = self._table.Leaf()
        entry.rate = bps
        _thresholds(entry, min_ms, max_ms, max_p)
        entry.burst = impair.tbf_params(rate, None)[0]
        self._table[self._table.Key(ifindex)] = entry
        shown = sh.run(["tc", "-n", ns, "qdisc", "show", "dev", dev], check=False)
        pin = f"/run/mptcp-bpf/aqm-{os.getpid()}-{ifindex}"
        cmds = [] if "clsact" in shown else [f"qdisc add dev {dev} clsact"]
        cmds.append(f"filter replace dev {dev} egress pref {PREF} bpf direct-action object-pinned {pin}")
        bpfmap.pin(self._fn.fd, pin)
        try:
            sh.tc_batch(cmds, ns)
        finally:
            os.unlink(pin)
        self.attached.append((ns, dev, ifindex))

    def set_thresholds(self, lab: Any, path: int, dir: str, min_ms: float, max_ms: float,
                       max_p: float = 0.1, reset: bool = True) -> None:
        """New early-drop thresholds on an attached bottleneck (attaching twice would run
        the program twice per frame); `reset` zeroes its counters."""
        key = self._table.Key(int(lab.state["ifindex"][self.device(lab, path, dir)]))
        e = self._table[key]
        _thresholds(e, min_ms, max_ms, max_p)
        if reset:
            e.passed = e.early_drops = e.forced_drops = e.max_backlog = 0
        self._table[key] = e

    def stats(self, lab: Any, path: int, dir: str) -> dict[str, int]:
        """Counters and settings of one bottleneck (bytes, packets)."""
        ifindex = int(lab.state["ifindex"][self.device(lab, path, dir)])
        try:
            e = self._table[self._table.Key(ifindex)]
        except KeyError:
            return {}
        return {f: int(getattr(e, f)) for f in FIELDS if f != "last_ns"}

    def detach(self) -> None:
        """Remove our filters (namespaces already gone are fine)."""
        for ns, dev, ifindex in self.attached:
            if sh.netns_exists(ns):
                sh.tc_batch([f"filter del dev {dev} egress pref {PREF}"], ns, check=False, force=True)
            try:
                del self._table[self._table.Key(ifindex)]
            except KeyError:
                pass
        self.attached.clear()

    def close(self) -> None:
        self.detach()
        self._bpf.cleanup()

    def __enter__(self) -> "Aqm":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _thresholds(entry: Any, min_ms: float, max_ms: float, max_p: float) -> None:
    """Early-drop thresholds of a map entry whose `rate` (bytes/s) is set."""
    if not 0 < max_p <= 1 or not 0 <= min_ms < max_ms:
        raise HintedError("bad thresholds", "need 0 <= min_ms < max_ms and 0 < max_p <= 1")
    entry.min_th = int(entry.rate * min_ms / 1000)
    entry.max_th = int(entry.rate * max_ms / 1000)
    entry.max_p = int(max_p * (1 << 32))
