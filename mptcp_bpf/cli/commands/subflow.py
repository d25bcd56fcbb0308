"""`mptcp-bpf subflow show [TOKEN]`: every subflow of the running stack, like `ss -tiM`."""

from __future__ import annotations

import argparse
from typing import Any

from mptcp_bpf.cli.commands.conn import (add_show_command, addr, hexa, ms, request_by_token,
                                         with_extras)
from mptcp_bpf.cli.common import emit

SF_SHOWN = {"token", "id", "local_id", "remote_id", "local", "remote", "state", "backup",
            "rtt", "srtt", "cwnd", "ssthresh", "bytes_sent", "bytes_received", "bytes_acked",
            "mapping", "pf", "in_flight", "mss", "peer_backup"}


def format_mapping(m: Any) -> str:
    if not m:
        return "-"
    if isinstance(m, dict):
        dsn, ssn, ln = m.get("dsn"), m.get("ssn"), m.get("len", m.get("length"))
        text = f"dsn {dsn} ssn {ssn} len {ln}"
        for k, v in m.items():
            if k not in ("dsn", "ssn", "len", "length") and v is not None:
                text += f" {k} {v}"
        return text
    return str(m)


def format_subflow(s: dict[str, Any]) -> str:
    ids = f"{s.get('local_id', s.get('id', '-'))}/{s.get('remote_id', '-')}"
    head = (f"token {hexa(s.get('token'))} sf {s.get('id', '-')} "
            f"{addr(s.get('local'))} -> {addr(s.get('remote'))} ids {ids} "
            f"{s.get('state', '-')}" + (" backup" if s.get("backup") else "")
            + (" peer_backup" if s.get("peer_backup") else "")
            + (" pf" if s.get("pf") else ""))
    rtt = s.get("rtt", s.get("srtt"))
    line2 = (f"\trtt {ms(rtt)} cwnd {s.get('cwnd', '-')} ssthresh {s.get('ssthresh', '-')}"
             f" mss {s.get('mss', '-')} in_flight {s.get('in_flight', '-')}"
             f" bytes_sent {s.get('bytes_sent', '-')} bytes_acked {s.get('bytes_acked', '-')}"
             f" bytes_received {s.get('bytes_received', '-')}")
    return with_extras([head, line2, f"\tmapping {format_mapping(s.get('mapping'))}"], s, SF_SHOWN)


def register(sub: argparse._SubParsersAction) -> None:
    add_show_command(sub, "subflow", "subflows of the running stack (like ss -tiM)",
                     "show subflows", "only the subflows of this connection", show_subflows)


def show_subflows(args: argparse.Namespace) -> int:
    _, rows = request_by_token(args, "subflows")
    text = "\n".join(format_subflow(r) for r in rows) if rows else "no subflows"
    emit(args, rows, text)
    return 0
