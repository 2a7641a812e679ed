"""The package's public surface and its dependency rule (numpy and splitserve.core only)."""

from __future__ import annotations

import subprocess
import sys

import splitserve.orchestrator as orch


def test_all_lists_exactly_the_public_names() -> None:
    public = {n for n in vars(orch) if not n.startswith("_")} - {"annotations"}
    modules = {n for n, v in vars(orch).items() if type(v).__name__ == "module"}
    assert set(orch.__all__) == public - modules


def test_imports_no_torch_grpc_edge_or_cloud() -> None:
    code = (
        "import sys, splitserve.orchestrator, splitserve.orchestrator.simulate;"
        "bad=[m for m in ('torch','grpc','splitserve.edge','splitserve.cloud','splitserve.models','matplotlib')"
        " if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
