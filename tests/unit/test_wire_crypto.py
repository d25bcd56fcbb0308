"""Keys, tokens, IDSNs and HMACs (8684 §3.1, §3.2, §3.4.1). Kernel-made known answers are in
test_wire_kernel.py; these pin the definitions and the v0 (SHA-1) variant."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mptcp_bpf.wire import WireError
from mptcp_bpf.wire.crypto import add_addr_hmac, join_hmac, key_idsn, key_token, key_token_idsn

# machines running the suite are loaded: no per-example deadline or speed health checks
SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]

KEY = 0x5AB2A6C64528756F  # a key the kernel chose in one capture (tshark: token, IDSN below)
U64 = st.integers(0, 2**64 - 1)
U32 = st.integers(0, 2**32 - 1)


def test_kernel_known_answer_v1():
    # tshark computed these from the same key (mptcp.expected_token / expected_idsn)
    assert key_token(KEY, 1) == 1263565116
    assert key_idsn(KEY, 1) == 9306918332574607272
    assert key_token_idsn(KEY, 1) == (1263565116, 9306918332574607272)


@given(U64)
@settings(deadline=None, suppress_health_check=SLOW_OK)
def test_token_idsn_definition(key):
    kb = key.to_bytes(8, "big")
    for version, h in ((0, hashlib.sha1), (1, hashlib.sha256)):
        d = h(kb).digest()
        assert key_token(key, version) == int.from_bytes(d[:4], "big")
        assert key_idsn(key, version) == int.from_bytes(d[-8:], "big")


@given(U64, U64, U32, U32)
@settings(deadline=None, suppress_health_check=SLOW_OK)
def test_join_hmac_definition(ka, kb, ra, rb):
    key = ka.to_bytes(8, "big") + kb.to_bytes(8, "big")
    msg = ra.to_bytes(4, "big") + rb.to_bytes(4, "big")
    assert join_hmac(ka, kb, ra, rb, 1) == hmac.new(key, msg, hashlib.sha256).digest()
    assert join_hmac(ka, kb, ra, rb, 0) == hmac.new(key, msg, hashlib.sha1).digest()
    assert len(join_hmac(ka, kb, ra, rb, 0)) == 20


def test_add_addr_hmac_port_absent_is_zero_port():
    a = ipaddress.ip_address("10.71.2.2")
    assert add_addr_hmac(1, 2, 1, a, None) == add_addr_hmac(1, 2, 1, a, 0)
    assert add_addr_hmac(1, 2, 1, a, 80) != add_addr_hmac(1, 2, 1, a, None)
    key = (1).to_bytes(8, "big") + (2).to_bytes(8, "big")
    d = hmac.new(key, b"\x01" + a.packed + b"\x00\x50", hashlib.sha256).digest()
    assert add_addr_hmac(1, 2, 1, a, 80) == int.from_bytes(d[-8:], "big")
    v6 = ipaddress.ip_address("2001:db8::1")
    d6 = hmac.new(key, b"\x07" + v6.packed + b"\x00\x00", hashlib.sha256).digest()
    assert add_addr_hmac(1, 2, 7, v6, None) == int.from_bytes(d6[-8:], "big")


@pytest.mark.parametrize("bad", [-1, 2**64, None, "x"])
def test_bad_keys_raise_wire_error(bad):
    with pytest.raises(WireError):
        key_token(bad, 1)
    with pytest.raises(WireError):
        join_hmac(bad, 1, 1, 1, 1)
    with pytest.raises(WireError):
        add_addr_hmac(bad, 1, 1, ipaddress.ip_address("1.2.3.4"), None)
