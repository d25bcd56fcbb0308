"""Shared pytest setup: privileged tests skip (with the reason) unless run as root."""

from __future__ import annotations

import os
import subprocess

import pytest


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces, BPF)")
    for item in items:
        if "priv" in item.keywords:
            item.add_marker(skip)


def leftover_namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]


def pytest_sessionfinish(session, exitstatus):
    """Report namespaces left behind: each test must clean up what it made."""
    if os.geteuid() != 0:
        return
    left = leftover_namespaces("mpb")
    if left:
        print(f"\nWARNING: network namespaces named mpb* exist after the run: {left}")
