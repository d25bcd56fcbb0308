"""net.mptcp.* names, defaults and validation (no root: the pinned maps are not touched)."""

from __future__ import annotations

import pytest

from mptcp_bpf import sysctl
from mptcp_bpf.errors import HintedError


def test_names_and_defaults():
    assert sysctl.DEFAULTS == {
        "mptcp_enabled": 1, "mptcp_checksum": 1, "mptcp_syn_retries": 3, "mptcp_version": 1,
        "mptcp_debug": 0, "mptcp_path_manager": "fullmesh", "mptcp_scheduler": "default"}


@pytest.mark.parametrize("text", ["net.mptcp.mptcp_checksum", "mptcp_checksum", "checksum",
                                  "net/mptcp/mptcp_checksum", " mptcp_checksum "])
def test_canonical_accepts_prefix_or_not(text):
    assert sysctl.canonical(text) == "mptcp_checksum"


@pytest.mark.parametrize("text", ["", "net.mptcp.enabled_x", "net.ipv4.tcp_sack", "mptcp"])
def test_unknown_names_refused_with_list(text):
    with pytest.raises(HintedError) as exc:
        sysctl.canonical(text)
    assert "net.mptcp.mptcp_enabled" in exc.value.hint


@pytest.mark.parametrize("name,value,want", [
    ("mptcp_enabled", "2", 2), ("mptcp_enabled", 0, 0), ("mptcp_checksum", "0", 0),
    ("mptcp_syn_retries", "10", 10), ("mptcp_version", "0", 0), ("mptcp_debug", "0x1", 1),
    ("mptcp_path_manager", "ndiffports", "ndiffports"),
    ("mptcp_scheduler", "redundant", "redundant"), ("mptcp_scheduler", " roundrobin ", "roundrobin"),
])
def test_valid_values(name, value, want):
    assert sysctl.validate(name, value) == want


@pytest.mark.parametrize("name,value,why", [
    ("mptcp_enabled", "3", "out of range"), ("mptcp_enabled", "-1", "out of range"),
    ("mptcp_checksum", "yes", "integer"), ("mptcp_version", "2", "out of range"),
    ("mptcp_syn_retries", "1000", "out of range"),
    ("mptcp_path_manager", "bogus", "no path manager"),
    ("mptcp_scheduler", "fullmesh", "no scheduler"),
])
def test_invalid_values_refused_with_reason(name, value, why):
    with pytest.raises(HintedError) as exc:
        sysctl.validate(name, value)
    assert why in str(exc.value) and exc.value.hint


def test_plugin_names_include_the_seeds():
    assert {"default", "fullmesh", "ndiffports"} <= set(sysctl.plugin_names("pm"))
    assert {"default", "roundrobin", "redundant"} <= set(sysctl.plugin_names("sched"))
