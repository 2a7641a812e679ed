"""``splitserve edge run`` on images, folders, .npy and raw frames (local policy: no endpoint needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from splitserve.edge import EdgeClient
from splitserve.edge.cli import edge


@pytest.fixture
def inputs(tmp_path: Path, images: np.ndarray) -> Path:
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(images[i, 0]).save(tmp_path / "imgs" / f"{i}.png")
    Image.fromarray(images[3, 0]).save(tmp_path / "imgs" / "sub" / "3.jpg", quality=100)
    (tmp_path / "imgs" / "notes.txt").write_text("skipped inside folders")
    np.save(tmp_path / "batch.npy", images[4:7])
    np.save(tmp_path / "one.npy", images[7, 0])
    images[8:10].tofile(tmp_path / "frames.raw")
    return tmp_path


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(edge, ["run", *args], catch_exceptions=False)
    return result.exit_code, result.output


def test_table_for_every_kind_of_input(bundle_path: Path, inputs: Path, images: np.ndarray) -> None:
    code, out = _run(
        "--bundle",
        str(bundle_path),
        "--policy",
        "local",
        "--no-progress",
        str(inputs / "imgs"),
        str(inputs / "batch.npy"),
        str(inputs / "one.npy"),
        str(inputs / "frames.raw"),
    )
    assert code == 0, out
    lines = out.splitlines()
    rows = [line for line in lines[2:] if line[:5].strip().isdigit()]
    assert len(rows) == 10
    assert "batch.npy[2]" in out and "frames.raw[1]" in out and "one.npy" in out and "3.jpg" in out
    with EdgeClient(bundle_path, policy="local") as c:
        expected = c.infer(images[5]).label
    assert expected in rows[5]
    assert lines[-1].startswith("10 inputs: split 0, offload 0, local 10 (0 fallbacks)")


def test_jsonl_and_limit(bundle_path: Path, inputs: Path) -> None:
    code, out = _run(
        "--bundle",
        str(bundle_path),
        "--policy",
        "local",
        "--no-progress",
        "--format",
        "jsonl",
        "--limit",
        "2",
        "--unary",
        str(inputs / "batch.npy"),
    )
    assert code == 0, out
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["input"] for r in rows] == [f"{inputs / 'batch.npy'}[{i}]" for i in range(2)]
    assert rows[0]["computed"] == "local" and rows[0]["timings"]["local_ms"] > 0


def test_progress_bar_goes_to_stderr(bundle_path: Path, inputs: Path) -> None:
    result = CliRunner().invoke(
        edge, ["run", "--bundle", str(bundle_path), "--policy", "local", str(inputs / "batch.npy")]
    )
    assert result.exit_code == 0
    assert "3/3" in result.stderr and "3/3" not in result.stdout


@pytest.mark.parametrize(
    ("setup", "match"),
    [
        (lambda d: (d / "x.txt").write_text("hi"), "not an image"),
        (lambda d: (d / "x.raw").write_bytes(b"\0" * 100), "whole number"),
        (lambda d: np.save(d / "x.npy", np.zeros((2, 28, 28), np.float32)), "uint8"),
        (lambda d: np.save(d / "x.npy", np.zeros((5, 5), np.uint8)), "holds no frames"),
    ],
)
def test_bad_inputs_are_usage_errors(bundle_path: Path, tmp_path: Path, setup, match: str) -> None:  # noqa: ANN001
    setup(tmp_path)
    (path,) = tmp_path.iterdir()
    code, out = _run("--bundle", str(bundle_path), "--policy", "local", str(path))
    assert code == 2 and match in out


def test_empty_folder_and_bad_policy(bundle_path: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, out = _run("--bundle", str(bundle_path), "--policy", "local", str(tmp_path / "empty"))
    assert code == 2 and "no input found" in out
    np.save(tmp_path / "a.npy", np.zeros((28, 28), np.uint8))
    code, out = _run("--bundle", str(bundle_path), "--policy", "fastest", str(tmp_path / "a.npy"))
    assert code == 2 and "unknown policy" in out
    code, out = _run("--bundle", str(bundle_path), "--timeout-s", "0", str(tmp_path / "a.npy"))
    assert code == 2 and "timeout_s" in out
