"""The reference run: the kernel selftests' simultaneous-flows cases on our lab.

Shape as in tools/testing/selftests/net/mptcp/simult_flows.sh: client -- 2 paths -- router --
server; path i shaped to rate_i and one-way delay_i in both directions; the client has a
`subflow` endpoint on path 2, limits 1/1 on both ends; 16 MiB go each way at the same time.
A case passes when it completes within size*8*10/9/(rate1+rate2) + 450 ms.

Either end can be replaced with a command (`--server-cmd`, `--client-cmd`; placeholders
{addr} {port} {size} {bind} {ns}) or a Python hook (`Case`-level `run_case(..., hooks=)`), so
our stack can later run the same cases.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from mptcp_bpf.lab.testing import finish, py, start
from mptcp_bpf.lab.topology import Lab

RATES = [(10, 10), (15, 5), (30, 10)]
DELAYS = [(0, 0), (1, 25), (25, 1)]
SIZE = 16 * 1024 * 1024
SLACK = 0.45
PORT = 10000


@dataclass
class Case:
    rate1: int
    rate2: int
    delay1: float
    delay2: float
    size: int = SIZE

    @property
    def label(self) -> str:
        return f"{self.rate1}/{self.rate2} Mbit/s, {self.delay1:g}/{self.delay2:g} ms"

    @property
    def bound(self) -> float:
        """Seconds allowed: transfer at the summed rate with 10% header overhead, plus 450 ms."""
        return self.size * 8 * 10 / 9 / ((self.rate1 + self.rate2) * 1e6) + SLACK


@dataclass
class Result:
    case: Case
    elapsed: float
    ok: bool
    pooled: float
    attempts: list[float] = field(default_factory=list)
    error: str = ""
    joins: int = 0  # MP_JOINs the server completed (MPJoinAckRx), over all attempts

    def row(self) -> dict[str, Any]:
        return {"case": self.case.label, **asdict(self.case), "time": None if self.elapsed == float("inf") else round(self.elapsed, 3),
                "bound": round(self.case.bound, 3), "pooled": round(self.pooled, 3), "ok": self.ok,
                "attempts": [None if a == float("inf") else round(a, 3) for a in self.attempts],
                "joins": self.joins, "error": self.error}


def parse_case(spec: str) -> Case:
    """A case written as on the command line, R1/R2,D1/D2 (Mbit/s, ms): 15/5,1/25."""
    try:
        rates, delays = spec.split(",")
        r1, r2 = (int(x) for x in rates.split("/"))
        d1, d2 = (float(x) for x in delays.split("/"))
    except ValueError:
        raise ValueError(f"bad --case {spec!r}: write R1/R2,D1/D2 such as 15/5,1/25") from None
    return Case(r1, r2, d1, d2)


def cases(fast: bool = False) -> list[Case]:
    if fast:
        return [Case(30, 10, 0, 0)]
    return [Case(r1, r2, d1, d2) for r1, r2 in RATES for d1, d2 in DELAYS]


def setup(lab: Lab) -> None:
    """Kernel MPTCP both ends as simult_flows.sh (congestion control is set per socket:
    a namespace's default may only be one of tcp_allowed_congestion_control)."""
    for node in ("client", "server", "router"):
        lab.sysctl(node, {"net.mptcp.enabled": 1})
    lab.mptcp("client", limits={"subflows": 1, "add_addr_accepted": 1},
              endpoints=[f"{lab.addresses('client')[1]} subflow dev {lab.devices('client')[1]}"])
    lab.mptcp("server", limits={"subflows": 1, "add_addr_accepted": 1}, endpoints=[])


def shape(lab: Lab, case: Case, limit: int | None = None, queue_ms: float | None = None) -> None:
    """Both directions of path i: rate_i and delay_i; the TBF queue is `limit` bytes, or
    `queue_ms` of the path's rate, or the lab's default (100 ms)."""
    for path, rate, delay in ((1, case.rate1, case.delay1), (2, case.rate2, case.delay2)):
        lab.link(path, clear=True)
        lim = limit
        if lim is None and queue_ms:
            lim = max(4542, int(rate * 1e6 / 8 * queue_ms / 1000))
        lab.link(path, rate=f"{rate}mbit", delay=delay, limit=lim)


Hook = Callable[[Lab, Case], float]


def _default_transfer(lab: Lab, case: Case, timeout: float, cc: str) -> float:
    server = start(lab, "server", "mptcp_bpf.lab.traffic", "serve", "--port", str(PORT),
                   "--size", str(case.size), "--timeout", str(timeout), "--cc", cc, "--rt")
    try:
        client = lab.popen("client", py("mptcp_bpf.lab.traffic", "connect", lab.addresses("server")[0],
                                        "--port", str(PORT), "--size", str(case.size),
                                        "--timeout", str(timeout), "--cc", cc, "--rt"),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        res = finish(client, timeout + 10)
        srv = finish(server, 30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
    if res["received"] != case.size or srv["received"] != case.size:
        raise RuntimeError(f"short transfer: client got {res['received']}, server got {srv['received']}")
    return float(res["elapsed"])


def _command_transfer(lab: Lab, case: Case, server_cmd: str | None, client_cmd: str | None,
                      timeout: float, cc: str) -> float:
    fmt = {"addr": lab.addresses("server")[0], "port": PORT, "size": case.size,
           "bind": lab.addresses("client")[0]}
    server = None
    if server_cmd:
        server = lab.popen("server", shlex.split(server_cmd.format(ns=lab.ns("server"), **fmt)),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)  # let it listen
    else:
        server = start(lab, "server", "mptcp_bpf.lab.traffic", "serve", "--port", str(PORT),
                       "--size", str(case.size), "--timeout", str(timeout), "--cc", cc, "--rt")
    try:
        if client_cmd:
            t0 = time.monotonic()
            out = lab.exec("client", shlex.split(client_cmd.format(ns=lab.ns("client"), **fmt)),
                           capture_output=True, text=True, timeout=timeout)
            wall = time.monotonic() - t0
            if out.returncode != 0:
                raise RuntimeError(f"client command failed ({out.returncode}): {out.stderr[-500:]}")
            for line in out.stdout.splitlines()[::-1]:
                if line.startswith("{") and '"elapsed"' in line:
                    return float(json.loads(line)["elapsed"])
            return wall
        client = lab.popen("client", py("mptcp_bpf.lab.traffic", "connect", fmt["addr"], "--port", str(PORT),
                                        "--size", str(case.size), "--timeout", str(timeout), "--cc", cc, "--rt"),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return float(finish(client, timeout + 10)["elapsed"])
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)


def run_case(lab: Lab, case: Case, retries: int = 1, server_cmd: str | None = None,
             client_cmd: str | None = None, hook: Hook | None = None, limit: int | None = None,
             cc: str = "cubic", queue_ms: float | None = None) -> Result:
    """Shape the paths for `case`, run the transfer (retried `retries` times if over the bound)."""
    shape(lab, case, limit, queue_ms)
    timeout = max(60.0, case.bound * 6)
    attempts: list[float] = []
    error = ""
    joins0 = lab.nstat("server").get("MPJoinAckRx", 0)
    for _ in range(retries + 1):
        try:
            if hook:
                elapsed = hook(lab, case)
            elif server_cmd or client_cmd:
                elapsed = _command_transfer(lab, case, server_cmd, client_cmd, timeout, cc)
            else:
                elapsed = _default_transfer(lab, case, timeout, cc)
        except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
            error = str(exc)[:300]
            elapsed = float("inf")
        attempts.append(elapsed)
        if elapsed <= case.bound:
            break
        time.sleep(1.0)  # let queues drain before the retry
    best = min(attempts)
    pooled = case.size * 8 / best / ((case.rate1 + case.rate2) * 1e6) if best != float("inf") else 0.0
    joins = lab.nstat("server").get("MPJoinAckRx", 0) - joins0
    return Result(case, best, best <= case.bound, pooled, attempts, "" if best <= case.bound else error, joins)


def table(results: list[Result]) -> str:
    lines = [f"{'case':34} {'time s':>8} {'bound s':>8} {'pooled':>7}  result"]
    for r in results:
        t = "fail" if r.elapsed == float("inf") else f"{r.elapsed:8.3f}"
        lines.append(f"{r.case.label:34} {t:>8} {r.case.bound:8.3f} {r.pooled:7.1%}  "
                     f"{'ok' if r.ok else 'MISS'}{' (after retry)' if len(r.attempts) > 1 and r.ok else ''}"
                     f"{'  ' + r.error if r.error else ''}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_reference", description=__doc__.splitlines()[0])
    p.add_argument("--name", default="mpblbench", help="lab name (default mpblbench)")
    p.add_argument("--fast", action="store_true", help="one case only (30/10 Mbit/s, no delay)")
    p.add_argument("--case", action="append", metavar="R1/R2,D1/D2",
                   help="run this case, e.g. 15/5,1/25 (repeatable)")
    p.add_argument("--size", type=int, default=SIZE, help="bytes each way (default 16 MiB)")
    p.add_argument("--retries", type=int, default=1, help="reruns of a case that misses (default 1)")
    p.add_argument("--cc", default="cubic", help="congestion control of the sockets (default cubic)")
    p.add_argument("--limit", type=int, help="rate queue in bytes (default: 100 ms of the rate)")
    p.add_argument("--queue-ms", type=float, help="rate queue in ms of each path's rate")
    p.add_argument("--server-cmd", help="server command in the server namespace; {addr} {port} {size}")
    p.add_argument("--client-cmd", help="client command; prints JSON with 'elapsed' or is timed")
    p.add_argument("--json", metavar="FILE", help="also write the JSON results to FILE ('-' = stdout only)")
    p.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    a = p.parse_args(argv)
    todo = cases(a.fast)
    if a.case:
        todo = []
        for spec in a.case:
            try:
                todo.append(parse_case(spec))
            except ValueError as exc:
                p.error(str(exc))
    for c in todo:
        c.size = a.size
    Lab.remove(a.name)
    lab = Lab.up(a.name, paths=2, router=True)
    results: list[Result] = []
    try:
        setup(lab)
        for case in todo:
            r = run_case(lab, case, a.retries, a.server_cmd, a.client_cmd, limit=a.limit, cc=a.cc,
                         queue_ms=a.queue_ms)
            results.append(r)
            print(f"{case.label}: {r.elapsed:.3f} s (bound {case.bound:.3f}) {'ok' if r.ok else 'MISS'}",
                  file=sys.stderr, flush=True)
    finally:
        if not a.keep:
            lab.down()
    print(table(results))
    doc = {"size": a.size, "cc": a.cc, "results": [r.row() for r in results],
           "passed": all(r.ok for r in results)}
    print(json.dumps(doc))
    if a.json and a.json != "-":
        with open(a.json, "w") as f:
            json.dump(doc, f, indent=1)
    return 0 if doc["passed"] else 1
