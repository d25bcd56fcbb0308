"""The `mptcp-bpf` command: bpftool-style `mptcp-bpf [-j|-p] OBJECT COMMAND ...`.

Each module in `mptcp_bpf.cli.commands` registers its objects through
`register(subparsers)`; each parser sets `func(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import signal
import sys
import threading

from mptcp_bpf.errors import HintedError
from mptcp_bpf.cli import commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mptcp-bpf", description=__doc__.splitlines()[0])
    parser.add_argument("-j", "--json", action="store_true", help="print JSON")
    parser.add_argument("-p", "--pretty", action="store_true", help="print pretty JSON")
    sub = parser.add_subparsers(dest="object", metavar="OBJECT")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(sub)
    return parser


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM (kill, timeout, a test's cleanup) unwinds like Ctrl-C: the commands' finally
    blocks close their stack, which removes its fast-path entries and control socket."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    if argv is None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)   # a real command line, not a test's call
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except HintedError as exc:
        print(f"mptcp-bpf: error: {exc}", file=sys.stderr)
        if exc.hint:
            print(f"mptcp-bpf: hint: {exc.hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`| head`): stop quietly, as the coreutils do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
