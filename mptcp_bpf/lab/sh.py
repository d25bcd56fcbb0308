"""Running ip/tc/sysctl and Python code inside network namespaces.

Shell tools are run in batches (`ip -b`) so a lab of N paths costs a handful of processes.
Python code runs in a namespace through a short-lived thread that calls setns(2): the
network namespace is per thread, so netlink sockets and /proc/thread-self/net opened in
that thread belong to the lab's namespace without forking an interpreter.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
from typing import Callable, TypeVar

from mptcp_bpf.errors import HintedError

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class CommandError(HintedError):
    """A tool (ip, tc, sysctl) failed; the message carries its stderr."""


def run(argv: list[str], *, check: bool = True, timeout: float = 60, input: str | None = None) -> str:
    """Run a command, return stdout; raise CommandError with stderr on failure."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input)
    except FileNotFoundError as exc:
        raise CommandError(f"{argv[0]} not found", "install iproute2 (tools/bootstrap)") from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandError(f"{' '.join(argv)} timed out after {timeout} s") from exc
    if check and proc.returncode != 0:
        raise CommandError(f"{' '.join(argv[:6])}...: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def ip_batch(lines: list[str], ns: str | None = None, *, check: bool = True, force: bool = False,
             family: int = 0) -> str:
    """Run `ip [-6] [-n ns] [-force] -b -` on the given command lines (without the leading `ip`)."""
    if not lines:
        return ""
    argv = ["ip"] + (["-6"] if family == 6 else []) + (["-n", ns] if ns else []) + \
        (["-force"] if force else []) + ["-b", "-"]
    return run(argv, check=check, input="\n".join(lines) + "\n")


def tc_batch(lines: list[str], ns: str, *, check: bool = True, force: bool = False) -> str:
    """Run `tc -n ns [-force] -b -` on the given command lines (without the leading `tc`)."""
    if not lines:
        return ""
    argv = ["tc", "-n", ns] + (["-force"] if force else []) + ["-b", "-"]
    return run(argv, check=check, input="\n".join(lines) + "\n")


def netns_exists(ns: str) -> bool:
    return os.path.exists(f"/run/netns/{ns}")


def list_netns(prefix: str = "") -> list[str]:
    try:
        names = os.listdir("/run/netns")
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(prefix))


def in_netns(ns: str, fn: Callable[[], T], timeout: float = 30) -> T:
    """Call fn() in a thread that has joined namespace `ns`; return its result or raise."""
    box: dict[str, object] = {}

    def body() -> None:
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({ns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            box["value"] = fn()
        except BaseException as exc:  # re-raised in the caller
            box["error"] = exc

    thread = threading.Thread(target=body, name=f"netns-{ns}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise CommandError(f"operation in namespace {ns} timed out after {timeout} s")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def read_netns_file(ns: str, path: str) -> str:
    """Read a per-namespace file such as /proc/thread-self/net/netstat inside `ns`."""
    def read() -> str:
        with open(path) as f:
            return f.read()
    return in_netns(ns, read)
