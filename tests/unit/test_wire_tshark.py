"""Every suboption form, both versions, as emitted by the codec and dissected by tshark.

An independent decoder for the forms the kernel capture does not contain (v0 MP_CAPABLE and
ADD_ADDR, MP_PRIO, MP_FAIL, MP_FASTCLOSE, MP_TCPRST, REMOVE_ADDR, 4-byte DSN/data ACK).
Skips when tshark is not installed (tools/bootstrap installs it).
"""

from __future__ import annotations

import ipaddress
import json
import random
import shutil
import subprocess

import pytest

from mptcp_bpf.wire import mptcp as m
from mptcp_bpf.wire.packet import build_tcp_packet
from mptcp_bpf.wire.tcp import ACK, RST, SYN, emit_tcp_options

FIELDS = ("subtype version flags backup.flag flag_T.flag rst_reason addrid sendkey recvkey "
          "recvtok sendrand sendtrunchmac sendhmac addaddrtrunchmac rawdataack rawdataseqno "
          "subflowseqno datalvllen checksum ipver echo ipv4 ipv6 port datafin.flag").split()


def _random_suboptions(rnd: random.Random, n: int) -> list[tuple[object, int]]:
    def u(bits: int) -> int:
        return rnd.choice([0, 1, (1 << bits) - 1, rnd.getrandbits(bits)])

    def addr():
        if rnd.random() < 0.5:
            return ipaddress.IPv4Address(rnd.getrandbits(32))
        return ipaddress.IPv6Address(rnd.getrandbits(128))

    makers = [
        lambda: (m.MpCapable(1, u(8)), SYN),
        lambda: (m.MpCapable(rnd.choice([0, 1]), u(8), u(64)), SYN | ACK),
        lambda: (m.MpCapable(rnd.choice([0, 1]), u(8), u(64), u(64)), ACK),
        lambda: (m.MpCapable(1, u(8), u(64), u(64), u(16), rnd.choice([None, u(16)])), ACK),
        lambda: (m.MpJoinSyn(u(32), u(32), u(8), rnd.random() < 0.5), SYN),
        lambda: (m.MpJoinSynAck(u(64), u(32), u(8), rnd.random() < 0.5), SYN | ACK),
        lambda: (m.MpJoinAck(rnd.randbytes(20)), ACK),
        lambda: (_dss(rnd, u), ACK),
        lambda: (m.AddAddr(u(8), addr(), rnd.choice([None, u(16)]), None, False, 0), ACK),
        lambda: (m.AddAddr(u(8), addr(), rnd.choice([None, u(16)]), u(64), False, 1), ACK),
        lambda: (m.AddAddr(u(8), addr(), rnd.choice([None, u(16)]), None, True, 1), ACK),
        lambda: (m.RemoveAddr(tuple(u(8) for _ in range(rnd.randint(1, 8)))), ACK),
        lambda: (m.MpPrio(rnd.random() < 0.5, rnd.choice([None, u(8)])), ACK),
        lambda: (m.MpFail(u(64)), ACK),
        lambda: (m.MpFastclose(u(64)), ACK),
        lambda: (m.MpTcpRst(u(8), rnd.random() < 0.5), RST | ACK),
    ]
    return [rnd.choice(makers)() for _ in range(n)]


def _dss(rnd: random.Random, u) -> m.Dss:
    a8, m8 = rnd.random() < 0.5, rnd.random() < 0.5
    ack = rnd.choice([None, u(64 if a8 else 32)])
    if rnd.random() < 0.7:
        return m.Dss(ack, a8, u(64 if m8 else 32), m8, u(32), u(16), rnd.choice([None, u(16)]),
                     rnd.random() < 0.3)
    return m.Dss(ack if ack is not None else 1, a8, None, m8, None, None, None, False)


