"""bpf/mptcp_common.h and mptcp_bpf/datapath/structs.py describe the same structs and
constants (parsed from the header, laid out with C's natural alignment)."""

from __future__ import annotations

import ctypes
import pathlib
import re
import socket

import pytest

from mptcp_bpf.datapath import structs as S

HEADER = pathlib.Path(__file__).resolve().parents[2] / "bpf" / "mptcp_common.h"
CTYPES = {"__u8": 1, "__u16": 2, "__u32": 4, "__u64": 8, "char": 1}


def parse_header() -> tuple[dict[str, int], dict[str, list[tuple[str, str, int]]]]:
    text = re.sub(r"/\*.*?\*/", "", HEADER.read_text(), flags=re.S)
    defines: dict[str, int] = {}
    for name, value in re.findall(r"^#define\s+(MPB_\w+)\s+(\S+)\s*$", text, flags=re.M):
        defines[name] = int(value, 0)
    structs: dict[str, list[tuple[str, str, int]]] = {}
    for name, body in re.findall(r"struct\s+(\w+)\s*\{(.*?)\};", text, flags=re.S):
        fields = []
        for line in body.strip().splitlines():
            m = re.match(r"\s*(\w+)\s+(\w+)(?:\[(\w+)\])?;\s*$", line)
            assert m, f"cannot parse {line!r} in struct {name}"
            ctype, fname, count = m.groups()
            n = 1 if count is None else (defines[count] if count in defines else int(count, 0))
            fields.append((fname, ctype, n))
        structs[name] = fields
    return defines, structs


DEFINES, STRUCTS = parse_header()


def c_layout(fields: list[tuple[str, str, int]]) -> tuple[list[tuple[str, int, int]], int]:
    off, align, out = 0, 1, []
    for name, ctype, n in fields:
        size = CTYPES[ctype]
        off = (off + size - 1) // size * size
        out.append((name, off, size * n))
        off += size * n
        align = max(align, size)
    return out, (off + align - 1) // align * align


@pytest.mark.parametrize("name", sorted(STRUCTS))
def test_struct_matches_header(name):
    assert name in S.STRUCTS, f"structs.py has no mirror of struct {name}"
    py = S.STRUCTS[name]
    layout, size = c_layout(STRUCTS[name])
    assert [f[0] for f in py._fields_] == [f[0] for f in layout]
    for fname, off, nbytes in layout:
        desc = getattr(py, fname)
        assert (desc.offset, desc.size) == (off, nbytes), fname
    assert ctypes.sizeof(py) == size


def test_every_mirror_is_in_header():
    assert set(S.STRUCTS) == set(STRUCTS)


@pytest.mark.parametrize("name", sorted(DEFINES))
def test_constant_matches_header(name):
    assert getattr(S, name) == DEFINES[name]


def test_meta_fits_xdp_metadata():
    assert S.META_SIZE % 4 == 0 and S.META_SIZE <= 32


def test_counter_names_are_unique_and_in_range():
    assert len(set(S.COUNTER_NAMES.values())) == len(S.COUNTER_NAMES)
    assert all(0 <= i < S.MPB_C_MAX for i in S.COUNTER_NAMES)


def test_subflow_key_is_as_received():
    k = S.subflow_key(socket.AF_INET, "10.0.0.1", 80, "10.0.0.2", 40000)
    d = S.decode_subflow_key(k)
    assert d == {"family": "inet", "remote": "10.0.0.2", "remote_port": 40000,
                 "local": "10.0.0.1", "local_port": 80}
    raw = S.MpbSubflowKey.from_buffer_copy(k)
    assert bytes(raw)[2:4] == (40000).to_bytes(2, "big")      # network order
    assert S.subflow_key(4, socket.inet_aton("10.0.0.1"), 80, "10.0.0.2", 40000) == k
    k6 = S.subflow_key(socket.AF_INET6, "fd00::1", 1, "fd00::2", 2)
    assert S.decode_subflow_key(k6)["local"] == "fd00::1"


def test_listener_key_wildcard_and_errors():
    d = S.decode_listener_key(S.listener_key(socket.AF_INET6, None, 443))
    assert d == {"family": "inet6", "addr": "*", "port": 443}
    with pytest.raises(ValueError):
        S.listener_key(socket.AF_INET, b"\x01\x02", 1)
    with pytest.raises(ValueError):
        S.listener_key(99, None, 1)


def test_meta_parse():
    m = S.MpbMeta(magic=S.MPB_META_MAGIC, flags=S.MPB_F_OWNED | S.MPB_F_CSUM_BAD,
                  subtypes=1 << S.MPB_ST_DSS, csum=0xBEEF, subflow_id=3, token=9)
    meta = S.Meta.parse(b"junk" + bytes(m))
    assert meta.owned and meta.csum_bad and meta.subtype_names() == ["DSS"]
    assert (meta.csum, meta.subflow_id, meta.token) == (0xBEEF, 3, 9)
    assert S.Meta.parse(bytes(S.META_SIZE)) is None
    assert S.Meta.parse(b"short") is None
