"""Pure parts of datapath.xsk: TX checksum preparation and argument checks (no root)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mptcp_bpf.datapath.xsk import XskConfig, XskSocket, finish_csum, prepare_tx_csum
from mptcp_bpf.errors import HintedError


def ocsum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def frame(ver: int, proto: int, src: bytes, dst: bytes, payload: bytes) -> bytearray:
    l4 = (struct.pack("!HHIIBBHHH", 1, 2, 3, 4, 5 << 4, 0x10, 100, 0, 0) if proto == 6
          else struct.pack("!HHHH", 1, 2, 8 + len(payload), 0)) + payload
    if ver == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0, 64, proto, 0, src, dst)
    else:
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(l4), proto, 64, src, dst)
    return bytearray(b"\xaa" * 12 + (b"\x08\x00" if ver == 4 else b"\x86\xdd") + ip + l4)


def kernel_finish(f: bytearray, start: int, off: int) -> None:
    """What skb_checksum_help does: sum from csum_start to the end, store the complement."""
    s = ocsum(bytes(f[start:]))
    struct.pack_into("!H", f, start + off, ~s & 0xFFFF)


def reference(f: bytearray, ver: int, proto: int) -> int:
    l3 = 14
    if ver == 4:
        l4, addrs = l3 + 20, bytes(f[26:34])
    else:
        l4, addrs = l3 + 40, bytes(f[22:54])
    seg = bytearray(f[l4:])
    off = 16 if proto == 6 else 6
    seg[off:off + 2] = b"\0\0"
    ph = addrs + (struct.pack("!BBH", 0, proto, len(seg)) if ver == 4
                  else struct.pack("!I3xB", len(seg), proto))
    return ~ocsum(ph + bytes(seg)) & 0xFFFF


@settings(max_examples=300, deadline=None)
@given(ver=st.sampled_from([4, 6]), proto=st.sampled_from([6, 17]),
       payload=st.binary(max_size=1460), data=st.data())
def test_partial_sum_finished_by_kernel_equals_full_checksum(ver, proto, payload, data):
    n = 4 if ver == 4 else 16
    src = data.draw(st.binary(min_size=n, max_size=n))
    dst = data.draw(st.binary(min_size=n, max_size=n))
    f = frame(ver, proto, src, dst, payload)
    want = reference(f, ver, proto)
    cs = prepare_tx_csum(f)
    assert cs == ((34 if ver == 4 else 54), (16 if proto == 6 else 6))
    g = bytearray(f)
    kernel_finish(f, *cs)
    got = struct.unpack_from("!H", f, cs[0] + cs[1])[0]
    assert got == want or {got, want} == {0, 0xFFFF}
    # the software fallback (no offload) gives the same field
    finish_csum(g, cs[0], len(g), cs[0] + cs[1])
    assert g == f or {struct.unpack_from("!H", g, cs[0] + cs[1])[0], got} == {0, 0xFFFF}


@pytest.mark.parametrize("f", [
    b"", b"\x00" * 13, b"\xaa" * 14 + b"\x45" + b"\0" * 5,  # truncated
    bytes(frame(4, 1, b"\1" * 4, b"\2" * 4, b"icmp")),  # not TCP/UDP
    bytes(frame(4, 6, b"\1" * 4, b"\2" * 4, b""))[:40],  # TCP header cut short
    b"\xaa" * 14 + b"\x25" + b"\0" * 40,  # IP version 2
])
def test_other_frames_are_left_alone(f):
    b = bytearray(f)
    assert prepare_tx_csum(b) is None
    assert b == f


@pytest.mark.parametrize("cfg", [XskConfig(frame_size=1000), XskConfig(rx_size=1000),
                                 XskConfig(tx_size=0), XskConfig(meta_len=3),
                                 XskConfig(meta_len=512)])
def test_bad_config_is_hinted_before_any_syscall(cfg):
    with pytest.raises(HintedError) as ei:
        XskSocket(1, 0, cfg)
    assert ei.value.hint
