"""Registries of plug-ins by kind ("pm", "sched", "cc") and name, with run-time parameters.

Built-in plug-ins register themselves when their package is imported; third-party ones
are found through the `mptcp_bpf.plugins` entry-point group (value: a module to import).
Parameters are the equivalent of /sys/module/mptcp_*/parameters: per plug-in, typed by
their default value, readable and settable while the stack runs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable

from mptcp_bpf.errors import HintedError

KINDS = ("pm", "sched", "cc")
_BUILTIN_MODULES = {"pm": "mptcp_bpf.pm", "sched": "mptcp_bpf.sched", "cc": "mptcp_bpf.cc"}


@dataclass
class Plugin:
    kind: str
    name: str
    factory: Callable[..., Any]
    params: dict[str, Any] = field(default_factory=dict)
    doc: str = ""


_registry: dict[str, dict[str, Plugin]] = {k: {} for k in KINDS}
_loaded = False


def register(kind: str, name: str, factory: Callable[..., Any],
             params: dict[str, Any] | None = None, doc: str = "") -> Plugin:
    """Register `factory` as plug-in `name` of `kind`; names are at most 15 characters."""
    if kind not in KINDS:
        raise ValueError(f"unknown plug-in kind {kind!r}; kinds are {', '.join(KINDS)}")
    if not name or len(name) > 15:
        raise ValueError(f"plug-in name {name!r} must have 1 to 15 characters")
    plugin = Plugin(kind, name, factory, dict(params or {}), doc or (factory.__doc__ or "").strip())
    _registry[kind][name] = plugin
    return plugin


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _BUILTIN_MODULES.values():
        importlib.import_module(module)
    for ep in entry_points(group="mptcp_bpf.plugins"):
        importlib.import_module(ep.value)


def names(kind: str) -> list[str]:
    _load_all()
    return sorted(_registry[kind])


def get(kind: str, name: str) -> Plugin:
    _load_all()
    try:
        return _registry[kind][name]
    except KeyError:
        raise HintedError(f"no {kind} plug-in named {name!r}",
                          f"choose one of: {', '.join(names(kind))}") from None


def create(kind: str, name: str, *args: Any, **kwargs: Any) -> Any:
    """Instantiate plug-in `name`, passing its current parameters as `params=`."""
    plugin = get(kind, name)
    return plugin.factory(*args, params=dict(plugin.params), **kwargs)


def set_param(kind: str, name: str, param: str, value: str | Any) -> Any:
    """Set a parameter, converting strings to the type of its default; returns the value."""
    plugin = get(kind, name)
    if param not in plugin.params:
        known = ", ".join(sorted(plugin.params)) or "none"
        raise HintedError(f"{kind} plug-in {name!r} has no parameter {param!r}",
                          f"its parameters are: {known}")
    old = plugin.params[param]
    if isinstance(value, str) and not isinstance(old, str):
        if isinstance(old, bool):
            if value.lower() not in ("0", "1", "true", "false", "yes", "no"):
                raise HintedError(f"{name}.{param} takes a boolean, not {value!r}", "use 0 or 1")
            value = value.lower() in ("1", "true", "yes")
        else:
            try:
                value = type(old)(value)
            except ValueError:
                raise HintedError(f"{name}.{param} takes a {type(old).__name__}, not {value!r}",
                                  f"for example {name}.{param}={old}") from None
    plugin.params[param] = value
    return value
