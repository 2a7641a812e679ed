"""Shared fixtures: the bundles every part is tested against, and the fast tier's selection.

Two bundles:

- ``tiny_bundle``: committed under ``tests/fixtures/tiny_bundle`` (written by
  ``tests/fixtures/make_tiny_bundle.py`` with the project's exporter), about 300 KB, no training, no torch.
  Its figures are real but mean nothing: tests take it where any valid bundle will do.
- ``test_bundle``: the trained Fashion-MNIST test bundle (built with torch on first use, then cached), for
  tests whose assertions need a model that has learned something.

``pytest --fast`` (``make test-fast``) runs the fast tier: the unit tests of ``core``, ``edge``, ``cloud``
and ``orchestrator`` plus the layout tests, except those that need the trained bundle or are marked
slow/triton/root/system/pip, with torch, torchvision and compressai made unimportable in the test process
and (through ``PYTHONPATH``) in every process it starts.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

# gRPC fork support off in the test process and, through the environment, in every child it starts
# (soak clients, endpoints): nothing here needs it, and with it on a soak client once died at start
# with "epoll_wait error: Bad file descriptor" (one fresh-clone CI run; cause not found). Read by grpc
# when it initialises: set before any import of it.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

TESTS = Path(__file__).resolve().parent
TINY_BUNDLE = TESTS / "fixtures" / "tiny_bundle"
NO_TORCH = TESTS / "fixtures" / "no_torch"
# What the fast tier collects (relative to tests/).
FAST_TIER = (
    "unit/core",
    "unit/edge",
    "unit/cloud",
    "unit/orchestrator",
    "unit/test_architecture.py",
    "unit/test_packaging.py",
    "unit/test_cli_extras.py",
)
# Marks that take a test out of the fast tier (besides needing the trained bundle).
NOT_FAST = ("slow", "triton", "root", "system", "pip")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fast",
        action="store_true",
        help="the fast torch-free tier (make test-fast): unit tests of core, edge, cloud, orchestrator on the "
        "committed tiny bundle, with torch unimportable",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "pip: installs packages with pip (a package index, minutes)")
    if not config.getoption("--fast"):
        return
    loaded = sorted(n for n in ("torch", "torchvision", "compressai") if sys.modules.get(n) is not None)
    if loaded:
        raise pytest.UsageError(f"--fast runs torch-free, but {loaded} were imported before the tests started")
    # Children (endpoints, decode workers, the CLI) block torch from their start through sitecustomize;
    # this process from now on, through the same finder.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(NO_TORCH), os.environ.get("PYTHONPATH")]))
    if not any(type(f).__name__ == "_Blocker" for f in sys.meta_path):
        spec = importlib.util.spec_from_file_location("splitserve_tests_no_torch", NO_TORCH / "sitecustomize.py")
        assert spec is not None and spec.loader is not None
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if not config.getoption("--fast"):
        return None
    try:
        rel = collection_path.resolve().relative_to(TESTS)
    except ValueError:
        return None
    parts = rel.parts
    for fast in FAST_TIER:
        want = Path(fast).parts
        if parts[: len(want)] == want or want[: len(parts)] == parts:  # inside it, or a folder above it
            return None
    return True


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--fast"):
        return
    keep, drop = [], []
    for item in items:
        needs_training = "test_bundle" in getattr(item, "fixturenames", ())
        marked = any(item.get_closest_marker(name) for name in NOT_FAST)
        (drop if needs_training or marked else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The committed tiny Fashion-MNIST bundle (2 splits x 2 levels, int8 heads, both Triton flavours).

    A copy per session, so that no test can write into the committed files. Made by
    ``tests/fixtures/make_tiny_bundle.py`` (see ``tests/fixtures/tiny_bundle.README.json``): a briefly
    trained 3-layer net whose accuracy and byte figures are measured but mean nothing.
    """
    from splitserve.core.bundle import Bundle
    from splitserve.core.errors import SplitServeError

    dst = tmp_path_factory.mktemp("tiny") / "fmnist_tiny"
    shutil.copytree(TINY_BUNDLE, dst)
    try:  # every hash checked: a stale fixture fails here, once, with the way out
        Bundle.open(dst).close()
    except SplitServeError as exc:
        pytest.fail(
            f"the committed tiny bundle no longer opens ({exc}); when the bundle format, the codec or "
            "core/triton_python_model.py changes, rewrite it: .venv/bin/python tests/fixtures/make_tiny_bundle.py"
        )
    return dst


@pytest.fixture(scope="session")
def test_bundle() -> Path:
    """A small trained Fashion-MNIST bundle (2 splits x 2 levels, int8 heads, both Triton flavours).

    Built by the real toolkit (train, quantize, export) the first time, then reused from the cache
    (``$SPLITSERVE_CACHE``, default ``~/.cache/splitserve``). Needs torch: tests that only need *a* valid
    bundle take ``tiny_bundle``.
    """
    import torch

    from splitserve.models.zoo import build_test_bundle

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    return build_test_bundle()
