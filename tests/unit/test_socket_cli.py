"""`mptcp-bpf nc` and `mptcp-bpf perf`: argument handling and clear errors (no root), and
perf end to end in-process over two stacks joined by socketpairs (its -J report)."""

from __future__ import annotations

import io
import json
import threading
import time

import pytest

from mptcp_bpf.cli.main import build_parser, main
from mptcp_bpf.errors import HintedError

pytest.importorskip("mptcp_bpf.mptcp.host")


def run_cli(argv, capsys):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("argv,needle", [
    (["nc"], "need HOST and PORT"),
    (["nc", "10.0.0.1"], "need HOST and PORT"),
    (["nc", "10.0.0.1", "http"], "bad port"),
    (["nc", "10.0.0.1", "70000"], "out of range"),
    (["nc", "-l", "1", "2"], "too many arguments"),
    (["perf", "-c", "10.0.0.1", "-n", "12Q"], "bad byte count"),
    (["perf", "-c", "10.0.0.1", "--scheduler", "nonesuch"], "no such plug-in"),
    (["perf", "-c", "10.0.0.1", "--set", "nodots=1"], "bad --set"),
    (["perf", "-c", "10.0.0.1", "--set", "nonesuch.x=1"], "no plug-in named"),
    (["perf", "-c", "10.0.0.1", "--set", "ndiffports.nonesuch=1"], "has no parameter"),
])
def test_user_mistakes_are_explained(argv, needle, capsys):
    rc, out, err = run_cli(argv, capsys)
    assert rc == 1
    assert needle in err and "hint:" in err, err


def test_perf_requires_a_mode(capsys):
    with pytest.raises(SystemExit) as ei:
        main(["perf"])
    assert ei.value.code == 2


def test_set_changes_plugin_params():
    from mptcp_bpf import plugins
    from mptcp_bpf.cli.commands.nc import apply_sets
    old = plugins.get("pm", "ndiffports").params["num_subflows"]
    try:
        apply_sets(["ndiffports.num_subflows=3"])
        assert plugins.get("pm", "ndiffports").params["num_subflows"] == 3
        apply_sets(["pm.ndiffports.num_subflows=4"])
        assert plugins.get("pm", "ndiffports").params["num_subflows"] == 4
        with pytest.raises(HintedError):
            apply_sets(["ndiffports.num_subflows=many"])
    finally:
        plugins.set_param("pm", "ndiffports", "num_subflows", old)


def test_perf_in_process_json(capsys):
    """perf -s -1 and perf -c -n 1M -J over two in-process stacks: the -J report has the
    interval/subflow format that `mptcp-bpf plot` reads, and the byte count is exact."""
    from test_socket_stack import SRV, Net, cfg
    net = Net(cfg(), cfg())
    try:
        parser = build_parser()
        sargs = parser.parse_args(["perf", "-s", "-1", "-q", "-p", "7500"])
        sargs._stack = net.srv
        rcs = {}
        t = threading.Thread(target=lambda: rcs.setdefault("srv", sargs.func(sargs)), daemon=True)
        t.start()
        deadline = time.monotonic() + 30      # the server thread must listen before we connect
        while not any(k[1] == 7500 for k in net.srv.host.listeners) and time.monotonic() < deadline:
            time.sleep(0.01)
        cargs = parser.parse_args(["perf", "-c", SRV[0], "-p", "7500", "-n", "1M", "-J",
                                   "-i", "0.2"])
        cargs._stack = net.cli
        rc = cargs.func(cargs)
        t.join(60)
        out = capsys.readouterr().out
        assert rc == 0 and rcs.get("srv") == 0, out
        report = json.loads(out.strip().splitlines()[-1])
        assert report["end"]["bytes"] == 1 << 20
        assert report["end"]["version"] == 1 and report["end"]["fallback"] is False
        assert report["intervals"], "no intervals"
        iv = report["intervals"][-1]
        assert {"t", "bytes", "subflows"} <= set(iv)
        for sf in iv["subflows"]:
            assert {"id", "bytes", "rtt_ms", "cwnd"} <= set(sf)
        total = sum(sf["bytes"] for i in report["intervals"] for sf in i["subflows"])
        assert total >= 1 << 20, "per-subflow bytes do not add up to the transfer"
    finally:
        net.close()


def test_nc_pump_half_close(monkeypatch):
    """nc's pump: stdin to the connection, half-close at EOF, connection to stdout; exit 0."""
    from mptcp_bpf.cli.commands import nc

    class FakeSock:
        def __init__(self):
            self.sent = bytearray()
            self.shut = False
            self.incoming = [b"hello ", b"world", b""]
            self.connection = None

        def sendall(self, data):
            self.sent += data

        def shutdown(self, how):
            self.shut = True

        def recv(self, n):
            return self.incoming.pop(0)

        def close(self):
            pass

    class Std:
        def __init__(self, data=b""):
            self.buffer = io.BytesIO(data)

    sock = FakeSock()
    monkeypatch.setattr(nc.sys, "stdin", Std(b"x" * 100000))
    out = Std()
    monkeypatch.setattr(nc.sys, "stdout", out)
    assert nc.pump(sock) == 0
    assert out.buffer.getvalue() == b"hello world"
    assert bytes(sock.sent) == b"x" * 100000 and sock.shut


def test_sigterm_runs_the_commands_cleanup():
    """`kill` of a running command unwinds it (exit 143) so its finally blocks close the
    stack: fast-path entries and the control socket do not outlive the process."""
    import signal
    import subprocess
    import sys
    code = (
        "import argparse, sys, time\n"
        "from mptcp_bpf.cli import main as m\n"
        "def func(a):\n"
        "    try:\n"
        "        print('ready', flush=True); time.sleep(60)\n"
        "    finally:\n"
        "        print('cleaned up', flush=True)\n"
        "class P:\n"
        "    def parse_args(self, argv): return argparse.Namespace(func=func)\n"
        "m.build_parser = lambda: P()\n"
        "sys.exit(m.main())\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert out.strip() == "cleaned up" and p.returncode == 128 + signal.SIGTERM
