"""Profiles: per option, the bytes, accuracy, device time and server time the simulator replays.

A profile joins what the bundle manifest records (bytes and accuracy per option) with what was
measured on a device (head and local latencies) and at an endpoint (decode + tail time per option). Build
one with :meth:`Profile.from_manifest` from real measurements, or load one from JSON::

    {"format": "splitserve.profile", "format_version": 1, "name": ..., "example": false,
     "description": ..., "framing_bytes": 150, "payload_cv": 0.15, "device_cv": 0.05, "server_cv": 0.1,
     "total_macs": 17000000,
     "options": [{"kind": "split", "split": "block1", "level": 0, "payload_bytes": 22.0,
                  "accuracy": 0.897, "tail_share": 0.86, "device_ms": 11.0, "server_ms": 3.0}, ...]}

``example_profile_path()`` is an illustrative profile for tests, labelled ``"example": true``: its numbers
are not measurements of a splitserve bundle.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from splitserve.core.bundle import Manifest
from splitserve.core.errors import ConfigError

from ._options import options_from_manifest
from .types import LOCAL_ID, OFFLOAD_ID, DeviceLatency, Option

__all__ = ["PROFILE_FORMAT", "Profile", "ProfileEntry", "example_profile_path"]

PROFILE_FORMAT = "splitserve.profile"
PROFILE_VERSION = 1


def example_profile_path() -> Path:
    """Path of the shipped example profile (illustrative numbers, see its ``description``)."""
    return Path(__file__).with_name("profiles") / "example_fmnist.json"


@dataclass(frozen=True)
class ProfileEntry:
    """One option with its measured device and server time (ms)."""

    option: Option
    device_ms: float
    server_ms: float


@dataclass(frozen=True)
class Profile:
    """Everything the simulator needs about a bundle on a device and an endpoint.

    Attributes:
        name: a label for reports.
        entries: one per option.
        framing_bytes: request bytes on the wire beyond the payload (protobuf, gRPC, HTTP/2, TCP/IP).
        example: True for illustrative numbers that are not measurements.
        description: where the numbers come from.
        payload_cv: per-request coefficient of variation of payload size (images differ).
        device_cv: per-request coefficient of variation of device time.
        server_cv: per-request coefficient of variation of server time.
        total_macs: multiply-accumulates of the whole model per input (0: not recorded); the
            compute of a split's device part is ``(1 - tail_share) * total_macs``.
    """

    name: str
    entries: tuple[ProfileEntry, ...]
    framing_bytes: float
    example: bool = False
    description: str = ""
    payload_cv: float = 0.15
    device_cv: float = 0.05
    server_cv: float = 0.1
    total_macs: int = 0

    @property
    def options(self) -> tuple[Option, ...]:
        return tuple(e.option for e in self.entries)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(e.option.id for e in self.entries)

    def entry(self, option_id: str) -> ProfileEntry:
        """The entry of ``option_id``.

        Raises:
            ConfigError: no such option.
        """
        for e in self.entries:
            if e.option.id == option_id:
                return e
        raise ConfigError(f"profile {self.name!r} has no option {option_id!r} (options: {list(self.ids)})")

    def device_latency(self) -> DeviceLatency:
        """The profile's device times in the form the orchestrator takes at start-up."""
        heads = {
            e.option.split: e.device_ms for e in self.entries if e.option.split and e.option.kind == "split"
        }
        by_id = {e.option.id: e.device_ms for e in self.entries}
        lossy = {e.option.level: e.device_ms for e in self.entries if e.option.kind == "offload" and e.option.level}
        return DeviceLatency(
            head_ms=heads,
            local_ms=by_id.get(LOCAL_ID, 0.0),
            offload_ms=by_id.get(OFFLOAD_ID, 0.0),
            offload_level_ms=lossy,
        )

    def server_ms(self) -> dict[str, float]:
        return {e.option.id: e.server_ms for e in self.entries if e.option.remote}

    @classmethod
    def from_manifest(
        cls,
        manifest: Manifest,
        device: DeviceLatency,
        server_ms: Mapping[str, float],
        *,
        framing_bytes: float,
        name: str | None = None,
        description: str = "",
    ) -> Profile:
        """Join a manifest's bytes and accuracy with measured device and server times.

        Args:
            manifest: the bundle's manifest.
            device: head latencies per split, local and offload time, measured on the device.
            server_ms: per option id (``"<split>@<level>"``, ``"offload"``), measured endpoint time.
            framing_bytes: measured request bytes beyond the payload.
            name: label (default ``"<model>:<version>"``).
            description: where the measurements come from.

        Raises:
            ConfigError: a measurement is missing for an option.
        """
        entries = []
        for option in options_from_manifest(manifest):
            try:
                dev = device.for_option(option)
            except KeyError as exc:
                raise ConfigError(str(exc.args[0])) from None
            if option.remote and option.id not in server_ms:
                raise ConfigError(f"no server time for option {option.id!r} (given: {sorted(server_ms)})")
            entries.append(ProfileEntry(option, dev, float(server_ms.get(option.id, 0.0))))
        return cls(
            name=name or f"{manifest.name}:{manifest.version}",
            entries=tuple(entries),
            framing_bytes=framing_bytes,
            description=description,
            total_macs=manifest.total_macs,
        )

    def with_device_factor(self, factor: float) -> Profile:
        """The same profile on a device ``factor`` times slower (every device time scaled).

        For a profile measured on a fast workstation standing in for a slower edge device; the factor is
        recorded in the name and description.

        Raises:
            ValueError: ``factor`` is not positive.
        """
        if factor <= 0:
            raise ValueError(f"device factor must be positive, got {factor}")
        if factor == 1.0:
            return self
        return replace(
            self,
            name=f"{self.name} (device x{factor:g})",
            entries=tuple(replace(e, device_ms=e.device_ms * factor) for e in self.entries),
            description=f"{self.description} Device times scaled by {factor:g}.".strip(),
        )

    def with_mac_rate(self, mmac_per_s: float) -> Profile:
        """The same profile on a device whose neural-network compute runs at ``mmac_per_s``.

        Each option's device time gains the time its on-device multiply-accumulates take at that rate:
        the head and encoder for a split (``(1 - tail_share) * total_macs``), the whole model for local,
        none for offload. This stands in for a device where compute, not per-call overhead, dominates
        (a microcontroller or a phone's little core). On a workstation CPU per-call overhead dominates: a
        head of 7-21% of the MACs plus its entropy coding costs as much as the whole small model or more.

        Raises:
            ValueError: ``mmac_per_s`` is not positive.
            ConfigError: the profile does not record ``total_macs``.
        """
        if mmac_per_s <= 0:
            raise ValueError(f"MAC rate must be positive, got {mmac_per_s}")
        if self.total_macs <= 0:
            raise ConfigError(f"profile {self.name!r} does not record total_macs; re-measure it from its bundle")
        per_ms = mmac_per_s * 1e3
        return replace(
            self,
            name=f"{self.name} (+MACs at {mmac_per_s:g} MMAC/s)",
            entries=tuple(
                replace(e, device_ms=e.device_ms + (1.0 - e.option.tail_share) * self.total_macs / per_ms)
                for e in self.entries
            ),
            description=(
                f"{self.description} Plus on-device MACs at {mmac_per_s:g} MMAC/s "
                f"({self.total_macs / 1e6:.2f} M MACs for the whole model)."
            ).strip(),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PROFILE_FORMAT,
            "format_version": PROFILE_VERSION,
            "name": self.name,
            "example": self.example,
            "description": self.description,
            "framing_bytes": self.framing_bytes,
            "payload_cv": self.payload_cv,
            "device_cv": self.device_cv,
            "server_cv": self.server_cv,
            "total_macs": self.total_macs,
            "options": [
                {**asdict(e.option), "device_ms": e.device_ms, "server_ms": e.server_ms} for e in self.entries
            ],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Profile:
        """Parse :meth:`to_dict` output.

        Raises:
            ConfigError: wrong format, version or fields.
        """
        if d.get("format") != PROFILE_FORMAT or d.get("format_version") != PROFILE_VERSION:
            raise ConfigError(
                f"not a splitserve profile v{PROFILE_VERSION} (format={d.get('format')!r}, "
                f"version={d.get('format_version')!r})"
            )
        try:
            entries = tuple(
                ProfileEntry(
                    Option(
                        kind=o["kind"],
                        split=o.get("split"),
                        level=None if o.get("level") is None else int(o["level"]),
                        payload_bytes=float(o["payload_bytes"]),
                        accuracy=float(o["accuracy"]),
                        tail_share=float(o["tail_share"]),
                    ),
                    device_ms=float(o["device_ms"]),
                    server_ms=float(o["server_ms"]),
                )
                for o in d["options"]
            )
            profile = cls(
                name=str(d["name"]),
                entries=entries,
                framing_bytes=float(d["framing_bytes"]),
                example=bool(d.get("example", False)),
                description=str(d.get("description", "")),
                payload_cv=float(d.get("payload_cv", 0.15)),
                device_cv=float(d.get("device_cv", 0.05)),
                server_cv=float(d.get("server_cv", 0.1)),
                total_macs=int(d.get("total_macs", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"malformed profile: {exc!r}") from exc
        bad = [e.option.kind for e in entries if e.option.kind not in ("split", "local", "offload")]
        if bad or len(set(profile.ids)) != len(profile.ids) or not entries:
            raise ConfigError(f"profile {profile.name!r} has unknown kinds {bad} or duplicate/no options")
        return profile

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        """Read a profile JSON file.

        Raises:
            ConfigError: unreadable or malformed.
        """
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read profile {path}: {exc}") from exc

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")
