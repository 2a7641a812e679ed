"""Shared fixtures: the small test bundle every part is tested against (built once, cached)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# gRPC fork support off in the test process and, through the environment, in every child it starts
# (soak clients, endpoints): nothing here needs it, and with it on a soak client once died at start
# with "epoll_wait error: Bad file descriptor" (one fresh-clone CI run; cause not found). Read by grpc
# when it initialises: set before any import of it.
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
