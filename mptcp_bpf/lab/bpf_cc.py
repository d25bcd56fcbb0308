"""Kernel TCP congestion controls written in BPF (struct_ops), for lab competitors.

Why: the lab's kernel has only reno, cubic and bbr built in and loads no modules, but a
delay-based controller (wVegas) must be compared with a delay-based TCP flow. bpf/
tcp_vegas.bpf.c is TCP Vegas as a `tcp_congestion_ops`; `registered_vegas(...)` compiles
it (vmlinux.h generated from the running kernel's BTF, both cached under the BPF cache
directory, never in the tree), registers it with `bpftool struct_ops register`, and
unregisters it when the block ends, whatever happens. A congestion control is global to
the kernel (every namespace sees it), so the name is the caller's: a stale one of the same
name (a killed run) is replaced, one of another name is left alone.

    with registered_vegas("bpf_vegas", alpha=10, beta=10) as name:
        ... setsockopt(IPPROTO_TCP, TCP_CONGESTION, name) in any namespace ...
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

from mptcp_bpf.datapath import build
from mptcp_bpf.errors import HintedError
from mptcp_bpf.lab import sh

VEGAS_SOURCE = Path(__file__).resolve().parents[2] / "bpf" / "tcp_vegas.bpf.c"
VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
AVAILABLE = "/proc/sys/net/ipv4/tcp_available_congestion_control"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,14}$")   # also the struct_ops map's name (15 chars)


def cache_dir() -> str:
    return os.path.join(build.CACHE_DIR, "struct_ops")


def _bpftool(*args: str, timeout: float = 60) -> str:
    try:
        return sh.run(["bpftool", *args], timeout=timeout)
    except sh.CommandError as exc:
        if "not found" in str(exc):
            raise HintedError("bpftool is not installed", "run ./tools/bootstrap") from exc
        raise


def vmlinux_h(directory: str | None = None) -> str:
    """Path of a vmlinux.h for the running kernel (generated once per kernel BTF)."""
    directory = directory or cache_dir()
    try:
        with open(VMLINUX_BTF, "rb") as f:
            key = hashlib.sha256(f.read()).hexdigest()[:16]
    except OSError as exc:
        raise HintedError(f"cannot read {VMLINUX_BTF}: {exc}",
                          "the kernel needs CONFIG_DEBUG_INFO_BTF for struct_ops") from exc
    out = os.path.join(directory, f"vmlinux-{key}", "vmlinux.h")
    if os.path.exists(out):
        return out
    os.makedirs(os.path.dirname(out), exist_ok=True)
    text = _bpftool("btf", "dump", "file", VMLINUX_BTF, "format", "c", timeout=120)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(out), prefix=".vmlinux-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, out)
    return out


def build_vegas(name: str, alpha: int, beta: int, gamma: int = 1,
                directory: str | None = None) -> str:
    """The compiled object of bpf/tcp_vegas.bpf.c for these settings (cached by content)."""
    check_name(name)
    if not 0 < alpha <= beta or gamma < 0:
        raise HintedError(f"Vegas alpha {alpha}, beta {beta}, gamma {gamma}",
                          "need 0 < alpha <= beta and gamma >= 0")
    directory = directory or cache_dir()
    header = vmlinux_h(directory)
    clang = build._clang()
    flags = ["-target", "bpf", "-O2", "-g", "-Wall", f"-I{os.path.dirname(header)}",
             f"-DVEGAS_ALPHA={alpha}", f"-DVEGAS_BETA={beta}", f"-DVEGAS_GAMMA={gamma}",
             f"-DVEGAS_NAME={name}"]
    h = hashlib.sha256("\0".join(flags).encode())
    h.update(VEGAS_SOURCE.read_bytes())
    obj = os.path.join(directory, f"vegas-{h.hexdigest()[:20]}.o")
    if os.path.exists(obj):
        return obj
    with open(os.path.join(directory, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(obj):
            return obj
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".build-", suffix=".o")
        os.close(fd)
        try:
            r = subprocess.run([clang, *flags, "-c", str(VEGAS_SOURCE), "-o", tmp],
                               capture_output=True, text=True, timeout=build.CLANG_TIMEOUT)
            if r.returncode != 0:
                raise HintedError(f"clang failed on {VEGAS_SOURCE}:\n{r.stderr[-3000:]}",
                                  "fix the BPF source (or regenerate vmlinux.h)")
            os.replace(tmp, obj)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return obj


def check_name(name: str) -> None:
    if not _NAME.match(name):
        raise HintedError(f"bad congestion control name {name!r}",
                          "lower case letters, digits and _, at most 15 characters")


def available() -> list[str]:
    """The kernel's registered congestion controls (every namespace sees the same)."""
    with open(AVAILABLE) as f:
        return f.read().split()


def struct_ops_ids(name: str) -> list[int]:
    """Ids of registered struct_ops maps called `name` (ours are named as their CC)."""
    out = _bpftool("-j", "struct_ops", "show").strip() or "[]"
    return [int(m["id"]) for m in json.loads(out) if m.get("name") == name]


def unregister(name: str) -> int:
    """Unregister every struct_ops map called `name`; returns how many."""
    n = 0
    for sid in struct_ops_ids(name):
        try:
            _bpftool("struct_ops", "unregister", "id", str(sid))
            n += 1
        except sh.CommandError:
            if sid in struct_ops_ids(name):   # not a race with another remover
                raise
    return n


def register(obj: str, name: str) -> None:
    """Register the object's congestion control, replacing a stale one of the same name."""
    check_name(name)
    if name in ("reno", "cubic", "bbr"):
        raise HintedError(f"{name} is a built-in name", "pick another name")
    unregister(name)
    _bpftool("struct_ops", "register", obj)
    if name not in available():
        unregister(name)
        raise HintedError(f"{name} did not appear in {AVAILABLE}",
                          "check `bpftool struct_ops show` and the kernel log")


@contextlib.contextmanager
def registered_vegas(name: str = "bpf_vegas", alpha: int = 2, beta: int = 4,
                     gamma: int = 1) -> Iterator[str]:
    """TCP Vegas registered as `name` for the block (kernel defaults 2, 4, 1)."""
    obj = build_vegas(name, alpha, beta, gamma)
    register(obj, name)
    try:
        yield name
    finally:
        unregister(name)
