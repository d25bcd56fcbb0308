"""The stack over the fast path: one stack per device (a second one fails naming the
owner), nothing left attached or pinned by a stack that loaded the fast path itself."""

from __future__ import annotations

import subprocess
import time

import pytest

from test_interop_util import PY, kill_all, lab_for, nc_argv

pytestmark = pytest.mark.priv


def test_second_stack_on_a_device_names_the_owner():
    with lab_for("mpbs_own", paths=1) as lab:
        first = lab.popen("server", nc_argv("-l", "5000"), stdin=subprocess.PIPE,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            # the second stack must start after the first claimed the device, else the
            # second wins the claim and listens forever
            dev = lab.devices("server")[0]
            probe = ("from mptcp_bpf.datapath import loader; "
                     f"print(loader.FastPath.open_pinned().owner({dev!r}))")
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and first.poll() is None:
                own = lab.exec("server", [PY, "-c", probe], capture_output=True, text=True,
                               timeout=60)
                if own.stdout.strip() == str(first.pid):
                    break
                time.sleep(0.5)
            assert first.poll() is None, first.stderr.read().decode()
            deadline = time.monotonic() + 60
            err = ""
            while time.monotonic() < deadline:
                r = lab.exec("server", nc_argv("-l", "5001"), stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=120)
                err = r.stderr
                if r.returncode != 0 and str(first.pid) in err:
                    break
                time.sleep(0.5)
            assert r.returncode == 1, err
            assert str(first.pid) in err, f"the message should name pid {first.pid}: {err}"
            assert "hint:" in err, err
        finally:
            first.stdin.close()
            first.stdin = None
            kill_all([first])


def test_stack_that_loaded_the_fast_path_removes_it():
    with lab_for("mpbs_unl", paths=1, fast_path=()) as lab:
        code = ("from mptcp_bpf.stack import Stack, StackConfig; "
                f"s = Stack(devices={lab.devices('server')!r}); s.close()")
        r = lab.exec("server", [PY, "-c", code], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        links = lab.exec("server", ["ip", "-d", "link"], capture_output=True, text=True,
                         timeout=30).stdout
        assert "prog/xdp" not in links, links
        from mptcp_bpf.datapath import pins
        import os
        assert not os.path.exists(os.path.join(pins.pin_dir(lab.ns("server")), pins.PROG_PIN))
