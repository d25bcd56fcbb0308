"""Fixtures shared by the unit tests of the control socket and the CLI on it."""

from __future__ import annotations

import shutil
import tempfile

import pytest


@pytest.fixture
def ctl_dir(monkeypatch):
    """A private directory for control sockets (short: a socket path has 108 bytes at most)."""
    d = tempfile.mkdtemp(prefix="mpbp")
    monkeypatch.setenv("MPTCP_BPF_CTL_DIR", d)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