def _expected(sub: object) -> dict[str, object]:
    """tshark field -> value for a suboption (values as tshark prints them, parsed to int)."""
    if isinstance(sub, m.MpCapable):
        return {"version": sub.version, "flags": sub.flags, "sendkey": sub.sender_key,
                "recvkey": sub.receiver_key, "datalvllen": sub.data_len, "checksum": sub.checksum}
    if isinstance(sub, m.MpJoinSyn):
        return {"recvtok": sub.token, "sendrand": sub.nonce, "addrid": [sub.addr_id],
                "backup.flag": int(sub.backup)}
    if isinstance(sub, m.MpJoinSynAck):
        return {"sendtrunchmac": sub.hmac, "sendrand": sub.nonce, "addrid": [sub.addr_id],
                "backup.flag": int(sub.backup)}
    if isinstance(sub, m.MpJoinAck):
        return {"sendhmac": sub.hmac.hex()}
    if isinstance(sub, m.Dss):
        return {"rawdataack": sub.data_ack, "rawdataseqno": sub.dsn, "subflowseqno": sub.ssn,
                "datalvllen": sub.data_len, "datafin.flag": int(sub.data_fin)}
    if isinstance(sub, m.AddAddr):
        e = {"addrid": [sub.addr_id], "port": sub.port,
             "ipv4" if sub.address.version == 4 else "ipv6": str(sub.address)}
        if sub.version == 0:
            e["ipver"] = sub.address.version
        else:
            e["echo"] = int(sub.echo)
            e["addaddrtrunchmac"] = sub.hmac
        return e
    if isinstance(sub, m.RemoveAddr):
        return {"addrid": list(sub.ids)}
    if isinstance(sub, m.MpPrio):
        return {"backup.flag": int(sub.backup), "addrid": None if sub.addr_id is None else [sub.addr_id]}
    if isinstance(sub, m.MpFail):
        return {"rawdataseqno": sub.dsn}
    if isinstance(sub, m.MpFastclose):
        return {"recvkey": sub.receiver_key}
    if isinstance(sub, m.MpTcpRst):
        return {"flag_T.flag": int(sub.transient), "rst_reason": sub.reason}
    raise AssertionError(sub)


def _tshark_value(field: str, vals: list[str]) -> object:
    if field in ("ipv4", "ipv6"):
        return str(ipaddress.ip_address(vals[0]))
    if field == "sendhmac":
        return vals[0].replace(":", "")
    if field == "addrid":
        return [int(v, 0) for v in vals]
    if field.endswith(".flag"):
        return int(vals[0] in ("1", "True", "true")) if not vals[0].isdigit() else int(vals[0])
    return int(vals[0], 0)


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_every_form_agrees_with_tshark(tmp_path):
    from scapy.all import IP, wrpcap
    rnd = random.Random(8684)
    subs = _random_suboptions(rnd, 250)
    pkts = []
    for i, (sub, flags) in enumerate(subs):
        raw = build_tcp_packet(bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), 1024 + i, 80, 1, 1, flags,
                               100, emit_tcp_options(extra=m.emit(sub)), b"")
        pkts.append(IP(raw))
    pcap = tmp_path / "forms.pcap"
    wrpcap(str(pcap), pkts)
    cmd = ["tshark", "-r", str(pcap), "-T", "json", "-o", "mptcp.analyze_mptcp:FALSE",
           "-e", "frame.number"]
    for f in FIELDS:
        cmd += ["-e", f"tcp.options.mptcp.{f}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    frames = {int(e["_source"]["layers"]["frame.number"][0]): e["_source"]["layers"]
              for e in json.loads(out)}
    assert len(frames) == len(subs)
    for i, (sub, _flags) in enumerate(subs, start=1):
        layers = frames[i]
        got_subtype = int(layers["tcp.options.mptcp.subtype"][0])
        assert got_subtype == m.emit(sub)[2] >> 4, (i, sub)
        for field, want in _expected(sub).items():
            vals = layers.get(f"tcp.options.mptcp.{field}")
            if field == "checksum" and isinstance(sub, m.Dss):
                continue  # tshark 4.0 does not show DSS checksums
            got = None if vals is None else _tshark_value(field, vals)
            assert got == want, (i, sub, field, vals)
