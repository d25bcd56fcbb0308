"""Link impairments of a lab path, applied live in the wire namespace.

Where each one acts (direction up = client -> server; its wire ingress is aP, egress bP):
- loss, dup, corrupt, strip-mptcp-syn, drop-subtype, one-way down: bpf/lab_impair.c on the
  ingress of aP (up) / bP (down), configured through the pinned `cfg` map;
- delay, jitter, reorder: that program redirects the direction's frames to a TAP
  (tuP / tdP) read by the lab's delay line process (`delayline.py`), which writes them back
  at their release time; the TAP's ingress redirects them on to the egress device;
- rate: a TBF qdisc on the egress device (bP for up, aP for down), after the delay line;
- down in both directions: the wire veths go down, so both endpoints lose carrier.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TYPE_CHECKING

from mptcp_bpf.errors import HintedError
from mptcp_bpf.lab import bpfmap, sh, state

if TYPE_CHECKING:
    from mptcp_bpf.lab.topology import Lab

DIRS = ("up", "down")
SUBTYPES = {"mp_capable": 0, "mp_join": 1, "dss": 2, "add_addr": 3, "remove_addr": 4,
            "mp_prio": 5, "mp_fail": 6, "mp_fastclose": 7, "mp_tcprst": 8}
BPF_SOURCE = Path(__file__).resolve().parents[2] / "bpf" / "lab_impair.c"
SETTING_KEYS = {"rate", "limit", "burst", "delay", "jitter", "loss", "dup", "reorder", "corrupt",
                "strip_mptcp_syn", "drop_subtype", "down", "up", "clear", "seed"}


# ---- parsing user values ---------------------------------------------------------------
def parse_rate(value: Any) -> int | None:
    """Bits per second from 20e6, '20mbit', '500kbit', '1gbit', '20M'; None/0/'off' = no limit."""
    if value is None or value in (0, "0", "off", "none", ""):
        return None
    if isinstance(value, (int, float)):
        bits = float(value)
    else:
        m = re.fullmatch(r"\s*([0-9.]+)\s*([kmg]?)(bit|bps|b)?\s*", str(value).lower())
        if not m:
            raise HintedError(f"bad rate {value!r}", "write it like 20mbit, 500kbit or 1gbit")
        scale = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2)]
        bits = float(m.group(1)) * scale * (8 if m.group(3) == "bps" else 1)
    if bits < 8000:
        raise HintedError(f"rate {value!r} is below 8 kbit/s", "use at least 8kbit")
    return int(bits)


def parse_ms(value: Any, what: str = "delay") -> float:
    """Milliseconds from 10, '10ms', '1.5ms', '500us', '1s'."""
    if value is None:
        return 0.0
    if isinstance(value, (int, float)):
        ms = float(value)
    else:
        m = re.fullmatch(r"\s*([0-9.]+)\s*(ms|us|s)?\s*", str(value).lower())
        if not m:
            raise HintedError(f"bad {what} {value!r}", "write it like 10ms, 500us or 1s")
        ms = float(m.group(1)) * {"ms": 1.0, None: 1.0, "us": 1e-3, "s": 1e3}[m.group(2)]
    if not 0 <= ms <= 10_000:
        raise HintedError(f"{what} {value!r} out of range", "use 0 to 10 s")
    return ms


def parse_pct(value: Any, what: str) -> float:
    if value is None:
        return 0.0
    text = str(value).strip().rstrip("%")
    try:
        pct = float(text)
    except ValueError:
        raise HintedError(f"bad {what} {value!r}", "give a percentage such as 1 or 0.5%") from None
    if not 0 <= pct <= 100:
        raise HintedError(f"{what} {value!r} out of range", "use 0 to 100 (percent)")
    return pct


def parse_subtypes(value: Any) -> list[str]:
    if value is None or value == "" or value == []:
        return []
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    out = []
    for item in items:
        key = str(item).strip().lower().replace("-", "_")
        if key.isdigit() and int(key) < 16:
            out.append(key)
            continue
        if not key.startswith("mp_") and f"mp_{key}" in SUBTYPES:
            key = f"mp_{key}"
        if key not in SUBTYPES:
            raise HintedError(f"unknown MPTCP subtype {item!r}",
                              f"use a number 0..15 or one of {', '.join(SUBTYPES)}")
        out.append(key)
    return out


def _subtype_mask(names: list[str]) -> int:
    mask = 0
    for n in names:
        mask |= 1 << (int(n) if n.isdigit() else SUBTYPES[n])
    return mask


def _prob(pct: float) -> int:
    return 0xFFFFFFFF if pct >= 100 else int(round(pct / 100 * 0xFFFFFFFF))


# ---- applying ------------------------------------------------------------------------------
def apply(lab: "Lab", path: int, dir: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Update path `path` in direction(s) `dir` ('up', 'down', 'both') and apply it live."""
    unknown = set(settings) - SETTING_KEYS
    if unknown:
        raise HintedError(f"unknown link setting(s) {sorted(unknown)}", f"use {sorted(SETTING_KEYS)}")
    if dir not in ("up", "down", "both"):
        raise HintedError(f"bad direction {dir!r}", "use up (client->server), down or both")
    if settings.get("down") and settings.get("up"):
        raise HintedError("both down and up given", "pick one")
    dirs = list(DIRS) if dir == "both" else [dir]
    new = _normalise(settings)
    with state.locked(lab.name):
        st = state.load(lab.name)
        if st is None:
            raise HintedError(f"lab {lab.name} does not exist", f"build it with `mptcp-bpf lab up {lab.name}`")
        links = st["links"][str(path)]
        before = {d: dict(links[d]) for d in DIRS}
        for d in dirs:
            cur = {} if settings.get("clear") else dict(links[d])
            for key, value in new.items():
                if key == "seed" and value is not None:
                    cur["seed"] = int(value) + (1 if d == "down" else 0)
                elif value in (None, 0, 0.0, False, []) and key != "seed":
                    cur.pop(key, None)
                else:
                    cur[key] = value
            links[d] = cur
        if _needs_bpf(st) and not st.get("bpf"):
            load_program(st)
        _apply_rates(st, path, before, links)
        _apply_carrier(st, path, before, links)
        if st.get("bpf"):
            _write_cfg(st, path, reseed="seed" in new or bool(settings.get("clear")))
        if any(_needs_delay(l[d]) for l in st["links"].values() for d in DIRS):
            _ensure_delay_line(st)
        state.save(st)
        pid = st.get("delayline_pid")
        if pid:
            try:
                os.kill(int(pid), signal.SIGHUP)
            except ProcessLookupError:
                pass
    return {d: dict(links[d]) for d in DIRS}


