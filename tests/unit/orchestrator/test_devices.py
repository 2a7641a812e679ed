"""Device classes: published figures, the slowdown they give, clear errors."""

from __future__ import annotations

import pytest

from splitserve.core.errors import ConfigError
from splitserve.orchestrator import DEVICE_CLASSES, device_class


def test_every_class_cites_a_source_and_a_network() -> None:
    for d in DEVICE_CLASSES.values():
        assert d.published_ms > 0 and d.network and len(d.source) > 20
        assert d.compare_with in ("int8", "fp32")


def test_slowdown_is_the_published_time_over_this_machines_and_never_below_one() -> None:
    pixel = device_class("pixel4-cpu")
    assert pixel.slowdown(3.25) == pytest.approx(2.0)
    assert pixel.slowdown(100.0) == 1.0
    assert device_class("raspberry-pi-4").compare_with == "int8"  # unstated: what the client runs here


def test_unknown_class_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="pixel4-cpu"):
        device_class("toaster")
