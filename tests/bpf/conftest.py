"""The XDP program (the cached object) loaded once per test session, pinned in a
private directory."""

from __future__ import annotations

import os

import pytest

PIN_DIR = f"/run/mptcp-bpf/mpbb-test-{os.getpid()}"


@pytest.fixture(scope="session")
def fastpath():
    if os.geteuid() != 0:
        pytest.skip("needs root (BPF)")
    from mptcp_bpf.datapath import pins
    from mptcp_bpf.datapath.loader import FastPath
    if not pins.bpffs_mounted():
        pytest.skip("no bpffs at /run/mptcp-bpf (run ./tools/bootstrap)")
    try:
        fp = FastPath.load([], pin_dir=PIN_DIR)
        yield fp
        fp.close()
    finally:
        pins.remove_dir(PIN_DIR)
