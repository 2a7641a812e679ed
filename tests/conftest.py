"""Shared fixtures: the small test bundle every part is tested against (built once, cached)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# gRPC's fork handlers restart its worker threads in the thread that forks. The system test and the
# network lab fork children from a thread that sits in a network namespace (setns), so with fork
# support on, every later test in this process would connect from inside a deleted namespace
# ("connection refused" on 127.0.0.1). Read by grpc when it initialises: set before any import of it.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")


@pytest.fixture(scope="session")
def test_bundle() -> Path:
    """A small Fashion-MNIST bundle (2 splits x 2 levels, int8 heads, both Triton flavours).

    Built by the real toolkit (train, quantize, export) the first time, then reused from the cache
    (``$SPLITSERVE_CACHE``, default ``~/.cache/splitserve``).
    """
    import torch

    from splitserve.models.zoo import build_test_bundle

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    return build_test_bundle()
