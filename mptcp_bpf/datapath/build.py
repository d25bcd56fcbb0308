"""Compile the fast path once per machine: clang -target bpf, cached by content.

The object is namespace-independent (the pinned `sysctl` map is swapped in at load time),
so every process and namespace loads the same ELF file with libbpf. The cache key is the
sha256 of the source, the headers beside it, the compiler's version and the flags, so an
edited source is rebuilt and an old object is never used. Builders take a lock and rename
atomically: concurrent processes compile at most once and never read a partial file.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile

from mptcp_bpf.errors import HintedError

CACHE_DIR = os.environ.get("MPTCP_BPF_CACHE", "/run/mptcp-bpf-cache")
CLANG_TIMEOUT = 300   # seconds; a loaded 2-core machine compiles in a few


def _clang() -> str:
    for name in ("clang", "clang-14", "clang-15", "clang-16"):
        path = shutil.which(name)
        if path:
            return path
    raise HintedError("clang is not installed (it compiles the XDP fast path)",
                      "run ./tools/bootstrap, or apt-get install clang")


def cflags(source: str) -> list[str]:
    flags = ["-target", "bpf", "-O2", "-g", "-Wall", "-Wno-unused-function",
             f"-I{os.path.dirname(os.path.abspath(source))}"]
    multiarch = f"/usr/include/{platform.machine()}-linux-gnu"   # asm/ for linux/*.h
    if os.path.isdir(multiarch):
        flags.append(f"-I{multiarch}")
    return flags


def cache_key(source: str, clang: str, flags: list[str]) -> str:
    """sha256 of the source, the headers beside it, the compiler version and the flags."""
    h = hashlib.sha256()
    try:
        version = subprocess.run([clang, "--version"], capture_output=True, timeout=60,
                                 check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise HintedError(f"{clang} --version failed: {exc}",
                          "check the clang installation (./tools/bootstrap)") from None
    h.update(version)
    h.update("\0".join(flags).encode())
    src_dir = os.path.dirname(os.path.abspath(source))
    with open(source, "rb") as f:
        h.update(f.read())
    for name in sorted(os.listdir(src_dir)):
        if name.endswith(".h"):
            with open(os.path.join(src_dir, name), "rb") as f:
                h.update(name.encode() + b"\0" + f.read())
    return h.hexdigest()


def object_for(source: str, cache_dir: str | None = None) -> str:
    """Path of the compiled object of `source`, compiling it if the cache lacks it."""
    cache_dir = cache_dir or CACHE_DIR
    clang = _clang()
    flags = cflags(source)
    obj = os.path.join(cache_dir, cache_key(source, clang, flags) + ".o")
    if os.path.exists(obj):
        return obj
    os.makedirs(cache_dir, mode=0o755, exist_ok=True)
    with open(os.path.join(cache_dir, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)        # one compile at a time; others wait for it
        if os.path.exists(obj):
            return obj
        fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".build-", suffix=".o")
        os.close(fd)
        try:
            r = subprocess.run([clang, *flags, "-c", source, "-o", tmp], capture_output=True,
                               text=True, timeout=CLANG_TIMEOUT)
            if r.returncode != 0:
                tail = "\n".join(r.stderr.strip().splitlines()[-40:])
                raise HintedError(f"clang failed to compile {source}:\n{tail}",
                                  "fix the error above in the BPF source")
            os.replace(tmp, obj)
        except subprocess.TimeoutExpired:
            raise HintedError(f"clang took more than {CLANG_TIMEOUT} s on {source}",
                              "the machine is overloaded; try again") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return obj


def clear(cache_dir: str | None = None) -> int:
    """Remove every cached object (rebuilt on the next load); returns how many."""
    cache_dir = cache_dir or CACHE_DIR
    n = 0
    if os.path.isdir(cache_dir):
        for name in os.listdir(cache_dir):
            if name.endswith(".o"):
                os.unlink(os.path.join(cache_dir, name))
                n += 1
    return n
