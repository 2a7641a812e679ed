"""What the package says it supports is what it is tested on."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_supported_pythons_are_declared_consistently():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"].startswith(">=3.11,<3.13")
    versions = {c.rsplit(" :: ", 1)[1] for c in project["classifiers"] if c.startswith("Programming Language :: Python :: 3.")}
    assert versions == {"3.11", "3.12"}
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in versions  # this test run is one of them
    assert "Python 3.11 or 3.12" in (ROOT / "README.md").read_text()


def test_every_part_apps_import_ships_py_typed():
    """PEP 561: the parts an app imports say they are typed (the marker in the tree and in the wheel)."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for part in ("core", "edge", "cloud", "orchestrator", "protos"):
        assert (ROOT / part / "py.typed").is_file(), part
        assert "py.typed" in setuptools["package-data"][f"splitserve.{part}"], part
    assert "*.pyi" in setuptools["package-data"]["splitserve.core"]  # the C codec's stub, core/_rans.pyi
