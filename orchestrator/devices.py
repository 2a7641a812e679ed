"""Device classes from published measurements: how much slower than this machine a real device runs a network.

A workstation stands in for a device by padding its on-device work (``EdgeConfig.device_slowdown``) to
``published_ms / this machine's time for the same network``: the factor comes from a measurement of
that network on that device, never a free parameter. A figure for fp32 is divided by this machine's
fp32 time; an int8 figure, or one whose precision the source does not state, by this machine's int8
time (what the edge client runs here): the device then runs the whole network in the published time,
and every part of it (heads, coding) that many times slower than here. That the device's parts keep
the proportions they have on this CPU is an assumption the published figures cannot check.
"""

from __future__ import annotations

from dataclasses import dataclass

from splitserve.core.errors import ConfigError

__all__ = ["DEVICE_CLASSES", "DeviceClass", "device_class"]


@dataclass(frozen=True)
class DeviceClass:
    """One device class: a published latency of ``network`` on it, and where it was published.

    Attributes:
        name: short name (``--device`` in the CLI).
        description: the device and how it was measured.
        network: registry name of the network the figure is for.
        published_ms: the published latency at batch 1.
        precision: the precision the source measured (``int8``, ``fp32``), or ``unstated``.
        source: where the figure was published.
    """

    name: str
    description: str
    network: str
    published_ms: float
    precision: str
    source: str

    @property
    def compare_with(self) -> str:
        """The precision of this machine's time that the published figure is divided by."""
        return "fp32" if self.precision == "fp32" else "int8"

    def slowdown(self, here_ms: float) -> float:
        """How many times slower than ``here_ms`` (this machine, same network and precision) the device is;
        at least 1: a device faster than this machine cannot be emulated by padding."""
        return max(1.0, self.published_ms / here_ms)


DEVICE_CLASSES: dict[str, DeviceClass] = {
    d.name: d
    for d in (
        DeviceClass(
            "pixel4-cpu", "Pixel 4 phone CPU, TFLite, 4 threads", "efficientnet_lite0", 6.5, "int8",
            "tensorflow/tpu, models/official/efficientnet/lite/README.md: Pixel 4 CPU, batch 1, 4 threads, "
            "EfficientNet-Lite0 INT8 6.5 ms (FP32 12 ms)",
        ),
        DeviceClass(
            "raspberry-pi-4", "Raspberry Pi 4 CPU, TFLite", "efficientnet_lite0", 49.0, "unstated",
            "TildAlice, 'MobileNet vs EfficientNet-Lite: Pi 4 First Model 38ms Gap' (dev.to / tildalice.io): "
            "EfficientNet-Lite0 49 ms on the Pi 4 CPU with TFLite",
        ),
    )
}


def device_class(name: str) -> DeviceClass:
    """The device class called ``name``.

    Raises:
        ConfigError: no such device class.
    """
    try:
        return DEVICE_CLASSES[name]
    except KeyError:
        raise ConfigError(f"unknown device class {name!r} (known: {', '.join(DEVICE_CLASSES)})") from None
