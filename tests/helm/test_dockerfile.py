"""cloud/Dockerfile and .dockerignore, read as text: no docker engine is needed (or available) here.

The image must run as the fixed non-root UID the chart's securityContext names, install only the
torch-free ``[cloud]`` extra, start ``splitserve cloud serve`` on the chart's ports, and build from a
context that still holds every package folder.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "cloud" / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
TORCH_PACKAGES = ("torch", "torchvision", "compressai", "nvidia-pytriton")


@dataclass
class Stage:
    """One build stage: its base image and its instructions as ``(KEYWORD, arguments)``."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args_of(self, keyword: str) -> list[str]:
        """The arguments of every ``keyword`` instruction of the stage, in order."""
        return [arguments for kw, arguments in self.instructions if kw == keyword]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Split a Dockerfile into global ARG defaults and stages.

    Comment lines are dropped and backslash continuations joined, as BuildKit does.

    Args:
        text: the Dockerfile.

    Returns:
        The ARG defaults declared before the first FROM, and the stages in order.
    """
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = arguments.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif stages:
            stages[-1].instructions.append((keyword, arguments.strip()))
        elif keyword == "ARG":
            key, _, default = arguments.partition("=")
            global_args[key.strip()] = default.strip()
    return global_args, stages


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    """The parsed cloud/Dockerfile."""
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    """The parsed pyproject.toml."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    parsed: dict[str, Any] = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    return parsed


@pytest.fixture(scope="module")
def chart_values() -> dict[str, Any]:
    """The chart's default values."""
    values: dict[str, Any] = yaml.safe_load((REPO_ROOT / "helm" / "splitserve" / "values.yaml").read_text())
    return values


def test_every_stage_uses_python_311_slim(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    global_args, stages = dockerfile
    assert len(stages) >= 2, "a build stage and a runtime stage"
    for stage in stages:
        base = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], stage.base)
        assert re.fullmatch(r"python:3\.11-slim(-\w+)?", base), base


def test_runtime_runs_as_the_charts_non_root_uid(
    dockerfile: tuple[dict[str, str], list[Stage]], chart_values: dict[str, Any]
) -> None:
    runtime = dockerfile[1][-1]
    users = runtime.args_of("USER")
    assert users, "the runtime stage must set USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) > 0, "a numeric UID lets Kubernetes verify runAsNonRoot"
    assert gid.isdigit() and int(gid) > 0
    assert runtime.instructions.index(("USER", users[-1])) > max(
        i for i, (kw, _) in enumerate(runtime.instructions) if kw in {"RUN", "COPY"}
    ), "nothing may run or be copied after dropping to the user it would need root for"
    assert int(uid) == chart_values["endpoint"]["podSecurityContext"]["runAsUser"]
    assert int(gid) == chart_values["endpoint"]["podSecurityContext"]["runAsGroup"]


def test_only_the_torch_free_extra_is_installed(
    dockerfile: tuple[dict[str, str], list[Stage]], pyproject: dict[str, Any]
) -> None:
    runs = [arguments for stage in dockerfile[1] for arguments in stage.args_of("RUN")]
    installs = [shlex.split(run) for run in runs if "pip install" in run]
    assert installs, "the image installs the package with pip"
    for words in installs:
        targets = [
            w
            for w in words[words.index("install") + 1 :]
            if not w.startswith("-") and w != "requirements.lock"
        ]
        assert targets == [".[cloud]"], f"installs {targets}, expected only the [cloud] extra"
    guards = [run for run in runs if "find_spec('torch')" in run]
    assert guards, "the build must fail when a dependency pulls torch in"

    cloud_extra = pyproject["project"]["optional-dependencies"]["cloud"]
    names = {re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].lower() for requirement in cloud_extra}
    assert not names & set(TORCH_PACKAGES), f"the [cloud] extra depends on {names & set(TORCH_PACKAGES)}"


def test_entrypoint_and_ports_match_the_chart(
    dockerfile: tuple[dict[str, str], list[Stage]], chart_values: dict[str, Any]
) -> None:
    runtime = dockerfile[1][-1]
    assert json.loads(runtime.args_of("ENTRYPOINT")[-1]) == ["splitserve", "cloud", "serve"]
    exposed = {
        int(port.split("/")[0]) for arguments in runtime.args_of("EXPOSE") for port in arguments.split()
    }
    assert exposed == set(chart_values["endpoint"]["ports"].values())


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether ``.dockerignore`` patterns keep ``path`` (or a folder above it) out of the context.

    Supports the forms the file uses: plain paths and globs from the context root, and ``**/``
    prefixes that match at any depth.

    Args:
        path: a path relative to the context root, with ``/`` separators.
        patterns: the file's patterns.

    Returns:
        True when the path is excluded.
    """
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    for pattern in patterns:
        if pattern.startswith("**/"):
            tail = pattern[3:]
            if any(fnmatch.fnmatchcase(part, tail) for part in parts):
                return True
        elif any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            return True
    return False


def test_build_context_keeps_the_sources_and_drops_the_rest(pyproject: dict[str, Any]) -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not [p for p in patterns if p.startswith("!")], "ignored() does not implement exceptions"
    needed = ["pyproject.toml", "README.md", "requirements.lock", "cloud/Dockerfile"]
    needed += [f"{folder}/__init__.py" for folder in pyproject["tool"]["setuptools"]["package-dir"].values()]
    assert [p for p in needed if ignored(p, patterns)] == []
    for heavy in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/helm/test_dockerfile.py",
        "results/x.json",
        "core/__pycache__/a.pyc",
    ):
        assert ignored(heavy, patterns), heavy
