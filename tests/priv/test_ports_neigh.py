"""NeighbourCache: next hop via the kernel's routes, MAC via its neighbour table,
resolution started when missing."""

from __future__ import annotations

import importlib.util
import ipaddress
import pathlib
import subprocess
import time

import pytest

from mptcp_bpf.datapath.neigh import NeighbourCache, mac_bytes

pytestmark = pytest.mark.priv

_BENCH = pathlib.Path(__file__).resolve().parents[2] / "tools" / "bench_xsk.py"
_spec = importlib.util.spec_from_file_location("mpbx_bench_xsk", _BENCH)
bench = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(bench)  # type: ignore[union-attr]


@pytest.fixture
def lab():
    with bench.VethLab("mpbx-n") as lab:
        for ip in ("10.9.0.1", "fd09::1"):
            subprocess.run(["ip", "-n", lab.b, "neigh", "del", ip, "dev", "xb"], timeout=30)
        subprocess.run(["ip", "-n", lab.b, "route", "add", "10.50.0.0/16", "via", "10.9.0.1"],
                       check=True, timeout=30)
        yield lab


def wait_header(nc: NeighbourCache, dst: str, timeout: float = 15.0) -> bytes | None:
    packed = ipaddress.ip_address(dst).packed
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        h = nc.header_for(packed)
        if h is not None:
            return h
        time.sleep(0.05)
    return None


@pytest.mark.parametrize("dst,ethertype", [("10.9.0.1", b"\x08\x00"),
                                           ("10.50.7.7", b"\x08\x00"),  # via the gateway
                                           ("fd09::1", b"\x86\xdd")])
def test_resolves_through_kernel(lab, dst, ethertype):
    nc = NeighbourCache("xb", lab.b)
    try:
        h = wait_header(nc, dst)
        assert h == mac_bytes(lab.mac_a) + mac_bytes(lab.mac_b) + ethertype
        assert nc.probes >= 1  # it was missing: we asked the kernel to resolve it
        e = nc.entries[ipaddress.ip_address(dst).packed]
        assert (e.gateway == "10.9.0.1") == dst.startswith("10.50.")
    finally:
        nc.close()


def test_unknown_device_is_hinted(lab):
    from mptcp_bpf.errors import HintedError

    with pytest.raises(HintedError):
        NeighbourCache("nope0", lab.b)


def test_unreachable_neighbour_is_none_not_error(lab):
    nc = NeighbourCache("xb", lab.b, retry=0.01)
    try:
        assert nc.header_for(ipaddress.ip_address("10.9.0.77").packed) is None
        assert nc.header_for(ipaddress.ip_address("10.9.0.77").packed) is None
    finally:
        nc.close()
