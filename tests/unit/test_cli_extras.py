"""The CLI on a partial install: a missing extra is one line naming it, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

_BLOCKING = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Block())
from splitserve.cli.main import cli
cli()
"""


def _cli(blocked: set[str], *args: str) -> subprocess.CompletedProcess:
    code = _BLOCKING.format(blocked=blocked)
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


def test_an_edge_only_install_lists_every_command_and_names_the_cloud_extra():
    blocked = {"prometheus_client", "tritonclient", "torch"}
    res = _cli(blocked, "--help")
    assert res.returncode == 0 and "edge" in res.stdout and "cloud" in res.stdout
    res = _cli(blocked, "cloud", "serve", "--bundle", "x")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip() == (
        "error: this command needs the [cloud] extra (missing module 'prometheus_client'): "
        "pip install 'splitserve[cloud]'"
    )


@pytest.mark.parametrize(("args", "extra"), [(["recipes"], "train"), (["train", "natural"], "train")])
def test_commands_that_need_torch_name_the_train_extra(args, extra):
    res = _cli({"torch"}, *args)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"needs the [{extra}] extra (missing module 'torch')" in res.stderr
