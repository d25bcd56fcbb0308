"""The fast path's object cache: one compile per content, rebuilt when a source changes,
atomic (no partial or temporary files left). Needs clang, not root."""

from __future__ import annotations

import os
import pathlib
import shutil

import pytest

from mptcp_bpf.datapath import build
from mptcp_bpf.errors import HintedError

TOP = pathlib.Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("clang") is None, reason="needs clang")


@pytest.fixture
def src(tmp_path):
    d = tmp_path / "src"
    d.mkdir()
    (d / "mpb_bpf.h").write_text((TOP / "bpf" / "mpb_bpf.h").read_text())
    (d / "extra.h").write_text("#define RET 2\n")
    p = d / "prog.bpf.c"
    p.write_text('#include "mpb_bpf.h"\n#include "extra.h"\n'
                 'SEC("xdp") int xdp_main(struct xdp_md *ctx) { return RET; }\n'
                 'char _license[] SEC("license") = "GPL";\n')
    return p


def test_compiled_once_then_reused_and_rebuilt_on_change(src, tmp_path):
    cache = str(tmp_path / "cache")
    first = build.object_for(str(src), cache)
    assert first.startswith(cache) and open(first, "rb").read(4) == b"\x7fELF"
    mtime = os.stat(first).st_mtime_ns
    assert build.object_for(str(src), cache) == first
    assert os.stat(first).st_mtime_ns == mtime           # reused, not rebuilt
    (src.parent / "extra.h").write_text("#define RET 1\n")  # a header counts too
    second = build.object_for(str(src), cache)
    assert second != first and os.path.exists(second)
    src.write_text(src.read_text() + "/* edited */\n")
    third = build.object_for(str(src), cache)
    assert third not in (first, second)
    assert sorted(n for n in os.listdir(cache) if not n.startswith(".lock")) == sorted(
        os.path.basename(p) for p in (first, second, third))   # no temporaries left
    assert build.clear(cache) == 3 and not [n for n in os.listdir(cache) if n.endswith(".o")]


def test_compile_error_is_hinted_and_leaves_nothing(src, tmp_path):
    cache = str(tmp_path / "cache")
    src.write_text("int broken(\n")
    with pytest.raises(HintedError) as exc:
        build.object_for(str(src), cache)
    assert "clang failed" in str(exc.value) and "BPF source" in exc.value.hint
    assert [n for n in os.listdir(cache) if n != ".lock"] == []


def test_fast_path_source_compiles(tmp_path):
    obj = build.object_for(str(TOP / "bpf" / "mptcp_xdp.bpf.c"), str(tmp_path / "cache"))
    data = open(obj, "rb").read()
    assert b"xdp_main" in data and b"subflow_stats" in data and b"sysctl" in data
