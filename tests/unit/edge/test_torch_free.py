"""``splitserve[edge]`` never needs torch: not to install, not to import, not to run.

Three proofs, cheapest first:

1. a fresh interpreter imports ``splitserve.edge`` and runs every kind of request (local, split, offload,
   the orchestrator, a real gRPC channel that falls back) without ``torch`` (or pillow, for arrays)
   entering ``sys.modules``;
2. pip resolves ``.[edge]`` from scratch (``--dry-run --ignore-installed``) without torch;
3. a brand-new virtual environment gets ``pip install .[edge]``, runs the same requests, and its
   installed size is measured (target: at most 200 MiB, pip and setuptools of the venv itself excluded).

Proofs 2 and 3 install from a copy of the source tree, so the checkout is never written to; they need a
package index and minutes (marked ``pip``, outside the fast tier). The packaging error proof 3 exists to
catch, a subpackage that ``pyproject.toml`` does not list (the wheel installs without it and the first
import fails on the device), is also checked statically, in milliseconds: that test fails, never skips.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[3]
FORBIDDEN = {"torch", "torchvision", "compressai", "triton", "nvidia-pytriton", "tritonclient"}
SIZE_LIMIT_MIB = 200.0

RUN_EVERY_KIND = r"""
import json, sys
import numpy as np
import splitserve.edge as edge
from splitserve.core.bundle import Bundle
from splitserve.protos.v1 import inference_pb2 as pb

bundle = Bundle.open(sys.argv[1])
m = bundle.manifest
x = np.random.default_rng(0).integers(0, 256, m.input_shape, dtype=np.uint8)

def handler(request):
    if isinstance(request, pb.ListModelsRequest):
        return pb.ListModelsResponse()
    return pb.InferResponse(request_id=request.request_id, classes=[1, 0], scores=[0.7, 0.2])

kinds = []
policies = ["local", "offload", "min_latency"] + [f"{s.name}@{lv.level}" for s in m.splits for lv in s.levels]
for policy in policies:
    with edge.EdgeClient(bundle, transport=edge.MockTransport(handler), policy=policy) as c:
        kinds.append(c.infer(x).computed)
        kinds += [r.computed for r in c.stream([x, x, x])]
config = edge.EdgeConfig(timeout_s=2.0, retry_backoff_s=0.001, retry_max_backoff_s=0.002)
with edge.EdgeClient(bundle, "127.0.0.1:1", policy=f"{m.splits[0].name}@0", config=config) as c:
    kinds += [r.computed + ("+fallback" if r.fallback_reason else "") for r in c.stream([x, x])]
bad = [name for name in ("torch", "torchvision", "compressai", "PIL") if name in sys.modules]
print(json.dumps({"kinds": sorted(set(kinds)), "bad": bad}))
"""


def _run_every_kind(python: str, bundle_path: Path) -> dict:
    out = subprocess.run(
        [python, "-c", RUN_EVERY_KIND, str(bundle_path)], capture_output=True, text=True, timeout=300, cwd="/"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _source_copy(dest: Path) -> Path:
    """The project as pip sees it (pyproject, README, the part folders), without caches or build output."""
    dest.mkdir()
    shutil.copy(ROOT / "pyproject.toml", dest)
    if (ROOT / "README.md").exists():
        shutil.copy(ROOT / "README.md", dest)
    package_dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for folder in sorted(set(package_dirs.values())):
        shutil.copytree(ROOT / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so"))
    return dest


def _quiet_pip_env() -> dict[str, str]:
    return {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}


def test_edge_runs_without_importing_torch(bundle_path: Path) -> None:
    got = _run_every_kind(sys.executable, bundle_path)
    assert got["bad"] == []
    assert got["kinds"] == ["local", "local+fallback", "offload", "split"]


@pytest.mark.pip
def test_edge_extra_resolves_without_torch(tmp_path: Path) -> None:
    src = _source_copy(tmp_path / "src")
    report = tmp_path / "report.json"
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--dry-run",
        "--ignore-installed",
        "--no-build-isolation",
        "--quiet",
        "--report",
        str(report),
        f"{src}[edge]",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=_quiet_pip_env())
    assert out.returncode == 0, out.stderr[-3000:]
    names = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert not names & FORBIDDEN and not any(n.startswith("nvidia-") for n in names), sorted(names)
    assert {"onnxruntime", "numpy", "grpcio", "protobuf", "splitserve"} <= names, sorted(names)


def unlisted_packages(pyproject: dict[str, Any], root: Path) -> list[str]:
    """Packages under the part folders (every folder with an ``__init__.py``) that ``[tool.setuptools]
    packages`` leaves out: a wheel built from ``pyproject`` would install without them."""
    setuptools = pyproject["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    found = [
        ".".join([package, *init.parent.relative_to(root / folder).parts])
        for package, folder in setuptools["package-dir"].items()
        for init in (root / folder).rglob("__init__.py")
    ]
    return sorted(name for name in found if name not in listed)


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_pyproject_lists_every_subpackage_a_wheel_must_ship() -> None:
    missing = unlisted_packages(_pyproject(), ROOT)
    assert not missing, f"pyproject.toml [tool.setuptools] packages misses {missing}: a wheel would install without them"


def test_the_packaging_check_finds_a_subpackage_left_out() -> None:
    """The check above is not vacuous: with ``splitserve.edge._transports`` dropped from the list it names it."""
    pyproject = _pyproject()
    packages = pyproject["tool"]["setuptools"]["packages"]
    assert "splitserve.edge._transports" in packages and (ROOT / "edge/_transports/__init__.py").is_file()
    pyproject["tool"]["setuptools"]["packages"] = [p for p in packages if p != "splitserve.edge._transports"]
    assert unlisted_packages(pyproject, ROOT) == ["splitserve.edge._transports"]


@pytest.mark.pip
def test_fresh_venv_with_only_the_edge_extra(tmp_path: Path, bundle_path: Path) -> None:
    missing = unlisted_packages(_pyproject(), ROOT)
    assert not missing, f"pyproject.toml [tool.setuptools] packages misses {missing}: a wheel would install without them"
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    src = _source_copy(tmp_path / "src")
    out = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", f"{src}[edge]"],
        capture_output=True,
        text=True,
        timeout=900,
        env=_quiet_pip_env(),
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    sizes = json.loads(
        subprocess.run([python, "-c", _SIZES], capture_output=True, text=True, check=True, cwd="/").stdout
    )
    assert not {n.lower() for n in sizes} & FORBIDDEN, sorted(sizes)
    got = _run_every_kind(python, bundle_path)
    assert got["bad"] == [] and "split" in got["kinds"]
    total_mib = sum(size for name, size in sizes.items() if name.lower() not in {"pip", "setuptools"})
    print(f"[edge] installed size: {total_mib:.1f} MiB ({total_mib * 1.048576:.1f} MB):", json.dumps(sizes))
    assert total_mib <= SIZE_LIMIT_MIB


_SIZES = r"""
import importlib.metadata as md, json, os
sizes = {}
for d in md.distributions():
    files = [d.locate_file(f) for f in d.files or []]
    sizes[d.metadata["Name"]] = round(sum(os.path.getsize(f) for f in files if os.path.isfile(f)) / 2**20, 2)
print(json.dumps(sizes))
"""
