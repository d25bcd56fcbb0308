"""tools/bench_reference in fast mode (one case, kernel MPTCP at both ends).

The case (30/10 Mbit/s, no delay) is the selftest's: 16 MiB to the client while it sends
80 KiB, then the reverse. On this VM it takes 3.74-3.86 s against a 4.18 s bound at load
average 2-5 (docs/notes/lab.md), so the bound itself is asserted. The one tolerance, for a
busier CI machine: up to two reruns of the case (the selftest has none); a rerun is the
same case on the same lab, so a lab that cannot give the kernel its capacity still fails.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from mptcp_bpf.lab.testing import leftovers

pytestmark = pytest.mark.priv
TOOL = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "bench_reference")


def test_bench_reference_fast():
    name = "mpbl_bench"
    try:
        proc = subprocess.run([TOOL, "--fast", "--name", name, "--retries", "2"], capture_output=True,
                              text=True, timeout=280)
    finally:
        assert not leftovers(name)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    assert lines, proc.stdout + proc.stderr
    doc = json.loads(lines[-1])
    (row,) = doc["results"]
    assert row["rate1"] == 30 and row["rate2"] == 10
    assert row["time"] is not None, row  # both transfers completed, both ways
    assert set(row["times"]) == {"down", "up"}, row  # the selftest's two directions
    assert row["joins"] >= 2, row  # the second path joined in each transfer
    assert row["diag"]["TcpExtTCPTimeouts"] <= 2, row  # no RTO stalls (0 on this VM)
    assert row["ok"], proc.stdout  # within size*8*10/9/(r1+r2) + 450 ms, rerun at most twice
    assert row["pooled"] > 0.8, row  # 0.87-0.90 here; the bound needs about 0.80 with the joins' 200 ms
    assert proc.returncode == 0
    assert "bound" in proc.stdout and "pooled" in proc.stdout
