"""Shared pytest setup: privileged tests skip (with the reason) unless run as root."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

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
    _exit_status.append(int(exitstatus))
    if os.geteuid() != 0:
        return
    left = leftover_namespaces("mpb")
    if left:
        print(f"\nWARNING: network namespaces named mpb* exist after the run: {left}")


_exit_status: list[int] = []


def leaked_threads() -> list[threading.Thread]:
    """Non-daemon threads still running: Python waits for them at exit, forever if they block."""
    return [t for t in threading.enumerate()
            if t is not threading.main_thread() and t.is_alive() and not t.daemon]


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """A test that leaks a blocked non-daemon thread would hang the run after its summary
    (a CI run then never ends): name the threads, fail the run, and exit without them."""
    leaked = leaked_threads()
    if not leaked:
        return
    print(f"\nERROR: threads left running by tests: {[t.name for t in leaked]}; "
          "start test threads with daemon=True and stop them in a finally", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_exit_status[-1] if _exit_status and _exit_status[-1] else 1)
