"""Where a lab's state lives (/run/mptcp-bpf-lab/NAME.json) and how its names are formed.

The state file lets `lab down` in another process, or after a kill, find everything a lab
made: namespaces, pins and the delay line's process.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from typing import Any, Iterator

from mptcp_bpf.errors import HintedError

STATE_DIR = "/run/mptcp-bpf-lab"
NODES = ("client", "server", "router", "wire")
_NAME_RE = re.compile(r"^[A-Za-z0-9_]{1,24}$")


def check_name(name: str) -> str:
    if not _NAME_RE.match(name or ""):
        raise HintedError(f"bad lab name {name!r}",
                          "use 1 to 24 letters, digits or underscores, e.g. `lab1`")
    return name


def ns_prefix(name: str) -> str:
    """Namespace prefix of a lab: always starts with `mpb` (`lab1` -> `mpblab1`)."""
    return name if name.startswith("mpb") else f"mpb{name}"


def ns_name(name: str, node: str) -> str:
    return f"{ns_prefix(name)}-{node}"


def state_path(name: str) -> str:
    return os.path.join(STATE_DIR, f"{name}.json")


def load(name: str) -> dict[str, Any] | None:
    try:
        with open(state_path(name)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None


def save(state: dict[str, Any]) -> None:
    os.makedirs(STATE_DIR, exist_ok=True)
    path = state_path(state["name"])
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(state, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def remove(name: str) -> None:
    for path in (state_path(name), state_path(name) + ".lock"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def names() -> list[str]:
    try:
        return sorted(f[:-5] for f in os.listdir(STATE_DIR) if f.endswith(".json"))
    except FileNotFoundError:
        return []


@contextlib.contextmanager
def locked(name: str) -> Iterator[None]:
    """Serialise changes to one lab between processes."""
    os.makedirs(STATE_DIR, exist_ok=True)
    fd = os.open(state_path(name) + ".lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
