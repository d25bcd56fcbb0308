"""Layers import only downward (docs/ARCHITECTURE.md): a module may import its own package
and packages of a lower rank, never a higher one."""

from __future__ import annotations

import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parents[2] / "mptcp_bpf"

RANKS = {
    "errors": 0, "timers": 0, "wire": 0,
    "tcp": 1, "datapath": 1, "sockopt": 1, "capture": 1, "plot": 1,
    "lab": 2, "plugins": 2,
    "pm": 3, "sched": 3, "cc": 3,
    "mptcp": 4,
    "sysctl": 5, "endpoints": 5,
    "stack": 6, "control": 6,
    "socket": 7,
    "cli": 9, "__main__": 10, "__init__": 10,
}


def layer_of(path: pathlib.Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0].removesuffix(".py")


def imported_layers(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "mptcp_bpf":
                names = [f"mptcp_bpf.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "mptcp_bpf" and len(parts) > 1:
                found.add(parts[1])
    return found


MODULES = sorted(p for p in PKG.rglob("*.py"))


def test_every_layer_has_a_rank():
    unknown = {layer_of(p) for p in MODULES} - set(RANKS)
    assert not unknown, f"add these to RANKS and docs/ARCHITECTURE.md: {sorted(unknown)}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_go_downward(path):
    own = layer_of(path)
    if own not in RANKS:
        pytest.fail(f"{own} has no rank")
    upward = {layer for layer in imported_layers(path)
              if layer != own and RANKS.get(layer, 99) >= RANKS[own] and own != "__init__"}
    assert not upward, f"{path.relative_to(PKG)} imports from layers at or above its own: {upward}"
