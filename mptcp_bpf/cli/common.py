"""Helpers shared by the CLI commands."""

from __future__ import annotations

import argparse
import json


def emit(args: argparse.Namespace, data: object, text: str | None = None) -> None:
    """Print `data` as JSON under -j/-p, else `text` (or a plain rendering of data)."""
    if getattr(args, "json", False) or getattr(args, "pretty", False):
        print(json.dumps(data, indent=2 if args.pretty else None, default=str))
    else:
        print(text if text is not None else data)
