"""Thin ctypes bindings to libbpf.so.1: maps, pins, object info, BPF_PROG_TEST_RUN,
loading a compiled BPF object (bpf_object__*) and attaching XDP.

Used by everything that works on pinned objects without compiling (the CLI, a second
process of the stack, tests), so they start in milliseconds instead of bcc's seconds.
Functions raise OSError with the kernel's errno.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
from typing import Iterator

# enum bpf_map_type / bpf_prog_type values used here (uapi/linux/bpf.h).
MAP_TYPE_HASH = 1
MAP_TYPE_ARRAY = 2
MAP_TYPE_PERCPU_HASH = 5
MAP_TYPE_PERCPU_ARRAY = 6
MAP_TYPE_XSKMAP = 17
MAP_TYPE_NAMES = {
    1: "hash", 2: "array", 3: "prog_array", 4: "perf_event_array", 5: "percpu_hash",
    6: "percpu_array", 7: "stack_trace", 9: "lru_hash", 10: "lru_percpu_hash",
    14: "devmap", 17: "xskmap", 27: "ringbuf",
}
PROG_TYPE_NAMES = {1: "socket_filter", 2: "kprobe", 3: "sched_cls", 6: "xdp"}

BPF_ANY, BPF_NOEXIST, BPF_EXIST = 0, 1, 2

_lib: ctypes.CDLL | None = None


def lib() -> ctypes.CDLL:
    """libbpf.so.1, loaded once; OSError with a hint when it is missing."""
    global _lib
    if _lib is None:
        name = ctypes.util.find_library("bpf") or "libbpf.so.1"
        try:
            _lib = ctypes.CDLL(name, use_errno=True)
        except OSError as exc:
            raise OSError(errno.ENOENT, f"cannot load libbpf ({exc}); install libbpf1") from None
        _declare(_lib)
    return _lib


def _declare(l: ctypes.CDLL) -> None:
    c_int, c_uint, vp, cp = ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p, ctypes.c_char_p
    sig = {
        "bpf_obj_get": (c_int, [cp]),
        "bpf_obj_pin": (c_int, [c_int, cp]),
        "bpf_map_create": (c_int, [c_int, cp, c_uint, c_uint, c_uint, vp]),
        "bpf_map_lookup_elem": (c_int, [c_int, vp, vp]),
        "bpf_map_update_elem": (c_int, [c_int, vp, vp, ctypes.c_uint64]),
        "bpf_map_delete_elem": (c_int, [c_int, vp]),
        "bpf_map_get_next_key": (c_int, [c_int, vp, vp]),
        "bpf_obj_get_info_by_fd": (c_int, [c_int, vp, ctypes.POINTER(c_uint)]),
        "bpf_prog_get_fd_by_id": (c_int, [c_uint]),
        "bpf_map_get_fd_by_id": (c_int, [c_uint]),
        "bpf_prog_test_run_opts": (c_int, [c_int, vp]),
        "libbpf_num_possible_cpus": (c_int, []),
        "bpf_object__open_mem": (vp, [vp, ctypes.c_size_t, vp]),
        "bpf_object__find_map_by_name": (vp, [vp, cp]),
        "bpf_object__find_program_by_name": (vp, [vp, cp]),
        "bpf_object__load": (c_int, [vp]),
        "bpf_object__close": (None, [vp]),
        "bpf_map__reuse_fd": (c_int, [vp, c_int]),
        "bpf_map__fd": (c_int, [vp]),
        "bpf_program__fd": (c_int, [vp]),
        "bpf_xdp_attach": (c_int, [c_int, c_int, c_uint, vp]),
        "bpf_xdp_detach": (c_int, [c_int, c_uint, vp]),
    }
    for name, (res, args) in sig.items():
        fn = getattr(l, name)
        fn.restype, fn.argtypes = res, args


def _check(ret: int) -> int:
    # libbpf 1.x returns -errno and also sets errno.
    if ret < 0:
        err = -ret if ret < -1 else (ctypes.get_errno() or errno.EIO)
        raise OSError(err, os.strerror(err))
    return ret


def _check_ptr(ptr: int | None, what: str) -> int:
    if not ptr:
        err = ctypes.get_errno() or errno.EINVAL
        raise OSError(err, f"{os.strerror(err)}: {what}")
    return ptr


LIBBPF_DEBUG = 2
_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_MESSAGE_MAX = 1 << 20  # the verifier's log comes in one message


@contextlib.contextmanager
def libbpf_messages() -> Iterator[list[str]]:
    """Collect libbpf's warnings (the verifier's log on a rejected load) while inside.

    libbpf has one process-wide print callback, and bcc (which the lab uses) replaces it
    with its own, so writing to stderr cannot be relied on: install ours, restore after."""
    messages: list[str] = []
    libc = ctypes.CDLL(None)
    buf = ctypes.create_string_buffer(_MESSAGE_MAX)

    def collect(level: int, fmt: bytes, args: int) -> int:
        if level != LIBBPF_DEBUG:
            libc.vsnprintf(buf, _MESSAGE_MAX, fmt, ctypes.c_void_p(args))
            messages.append(buf.value.decode(errors="replace"))
        return 0

    callback = _PRINT_FN(collect)
    l = lib()
    l.libbpf_set_print.restype = ctypes.c_void_p
    l.libbpf_set_print.argtypes = [ctypes.c_void_p]
    old = l.libbpf_set_print(ctypes.cast(callback, ctypes.c_void_p))
    try:
        yield messages
    finally:
        l.libbpf_set_print(old)


class BpfObject:
    """A compiled BPF object (ELF bytes) opened and loaded by libbpf.

    Maps named in `reuse` are not created: the given fds (pinned maps shared with other
    programs or processes) take their place. Fds from map_fd/prog_fd belong to the object:
    pin or dup them before close()."""

    def __init__(self, elf: bytes, reuse: dict[str, int] | None = None) -> None:
        l = lib()
        self._buf = ctypes.create_string_buffer(elf, len(elf))  # libbpf copies it; keep anyway
        self._obj = _check_ptr(l.bpf_object__open_mem(self._buf, len(elf), None),
                               "bpf_object__open_mem")
        try:
            for name, fd in (reuse or {}).items():
                _check(l.bpf_map__reuse_fd(self._map(name), fd))
            _check(l.bpf_object__load(self._obj))
        except BaseException:
            self.close()
            raise

    def _map(self, name: str) -> int:
        return _check_ptr(lib().bpf_object__find_map_by_name(self._obj, name.encode()),
                          f"no map {name!r} in the object")

    def map_fd(self, name: str) -> int:
        return _check(lib().bpf_map__fd(self._map(name)))

    def prog_fd(self, name: str) -> int:
        prog = _check_ptr(lib().bpf_object__find_program_by_name(self._obj, name.encode()),
                          f"no program {name!r} in the object")
        return _check(lib().bpf_program__fd(prog))

    def close(self) -> None:
        if self._obj:
            lib().bpf_object__close(self._obj)
            self._obj = 0

    def __enter__(self) -> "BpfObject":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def xdp_attach(ifindex: int, prog_fd: int, flags: int) -> int:
    """Attach (prog_fd >= 0) or detach (-1) XDP on a device: 0 or -errno."""
    l = lib()
    if prog_fd < 0:
        return l.bpf_xdp_detach(ifindex, flags, None)
    return l.bpf_xdp_attach(ifindex, prog_fd, flags, None)


def possible_cpus() -> int:
    return _check(lib().libbpf_num_possible_cpus())


def obj_get(path: str) -> int:
    """fd of a pinned object (map or program)."""
    try:
        return _check(lib().bpf_obj_get(path.encode()))
    except OSError as exc:
        raise OSError(exc.errno, f"{exc.strerror}: {path}") from None


def obj_pin(fd: int, path: str) -> None:
    try:
        _check(lib().bpf_obj_pin(fd, path.encode()))
    except OSError as exc:
        raise OSError(exc.errno, f"{exc.strerror}: pin {path}") from None


def map_create(map_type: int, name: str, key_size: int, value_size: int, max_entries: int) -> int:
    return _check(lib().bpf_map_create(map_type, name.encode()[:15], key_size, value_size,
                                        max_entries, None))


def prog_fd_by_id(prog_id: int) -> int:
    return _check(lib().bpf_prog_get_fd_by_id(prog_id))


def map_fd_by_id(map_id: int) -> int:
    return _check(lib().bpf_map_get_fd_by_id(map_id))


class MapInfo(ctypes.Structure):
    """struct bpf_map_info (uapi/linux/bpf.h)."""
    _fields_ = [
        ("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32), ("name", ctypes.c_char * 16),
        ("ifindex", ctypes.c_uint32), ("btf_vmlinux_value_type_id", ctypes.c_uint32),
        ("netns_dev", ctypes.c_uint64), ("netns_ino", ctypes.c_uint64),
        ("btf_id", ctypes.c_uint32), ("btf_key_type_id", ctypes.c_uint32),
        ("btf_value_type_id", ctypes.c_uint32), ("_pad", ctypes.c_uint32),
        ("map_extra", ctypes.c_uint64),
    ]


class ProgInfo(ctypes.Structure):
    """struct bpf_prog_info (uapi/linux/bpf.h), up to verified_insns."""
    _fields_ = [
        ("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32), ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64), ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64), ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32), ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * 16), ("ifindex", ctypes.c_uint32),
        ("gpl_compatible", ctypes.c_uint32), ("netns_dev", ctypes.c_uint64),
        ("netns_ino", ctypes.c_uint64), ("nr_jited_ksyms", ctypes.c_uint32),
        ("nr_jited_func_lens", ctypes.c_uint32), ("jited_ksyms", ctypes.c_uint64),
        ("jited_func_lens", ctypes.c_uint64), ("btf_id", ctypes.c_uint32),
        ("func_info_rec_size", ctypes.c_uint32), ("func_info", ctypes.c_uint64),
        ("nr_func_info", ctypes.c_uint32), ("nr_line_info", ctypes.c_uint32),
        ("line_info", ctypes.c_uint64), ("jited_line_info", ctypes.c_uint64),
        ("nr_jited_line_info", ctypes.c_uint32), ("line_info_rec_size", ctypes.c_uint32),
        ("jited_line_info_rec_size", ctypes.c_uint32), ("nr_prog_tags", ctypes.c_uint32),
        ("prog_tags", ctypes.c_uint64), ("run_time_ns", ctypes.c_uint64),
        ("run_cnt", ctypes.c_uint64), ("recursion_misses", ctypes.c_uint64),
        ("verified_insns", ctypes.c_uint32),
    ]


def map_info(fd: int) -> dict:
    info = MapInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _check(lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)))
    return {"id": info.id, "type": MAP_TYPE_NAMES.get(info.type, str(info.type)),
            "type_id": info.type, "name": info.name.decode(errors="replace"),
            "key_size": info.key_size, "value_size": info.value_size,
            "max_entries": info.max_entries, "flags": info.map_flags}


def prog_info(fd: int) -> dict:
    info = ProgInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _check(lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)))
    n = info.nr_map_ids
    ids = (ctypes.c_uint32 * max(n, 1))()
    if n:
        info2 = ProgInfo()
        info2.nr_map_ids = n
        info2.map_ids = ctypes.addressof(ids)
        size = ctypes.c_uint32(ctypes.sizeof(info2))
        _check(lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info2), ctypes.byref(size)))
    return {"id": info.id, "type": PROG_TYPE_NAMES.get(info.type, str(info.type)),
            "name": info.name.decode(errors="replace"), "tag": bytes(info.tag).hex(),
            "xlated_len": info.xlated_prog_len, "jited_len": info.jited_prog_len,
            "verified_insns": info.verified_insns, "run_cnt": info.run_cnt,
            "run_time_ns": info.run_time_ns, "map_ids": list(ids[:n])}


class Map:
    """A BPF map by fd with raw-bytes access; per-CPU values come back as one bytes per CPU."""

    def __init__(self, fd: int, name: str = "") -> None:
        self.fd = fd
        info = map_info(fd)
        self.name = name or info["name"]
        self.info = info
        self.key_size: int = info["key_size"]
        self.value_size: int = info["value_size"]
        self.percpu = info["type_id"] in (MAP_TYPE_PERCPU_HASH, MAP_TYPE_PERCPU_ARRAY, 10)
        self.ncpu = possible_cpus() if self.percpu else 1
        self._stride = (self.value_size + 7) & ~7 if self.percpu else self.value_size
        self._vbuf = ctypes.create_string_buffer(self._stride * self.ncpu)

    @classmethod
    def pinned(cls, path: str) -> "Map":
        return cls(obj_get(path), os.path.basename(path))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "Map":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def lookup(self, key: bytes) -> bytes | list[bytes] | None:
        """Value bytes (list of per-CPU values for per-CPU maps) or None if absent."""
        kbuf = ctypes.create_string_buffer(bytes(key), self.key_size)
        ret = lib().bpf_map_lookup_elem(self.fd, kbuf, self._vbuf)
        if ret < 0:
            err = -ret if ret < -1 else ctypes.get_errno()
            if err == errno.ENOENT:
                return None
            raise OSError(err, os.strerror(err))
        raw = self._vbuf.raw
        if not self.percpu:
            return raw[:self.value_size]
        s = self._stride
        return [raw[i * s:i * s + self.value_size] for i in range(self.ncpu)]

    def update(self, key: bytes, value: bytes | list[bytes], flags: int = BPF_ANY) -> None:
        kbuf = ctypes.create_string_buffer(bytes(key), self.key_size)
        if self.percpu:
            vals = value if isinstance(value, list) else [value] * self.ncpu
            vraw = b"".join(bytes(v).ljust(self._stride, b"\0") for v in vals)
        else:
            vraw = bytes(value)
        vbuf = ctypes.create_string_buffer(vraw, max(len(vraw), self._stride * self.ncpu))
        _check(lib().bpf_map_update_elem(self.fd, kbuf, vbuf, flags))

    def delete(self, key: bytes) -> bool:
        """Delete `key`; False if it was absent."""
        kbuf = ctypes.create_string_buffer(bytes(key), self.key_size)
        ret = lib().bpf_map_delete_elem(self.fd, kbuf)
        if ret < 0:
            err = -ret if ret < -1 else ctypes.get_errno()
            if err == errno.ENOENT:
                return False
            raise OSError(err, os.strerror(err))
        return True

    def keys(self) -> Iterator[bytes]:
        prev = None
        nxt = ctypes.create_string_buffer(self.key_size)
        while True:
            pbuf = None if prev is None else ctypes.create_string_buffer(prev, self.key_size)
            ret = lib().bpf_map_get_next_key(self.fd, pbuf, nxt)
            if ret < 0:
                return
            prev = nxt.raw[:self.key_size]
            yield prev

    def items(self) -> Iterator[tuple[bytes, bytes | list[bytes]]]:
        for k in list(self.keys()):
            v = self.lookup(k)
            if v is not None:
                yield k, v


class TestRunOpts(ctypes.Structure):
    """struct bpf_test_run_opts (libbpf 1.x)."""
    _fields_ = [
        ("sz", ctypes.c_size_t), ("data_in", ctypes.c_void_p), ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32), ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p), ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32), ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32), ("repeat", ctypes.c_int), ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32), ("cpu", ctypes.c_uint32), ("batch_size", ctypes.c_uint32),
    ]


class XdpMd(ctypes.Structure):
    """struct xdp_md as the test-run context (offsets relative to data_meta)."""
    _fields_ = [("data", ctypes.c_uint32), ("data_end", ctypes.c_uint32),
                ("data_meta", ctypes.c_uint32), ("ingress_ifindex", ctypes.c_uint32),
                ("rx_queue_index", ctypes.c_uint32), ("egress_ifindex", ctypes.c_uint32)]


XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = range(5)
XDP_ACTIONS = {0: "aborted", 1: "drop", 2: "pass", 3: "tx", 4: "redirect"}


def test_run_xdp(prog_fd: int, frame: bytes, repeat: int = 1, ingress_ifindex: int = 0,
                 rx_queue: int = 0) -> tuple[int, bytes, bytes, int]:
    """Run an XDP program on `frame`: (retval, metadata, frame out, ns per run).

    ingress_ifindex 0: the kernel's default (the loopback device of the namespace)."""
    out = ctypes.create_string_buffer(len(frame) + 512)
    inb = ctypes.create_string_buffer(bytes(frame), max(len(frame), 1))
    ctx_in = XdpMd(0, len(frame), 0, ingress_ifindex, rx_queue, 0)
    ctx_out = XdpMd()
    opts = TestRunOpts(sz=ctypes.sizeof(TestRunOpts))
    opts.data_in = ctypes.addressof(inb)
    opts.data_size_in = len(frame)
    opts.data_out = ctypes.addressof(out)
    opts.data_size_out = len(out)
    opts.repeat = repeat
    opts.ctx_in = ctypes.addressof(ctx_in)
    opts.ctx_size_in = ctypes.sizeof(ctx_in)
    opts.ctx_out = ctypes.addressof(ctx_out)
    opts.ctx_size_out = ctypes.sizeof(ctx_out)
    _check(lib().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)))
    raw = out.raw[:opts.data_size_out]
    metalen = ctx_out.data if opts.ctx_size_out else 0
    return opts.retval, raw[:metalen], raw[metalen:], opts.duration
