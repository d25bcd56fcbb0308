"""`mptcp-bpf plot`: renders a PNG from a perf run's JSON; bad input gets a clear error."""

from __future__ import annotations

import json

import pytest

from mptcp_bpf import plot
from mptcp_bpf.cli.main import main
from mptcp_bpf.errors import HintedError

RUN = {"intervals": [
    {"t": 1.0, "bytes": 3_000_000, "subflows": [
        {"id": 0, "bytes": 2_000_000, "rtt_ms": 1.5, "cwnd": 60000},
        {"id": 1, "bytes": 1_000_000, "rtt_ms": 25.0, "cwnd": 30000}]},
    {"t": 2.0, "subflows": [
        {"id": 0, "bytes": 2_500_000, "rtt_ms": 1.6, "cwnd": 64000},
        {"id": 1, "bytes": 500_000, "rtt_ms": None, "cwnd": None},
        {"bytes": 5}, "junk"]},
    {"t": 3.5, "subflows": [{"id": 0, "bytes": 3_000_000, "rtt_ms": 1.4, "cwnd": 70000}]},
    {"no_t": True},
]}


def test_series_goodput():
    s = plot.series(RUN)
    assert set(s) == {"0", "1"}
    assert s["0"].mbps == pytest.approx([16.0, 20.0, 16.0])
    assert s["1"].rtt_ms == [25.0, None]


def test_cli_renders_png(tmp_path, capsys):
    run = tmp_path / "run.json"
    run.write_text(json.dumps(RUN))
    out = tmp_path / "out.png"
    assert main(["plot", str(run), "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 5000
    assert "2 subflows" in capsys.readouterr().out
    assert main(["-j", "plot", str(run)]) == 0
    assert json.loads(capsys.readouterr().out)["output"] == str(tmp_path / "run.png")
    assert (tmp_path / "run.png").exists()


def test_bad_inputs(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "missing.json")]) == 1
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    assert main(["plot", str(bad)]) == 1
    assert "not JSON" in capsys.readouterr().err
    with pytest.raises(HintedError):
        plot.series({"x": 1})
    with pytest.raises(HintedError):
        plot.series([1, 2])
