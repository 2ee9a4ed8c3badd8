"""The code base's structural rules (docs/architecture.md), checked on the source itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"train": "sdm.train", "export": "sdm.export", "neuromorphic": "sdm.neuromorphic", "energy": "sdm.energy",
            "sdm": "sdm"}
MAX_FUNCTION_LINES = 80


def _modules(folder: str):
    return sorted(p for p in (ROOT / folder).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports, relative imports resolved within its package."""
    tree = ast.parse(path.read_text())
    folder = path.relative_to(ROOT).parts[0]
    package = PACKAGES[folder].split(".") + list(path.relative_to(ROOT / folder).parts[:-1])
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                out.add(".".join(base + ([node.module] if node.module else [])))
            else:
                out.add(node.module)
    return out


def _stage(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "sdm" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in ("train", "export", "neuromorphic", "energy") else None


@pytest.mark.parametrize("folder,forbidden", [
    ("train", {"export", "neuromorphic", "energy"}),
    ("energy", {"neuromorphic"}),
    ("neuromorphic", {"energy"}),
])
def test_stage_imports(folder, forbidden):
    bad = [f"{p.relative_to(ROOT)} imports {m}" for p in _modules(folder) for m in _imports(p)
           if _stage(m) in forbidden]
    assert not bad, bad


def test_no_lava_outside_neuromorphic():
    bad = [f"{p.relative_to(ROOT)} imports {m}" for folder in ("train", "export", "energy") for p in _modules(folder)
           for m in _imports(p) if m.split(".")[0] == "lava"]
    assert not bad, bad


def test_functions_fit_a_screen():
    long = []
    for folder in PACKAGES:
        for p in _modules(folder):
            for node in ast.walk(ast.parse(p.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = node.end_lineno - node.lineno + 1
                    if n > MAX_FUNCTION_LINES:
                        long.append(f"{p.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, long