def _normalise(s: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "rate" in s and s["rate"] is not None:
        out["rate"] = parse_rate(s["rate"])
    if s.get("burst") is not None:
        out["burst"] = int(s["burst"])
        if out["burst"] < 1514:
            raise HintedError(f"burst {s['burst']} bytes is too small", "use at least 1514 bytes (one frame)")
    if s.get("limit") is not None:
        out["limit"] = int(s["limit"])
        if out["limit"] < 3000:
            raise HintedError(f"queue limit {s['limit']} bytes is too small", "use at least 3000 bytes")
    for key in ("delay", "jitter"):
        if s.get(key) is not None:
            out[key] = parse_ms(s[key], key)
    for key in ("loss", "dup", "reorder", "corrupt"):
        if s.get(key) is not None:
            out[key] = parse_pct(s[key], key)
    if s.get("strip_mptcp_syn") is not None:
        out["strip_mptcp_syn"] = bool(s["strip_mptcp_syn"])
    if s.get("drop_subtype") is not None:
        out["drop_subtype"] = parse_subtypes(s["drop_subtype"])
    if s.get("down"):
        out["down"] = True
    if s.get("up"):
        out["down"] = False
    if s.get("seed") is not None:
        out["seed"] = int(s["seed"])
    return out


def _needs_delay(cur: dict[str, Any]) -> bool:
    return bool(cur.get("delay") or cur.get("jitter") or cur.get("reorder"))


def _both_down(links: dict[str, Any]) -> bool:
    return bool(links["up"].get("down") and links["down"].get("down"))


def _needs_bpf(st: dict[str, Any]) -> bool:
    for links in st["links"].values():
        for d in DIRS:
            cur = links[d]
            if any(cur.get(k) for k in ("loss", "dup", "corrupt", "strip_mptcp_syn", "drop_subtype")):
                return True
            if _needs_delay(cur) or (cur.get("down") and not _both_down(links)):
                return True
    return False


def _egress(st: dict[str, Any], path: int, d: str) -> str:
    w = st["wire"][str(path)]
    return w["b"] if d == "up" else w["a"]


def _ingress(st: dict[str, Any], path: int, d: str) -> str:
    w = st["wire"][str(path)]
    return w["a"] if d == "up" else w["b"]


def _tap(st: dict[str, Any], path: int, d: str) -> str:
    w = st["wire"][str(path)]
    return w["tu"] if d == "up" else w["td"]


BUCKET_MS = 50   # TBF bucket, in ms of the rate
QUEUE_MS = 100   # TBF queue, in ms of the rate


def tbf_params(rate: int, limit: int | None, burst: int | None = None) -> tuple[int, int]:
    """(burst, limit) in bytes: a 50 ms bucket (at least two frames), a 100 ms queue by default.

    A small bucket loses capacity whenever the qdisc watchdog fires late (a loaded machine,
    a descheduled vCPU): tokens beyond the bucket are thrown away, unlike netem's rate, which
    catches up. 50 ms of slack keeps the long-run rate right; over a second it lets at most
    5% more through.
    """
    if burst is None:
        burst = max(3028, rate // 8 * BUCKET_MS // 1000)
    if limit is None:
        limit = max(3 * 1514, rate // 8 * QUEUE_MS // 1000, 30000)
    return burst, max(limit, burst)


def _apply_rates(st: dict[str, Any], path: int, before: dict[str, Any], links: dict[str, Any]) -> None:
    cmds, dels = [], []
    for d in DIRS:
        old = (before[d].get("rate"), before[d].get("limit"), before[d].get("burst"))
        new = (links[d].get("rate"), links[d].get("limit"), links[d].get("burst"))
        if old == new:
            continue
        dev = _egress(st, path, d)
        if new[0]:
            burst, limit = tbf_params(new[0], new[1], new[2])
            cmds.append(f"qdisc replace dev {dev} root tbf rate {new[0]}bit burst {burst} limit {limit}")
        elif old[0]:
            dels.append(f"qdisc del dev {dev} root")
    sh.tc_batch(cmds, st["ns"]["wire"])
    sh.tc_batch(dels, st["ns"]["wire"], check=False, force=True)


def _apply_carrier(st: dict[str, Any], path: int, before: dict[str, Any], links: dict[str, Any]) -> None:
    was, now = _both_down(before), _both_down(links)
    if was == now:
        return
    w = st["wire"][str(path)]
    updown = "down" if now else "up"
    sh.ip_batch([f"link set {w['a']} {updown}", f"link set {w['b']} {updown}"], st["ns"]["wire"])


def load_program(st: dict[str, Any]) -> None:
    """Compile bpf/lab_impair.c, pin its maps, attach it to every wire device (pass-through)."""
    try:
        from bcc import BPF  # type: ignore[import-not-found]
    except ImportError as exc:
        raise HintedError("bcc is not available", "install python3-bpfcc (tools/bootstrap)") from exc
    base = bpfmap.pin_dir(st["name"])
    os.makedirs(base, exist_ok=True)
    bpf = BPF(src_file=str(BPF_SOURCE).encode(), cflags=["-w", f"-DMAX_IFINDEX={bpfmap.MAX_IFINDEX}"])
    fn = bpf.load_func(b"lab_impair", BPF.SCHED_CLS)
    for what, fd in (("cfg", bpf[b"cfg"].map_fd), ("stats", bpf[b"stats"].map_fd), ("prog", fn.fd)):
        path = os.path.join(base, what)
        if os.path.exists(path):
            os.unlink(path)
        bpfmap.pin(fd, path)
    st["prog_id"] = bpfmap.prog_id(fn.fd)
    idx = st["ifindex"]
    with bpfmap.PinnedMaps(st["name"]) as maps:
        for p in range(1, st["paths"] + 1):
            for d in DIRS:
                tap = bpfmap.ImpairCfg(role=bpfmap.ROLE_RETURN, out_ifindex=idx[_egress(st, p, d)])
                maps.set(idx[_tap(st, p, d)], tap)
                maps.set(idx[_ingress(st, p, d)], bpfmap.ImpairCfg(role=bpfmap.ROLE_NONE))
    cmds = []
    prog = os.path.join(base, "prog")
    for p in range(1, st["paths"] + 1):
        for d in DIRS:
            for dev in (_ingress(st, p, d), _tap(st, p, d)):
                cmds += [f"qdisc replace dev {dev} clsact",  # keeps filters others added
                         f"filter add dev {dev} ingress bpf direct-action object-pinned {prog}"]
    sh.tc_batch(cmds, st["ns"]["wire"])
    os.unlink(prog)  # the filters hold the program; only the maps stay pinned
    bpf.cleanup()
    st["bpf"] = True


def _write_cfg(st: dict[str, Any], path: int, reseed: bool = False) -> None:
    idx = st["ifindex"]
    links = st["links"][str(path)]
    with bpfmap.PinnedMaps(st["name"]) as maps:
        for d in DIRS:
            cur = links[d]
            flags = 0
            if cur.get("down") and not _both_down(links):
                flags |= bpfmap.F_DOWN
            if _needs_delay(cur):
                flags |= bpfmap.F_DELAY
            if cur.get("strip_mptcp_syn"):
                flags |= bpfmap.F_STRIP_SYN
            dev = idx[_ingress(st, path, d)]
            old = maps.get(dev)
            rng = old.rng
            if cur.get("seed") is not None:
                flags |= bpfmap.F_SEEDED
                if reseed or old.flags & bpfmap.F_SEEDED == 0:
                    rng = (int(cur["seed"]) * 0x9E3779B97F4A7C15 + 1) & 0xFFFFFFFFFFFFFFFF or 1
            maps.set(dev, bpfmap.ImpairCfg(
                role=bpfmap.ROLE_IMPAIR, flags=flags, loss=_prob(cur.get("loss", 0)),
                dup=_prob(cur.get("dup", 0)), corrupt=_prob(cur.get("corrupt", 0)),
                drop_subtypes=_subtype_mask(cur.get("drop_subtype", [])),
                tap_ifindex=idx[_tap(st, path, d)], out_ifindex=idx[_egress(st, path, d)], rng=rng))


# ---- delay line process -----------------------------------------------------------------
def _ensure_delay_line(st: dict[str, Any]) -> None:
    pid = st.get("delayline_pid")
    if pid and _alive(int(pid)):
        return
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    argv = ["ip", "netns", "exec", st["ns"]["wire"], sys.executable, "-m",
            "mptcp_bpf.lab.delayline", st["name"]]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True, env=env, cwd="/")
    assert proc.stdout is not None
    line = _readline(proc, 30)
    if line.strip() != "ready":
        proc.kill()
        proc.wait(5)
        raise HintedError(f"the delay line of lab {st['name']} did not start ({line.strip()!r})",
                          f"try `ip netns exec {st['ns']['wire']} {sys.executable} -m mptcp_bpf.lab.delayline {st['name']}`")
    proc.stdout.close()
    st["delayline_pid"] = proc.pid


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    import select
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    while time.monotonic() < deadline and not buf.endswith(b"\n"):
        r, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not r:
            break
        chunk = os.read(fd, 256)
        if not chunk:
            break
        buf += chunk
    return buf.decode(errors="replace")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"mptcp_bpf.lab.delayline" in f.read()
    except OSError:
        return False


# ---- counters ------------------------------------------------------------------------------
def stats(lab: "Lab", path: int) -> dict[str, Any]:
    """Per direction: the program's counters and the rate qdisc's (tc -s) counters."""
    import json
    st = lab.reload().state
    out: dict[str, Any] = {}
    for d in DIRS:
        entry: dict[str, Any] = {"settings": st["links"][str(path)][d]}
        if st.get("bpf"):
            with bpfmap.PinnedMaps(st["name"]) as maps:
                entry["bpf"] = maps.stats(st["ifindex"][_ingress(st, path, d)])
                entry["delay_line_returned"] = maps.stats(st["ifindex"][_tap(st, path, d)])["returned"]
        text = sh.run(["tc", "-n", st["ns"]["wire"], "-s", "-j", "qdisc", "show", "dev", _egress(st, path, d)],
                      check=False)
        try:
            qd = [q for q in json.loads(text or "[]") if q.get("root")]
        except ValueError:
            qd = []
        if qd:
            q = qd[0]
            entry["qdisc"] = {k: q.get(k) for k in ("kind", "bytes", "packets", "drops", "overlimits", "backlog")}
        out[d] = entry
    return out
