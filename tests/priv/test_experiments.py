"""The experiments of tools/exp_*.py in their fast mode: each runs as a subprocess on its
own lab (names start with mpbe), and its JSON is checked for the expected outcome with
margins a loaded 2-core machine keeps; a miss is measured once more before failing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

pytestmark = pytest.mark.priv

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))


def _run(script: str, lab: str, out: Path, extra: list[str], timeout: float) -> dict[str, Any]:
    import exp_lib
    name = script.removeprefix("exp_")
    try:
        proc = subprocess.run([sys.executable, str(ROOT / "tools" / f"{script}.py"), "--fast",
                               "--lab", lab, "--out", str(out), *extra],
                              capture_output=True, text=True, timeout=timeout, cwd=str(ROOT))
    except subprocess.TimeoutExpired as exc:
        return {"error": f"timed out after {timeout} s: {(exc.stderr or b'')[-1500:]!r}"}
    finally:
        left = exp_lib.cleanup_lab(lab)
        assert not left, f"left behind: {left}"
    path = out / f"{ {'pool': 'pooled', 'cong': 'congestion', 'fair': 'fairness'}.get(name, name)}.json"
    if not path.exists():
        return {"error": f"exit {proc.returncode}, no JSON: {proc.stderr[-2000:]}"}
    doc = json.loads(path.read_text())
    doc["stdout"] = proc.stdout
    return doc


def _measure(script: str, lab: str, tmp_path: Path, check: Callable[[dict[str, Any]], str],
             extra: list[str] | None = None, timeout: float = 240) -> dict[str, Any]:
    """Run, check (check returns '' when fine, else why not); once more on a miss."""
    lab = f"{lab}{os.getpid() % 100000}"  # two test runs at once must not share a lab
    why = ""
    for attempt in (1, 2):
        out = tmp_path / f"try{attempt}"
        doc = _run(script, lab, out, extra or [], timeout)
        why = doc.get("error") or check(doc)
        if not why:
            for ext in ("json", "png"):
                assert list(out.glob(f"*.{ext}")), f"{script} wrote no {ext}"
            return doc
    pytest.fail(f"{script}: {why}\n{doc.get('stdout', '')}")


def _by(doc: dict[str, Any], key: str) -> dict[str, dict[str, Any]]:
    return {r[key]: r for r in doc.get("results", doc.get("summary", []))}


@pytest.mark.timeout(600)
def test_pm_subflows_match_kernel_joins(tmp_path: Path) -> None:
    def check(doc: dict[str, Any]) -> str:
        bad = [f"{r['case']}: {r['subflows']}/{r['expected']} {r['pairs']} joins {r['kernel']} {r.get('error', '')}"
               for r in doc["results"] if not r["ok"]]
        return "; ".join(bad)
    doc = _measure("exp_pm", "mpbepm", tmp_path, check)
    rows = _by(doc, "case")
    assert rows["fullmesh 2x2"]["subflows"] == 4
    assert rows["fullmesh 2x2 num_subflows=2"]["kernel"]["MPJoinAckRx"] == 7
    assert rows["ndiffports 3"]["pairs"] == ["10.0.1.1->10.0.1.2 x3"]


@pytest.mark.timeout(700)
def test_fairness_coupled_takes_one_share(tmp_path: Path) -> None:
    def check(doc: dict[str, Any]) -> str:
        r = {(x["cc"], x["competitor"]): x for x in doc["results"]}
        if any("ratio" not in x for x in r.values()):
            return f"a run failed: {[x.get('error') for x in r.values()]}"
        lia, reno = r["lia", "reno"]["ratio"], r["reno", "reno"]["ratio"]
        wv, wvr = r["wvegas", "vegas"]["ratio"], r["wvegas", "reno"]["ratio"]
        # spec: coupled <= 1.3, uncoupled ~2; margins for a loaded machine. wvegas against
        # its own kind (kernel TCP Vegas in BPF): 0.90-1.22 measured on a loaded machine;
        # against Reno (losses before its queue target, its LIA increase): 1.13-1.43
        if lia > 1.5 or reno < 1.35 or reno - lia < 0.3 or not 0.6 <= wv <= 1.5 or wvr > 1.5:
            return (f"ratios lia {lia:.2f} reno {reno:.2f} wvegas/vegas {wv:.2f} "
                    f"wvegas/reno {wvr:.2f}")
        return ""
    doc = _measure("exp_fairness", "mpbefair", tmp_path, check,
                   extra=["--vegas-name", f"bpfvegas{os.getpid() % 100000}"], timeout=300)
    assert {(r["cc"], r["competitor"]) for r in doc["results"]} == \
        {("reno", "reno"), ("lia", "reno"), ("wvegas", "vegas"), ("wvegas", "reno")}


@pytest.mark.timeout(600)
def test_congestion_coupled_moves_to_free_path(tmp_path: Path) -> None:
    def check(doc: dict[str, Any]) -> str:
        r = doc["results"][0]
        if "free_share" not in r:
            return r.get("error", "no result")
        if r["free_share"] < 0.7 or r["free_mbps"] < 3:
            return f"free share {r['free_share']:.2f}, {r['free_mbps']:.1f} Mbit/s on the free path"
        return ""
    doc = _measure("exp_congestion", "mpbecong", tmp_path, check)
    assert doc["results"][0]["cc"] == "lia"


@pytest.mark.timeout(600)
def test_sched_latency_per_scheduler(tmp_path: Path) -> None:
    def check(doc: dict[str, Any]) -> str:
        s = _by(doc, "label")
        d, rr, red = s["default"], s["roundrobin (1)"], s["redundant"]
        problems = []
        if d["slow_share"] > 0.2:
            problems.append(f"default used the slow path for {d['slow_share']:.0%}")
        if red["median_ms"] > d["median_ms"] + 3:
            problems.append(f"redundant median {red['median_ms']:.1f} > default {d['median_ms']:.1f} + 3")
        if not 0.3 <= rr["slow_share"] <= 0.7 or rr["median_ms"] < d["median_ms"] + 5:
            problems.append(f"roundrobin slow share {rr['slow_share']:.2f}, median {rr['median_ms']:.1f}")
        if rr["switches"] < rr["n"] * 0.5:
            problems.append(f"roundrobin switched paths only {rr['switches']} times in {rr['n']}")
        return "; ".join(problems)
    _measure("exp_sched", "mpbesched", tmp_path, check)


@pytest.mark.timeout(600)
def test_pooled_both_directions_use_both_paths(tmp_path: Path) -> None:
    def check(doc: dict[str, Any]) -> str:
        r = {x["mode"]: x for x in doc["results"]}
        problems = [f"{m}: pooled {x['pooled']:.0%} {x['error'][:200]}" for m, x in r.items()
                    if x["time"] is None or x["pooled"] < 0.55]
        return "; ".join(problems)
    doc = _measure("exp_pooled", "mpbepool", tmp_path, check, timeout=280)
    assert {r["mode"] for r in doc["results"]} == {"kernel<->kernel", "kernel->kernel",
                                                   "ours->kernel", "kernel->ours"}
