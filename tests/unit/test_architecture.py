"""Package layout promises: imports point one way, torch only in models, no stray top-level modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# part -> the splitserve parts it may import (DESIGN.md).
ALLOWED = {
    "core": set(),
    "orchestrator": {"core"},
    "models": {"core"},
    "edge": {"core", "orchestrator", "protos"},
    "cloud": {"core", "protos"},
    "protos": {"protos"},
}
TORCH_FREE = ["core", "edge", "cloud", "orchestrator", "protos"]
# Apps built on the parts: they may import any part, but only what it publishes.
APPS = ["cli", "benchmarks"]
# Private names apps still import, each with its reason (new ones fail the test).
KNOWN_REACH_INS: set[str] = set()


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_imports_point_one_way(part):
    bad = []
    for path in (ROOT / part).rglob("*.py"):
        for mod in _imports(path):
            if mod.startswith("splitserve."):
                target = mod.split(".")[1]
                if target != part and target not in ALLOWED[part]:
                    bad.append(f"{path.relative_to(ROOT)} imports {mod}")
            if part in TORCH_FREE and mod.split(".")[0] in {"torch", "torchvision", "compressai"}:
                bad.append(f"{path.relative_to(ROOT)} imports {mod}")
    assert not bad, "\n".join(bad)


def _imported_names(path: Path) -> set[str]:
    """Every absolute module and ``module.name`` that ``path`` imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return found


@pytest.mark.parametrize("app", APPS)
def test_apps_use_only_what_other_parts_publish(app):
    """``cli`` and ``benchmarks`` import no private module or name (``_x``) of another part."""
    bad = []
    for path in (ROOT / app).rglob("*.py"):
        for name in _imported_names(path):
            parts = name.split(".")
            private = any(p.startswith("_") and not p.startswith("__") for p in parts[2:])
            if parts[0] == "splitserve" and len(parts) > 2 and parts[1] != app and private:
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    known = {k for k in KNOWN_REACH_INS if k.startswith(f"{app}/")}
    new = sorted(set(bad) - known)
    assert not new, "\n".join(new)
    assert not known - set(bad), "a known reach-in is gone: drop it from KNOWN_REACH_INS"


@pytest.mark.parametrize("part", TORCH_FREE)
def test_torch_free_parts_do_not_load_torch(part):
    code = f"import sys, splitserve.{part}; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/")


def test_no_top_level_part_modules_are_installed():
    code = "import importlib.util as u; print([m for m in ('models','cloud','edge','core','protos') if u.find_spec(m)])"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd="/")
    assert out.stdout.strip() == "[]"
