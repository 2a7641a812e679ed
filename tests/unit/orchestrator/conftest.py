"""Shared fixtures: a crafted manifest, the example profile, a manual clock."""

from __future__ import annotations

from typing import Any

import pytest

from splitserve.core.bundle import Manifest
from splitserve.orchestrator import DeviceLatency, Profile, example_profile_path


def manifest_dict() -> dict[str, Any]:
    """A two-split manifest with local and offload, as ``splitserve export`` would write it."""

    def level(lv: int, nbytes: float, acc: float) -> dict[str, Any]:
        return {
            "level": lv,
            "tables": f"edge/s/level{lv}.json",
            "bytes_per_sample": nbytes,
            "accuracy": acc,
            "accuracy_fp32": acc + 0.001,
            "fidelity": 0.99,
        }

    def split(name: str, share: float, levels: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "name": name,
            "latent_shape": [8, 7, 7],
            "head_int8": f"edge/{name}/head.int8.onnx",
            "head_fp32": f"edge/{name}/head.fp32.onnx",
            "tail_model": f"m_tail_{name}",
            "tail_onnx": f"triton/{name}.onnx",
            "head_macs": int(share * 1e6),
            "head_mac_share": share,
            "levels": levels,
        }

    return {
        "format": "splitserve.bundle",
        "format_version": 1,
        "name": "m",
        "version": "1",
        "input": {"shape": [1, 28, 28], "dtype": "uint8"},
        "classes": [str(i) for i in range(10)],
        "total_macs": 1_000_000,
        "unsplit_accuracy": 0.92,
        "splits": [
            split("early", 0.2, [level(0, 30.0, 0.90), level(1, 50.0, 0.915)]),
            split("late", 0.7, [level(0, 12.0, 0.91)]),
        ],
        "local": {"accuracy": 0.918},
        "offload": {"bytes_per_sample": 500.0, "accuracy": 0.92},
        "files": {},
    }


@pytest.fixture
def manifest() -> Manifest:
    return Manifest.from_dict(manifest_dict())


@pytest.fixture
def device() -> DeviceLatency:
    return DeviceLatency(head_ms={"early": 10.0, "late": 40.0}, local_ms=60.0, offload_ms=1.0)


@pytest.fixture
def example() -> Profile:
    return Profile.load(example_profile_path())


class Clock:
    """A manual clock for the orchestrator (seconds)."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()
