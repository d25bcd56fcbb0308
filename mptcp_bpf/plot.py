"""Per-subflow goodput, cwnd and RTT over time, drawn to PNG from a perf run's JSON.

Input (what `mptcp-bpf perf -J` writes; documented in docs/PLUGINS.md):
    {"intervals": [{"t": seconds since start (end of the interval),
                    "subflows": [{"id": int, "bytes": bytes in this interval,
                                  "rtt_ms": float|null, "cwnd": bytes|null}, ...]}, ...]}
Goodput of a subflow in an interval = bytes * 8 / (t - previous t).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from mptcp_bpf.errors import HintedError


@dataclass
class Series:
    t: list[float] = field(default_factory=list)
    mbps: list[float] = field(default_factory=list)
    cwnd: list[float | None] = field(default_factory=list)
    rtt_ms: list[float | None] = field(default_factory=list)


def _num(v: Any) -> float | None:
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None


def series(run: dict[str, Any]) -> dict[str, Series]:
    """Subflow id (as text) -> its series; malformed entries are skipped, not fatal."""
    intervals = run.get("intervals") if isinstance(run, dict) else None
    if not isinstance(intervals, list):
        raise HintedError("the run has no \"intervals\" list",
                          "give the JSON of `mptcp-bpf perf -J` (format in docs/PLUGINS.md)")
    out: dict[str, Series] = {}
    prev_t = 0.0
    for iv in intervals:
        if not isinstance(iv, dict):
            continue
        t = _num(iv.get("t"))
        if t is None:
            continue
        dt = t - prev_t if t > prev_t else None
        prev_t = t
        for sf in iv.get("subflows") or []:
            if not isinstance(sf, dict) or "id" not in sf:
                continue
            s = out.setdefault(str(sf["id"]), Series())
            b = _num(sf.get("bytes")) or 0.0
            s.t.append(t)
            s.mbps.append(b * 8 / dt / 1e6 if dt else 0.0)
            s.cwnd.append(_num(sf.get("cwnd")))
            s.rtt_ms.append(_num(sf.get("rtt_ms")))
    return out


def load(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise HintedError(f"no such file: {path}", "run `mptcp-bpf perf -c HOST -J > RUN.json`") \
            from None
    except ValueError as exc:
        raise HintedError(f"{path} is not JSON: {exc}", "give the output of `perf -J`") from None


def render(run: dict[str, Any], out: str, title: str | None = None) -> int:
    """Draw goodput, cwnd and RTT panels to `out` (PNG); returns the number of subflows."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = series(run)
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    for sid in sorted(data, key=lambda x: (len(x), x)):
        s = data[sid]
        label = f"subflow {sid}"
        axes[0].plot(s.t, s.mbps, label=label, marker=".")
        axes[1].plot(s.t, [c / 1000 if c is not None else float("nan") for c in s.cwnd],
                     label=label, marker=".")
        axes[2].plot(s.t, [r if r is not None else float("nan") for r in s.rtt_ms],
                     label=label, marker=".")
    axes[0].set_ylabel("goodput (Mbit/s)")
    axes[1].set_ylabel("cwnd (kB)")
    axes[2].set_ylabel("RTT (ms)")
    axes[2].set_xlabel("time (s)")
    for ax in axes:
        ax.grid(True, alpha=0.3)
    if data:
        axes[0].legend(loc="upper right", fontsize="small")
    fig.suptitle(title or "per-subflow goodput, cwnd and RTT")
    fig.tight_layout()
    fig.savefig(out, format="png", dpi=100)
    plt.close(fig)
    return len(data)
