"""The impairment program's maps, reached through their bpffs pins with libbpf (ctypes).

Any process (the CLI, a test) can change a live link this way; only the first impairment
of a lab compiles the program (bcc), see `impair.load_program`.
"""

from __future__ import annotations

import ctypes
import os

from mptcp_bpf.errors import HintedError

PIN_ROOT = "/run/mptcp-bpf/lab"
MAX_IFINDEX = 1024

ROLE_NONE, ROLE_IMPAIR, ROLE_RETURN = 0, 1, 2
F_DOWN, F_DELAY, F_STRIP_SYN, F_SEEDED = 1, 2, 4, 8


class ImpairCfg(ctypes.Structure):
    """Mirror of `struct impair_cfg` in bpf/lab_impair.c."""

    _fields_ = [
        ("role", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("loss", ctypes.c_uint32),
        ("dup", ctypes.c_uint32),
        ("corrupt", ctypes.c_uint32),
        ("drop_subtypes", ctypes.c_uint32),
        ("tap_ifindex", ctypes.c_uint32),
        ("out_ifindex", ctypes.c_uint32),
        ("rng", ctypes.c_uint64),
    ]


STAT_FIELDS = ("seen", "lost", "duplicated", "corrupted", "stripped", "subtype_drops",
               "down_drops", "delayed", "returned")


class ImpairStats(ctypes.Structure):
    """Mirror of `struct impair_stats` (one per CPU in the map)."""

    _fields_ = [(name, ctypes.c_uint64) for name in STAT_FIELDS]


_lib: ctypes.CDLL | None = None


def libbpf() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        try:
            lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
        except OSError as exc:
            raise HintedError("libbpf.so.1 not found", "install libbpf1 (tools/bootstrap)") from exc
        lib.bpf_obj_get.argtypes = [ctypes.c_char_p]
        lib.bpf_obj_pin.argtypes = [ctypes.c_int, ctypes.c_char_p]
        lib.bpf_map_update_elem.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64]
        lib.bpf_map_lookup_elem.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        _lib = lib
    return _lib


def pin_dir(lab: str) -> str:
    return os.path.join(PIN_ROOT, lab)


def pin(fd: int, path: str) -> None:
    if libbpf().bpf_obj_pin(fd, path.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"pin {path}: {os.strerror(err)}")


class PinnedMaps:
    """Open handles on a lab's `cfg` and `stats` maps; close() when done."""

    def __init__(self, lab: str) -> None:
        base = pin_dir(lab)
        lib = libbpf()
        self.cfg_fd = lib.bpf_obj_get(os.path.join(base, "cfg").encode())
        self.stats_fd = lib.bpf_obj_get(os.path.join(base, "stats").encode())
        if self.cfg_fd < 0 or self.stats_fd < 0:
            self.close()
            raise FileNotFoundError(f"impairment maps of lab {lab} are not pinned in {base}")
        self.ncpu = os.cpu_count() or 1
        possible = _possible_cpus()
        if possible:
            self.ncpu = possible

    def close(self) -> None:
        for fd in (getattr(self, "cfg_fd", -1), getattr(self, "stats_fd", -1)):
            if fd >= 0:
                os.close(fd)
        self.cfg_fd = self.stats_fd = -1

    def __enter__(self) -> "PinnedMaps":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, ifindex: int) -> ImpairCfg:
        value = ImpairCfg()
        key = ctypes.c_uint32(ifindex)
        if libbpf().bpf_map_lookup_elem(self.cfg_fd, ctypes.byref(key), ctypes.byref(value)) != 0:
            raise OSError(ctypes.get_errno(), f"lookup ifindex {ifindex}")
        return value

    def set(self, ifindex: int, value: ImpairCfg) -> None:
        if not 0 < ifindex < MAX_IFINDEX:
            raise HintedError(f"ifindex {ifindex} out of the map's range")
        key = ctypes.c_uint32(ifindex)
        if libbpf().bpf_map_update_elem(self.cfg_fd, ctypes.byref(key), ctypes.byref(value), 0) != 0:
            raise OSError(ctypes.get_errno(), f"update ifindex {ifindex}")

    def stats(self, ifindex: int) -> dict[str, int]:
        """Counters of one device, summed over CPUs."""
        values = (ImpairStats * self.ncpu)()
        key = ctypes.c_uint32(ifindex)
        if libbpf().bpf_map_lookup_elem(self.stats_fd, ctypes.byref(key), ctypes.byref(values)) != 0:
            raise OSError(ctypes.get_errno(), f"lookup stats {ifindex}")
        return {name: sum(getattr(v, name) for v in values) for name in STAT_FIELDS}


def _possible_cpus() -> int:
    """Number of possible CPUs (the per-CPU map value count), from /sys."""
    try:
        text = open("/sys/devices/system/cpu/possible").read().strip()
    except OSError:
        return 0
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += (int(hi) - int(lo) + 1) if hi else 1
    return count


def prog_id(fd: int) -> int:
    """The kernel id of a loaded program (struct bpf_prog_info: type @0, id @4)."""
    lib = libbpf()
    info = (ctypes.c_uint8 * 256)()
    size = ctypes.c_uint32(256)
    lib.bpf_obj_get_info_by_fd.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)]
    if lib.bpf_obj_get_info_by_fd(fd, info, ctypes.byref(size)) != 0:
        return 0
    return int.from_bytes(bytes(info[4:8]), "little")


def prog_exists(pid: int) -> bool:
    """Whether a program with kernel id `pid` still exists."""
    lib = libbpf()
    lib.bpf_prog_get_fd_by_id.argtypes = [ctypes.c_uint32]
    fd = lib.bpf_prog_get_fd_by_id(pid)
    if fd < 0:
        return False
    os.close(fd)
    return True
