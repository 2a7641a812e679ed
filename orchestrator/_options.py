"""The option set of a bundle: every (split, level), plus local and offload."""

from __future__ import annotations

from splitserve.core.bundle import OFFLOAD_SPLIT, Manifest
from splitserve.core.errors import BundleError

from .types import Option

__all__ = ["options_from_manifest"]


def options_from_manifest(manifest: Manifest) -> tuple[Option, ...]:
    """Every option a bundle offers, with the bytes and accuracy its manifest measured.

    ``local`` is included when the manifest's ``local`` entry has an ``accuracy``; ``offload`` when its
    ``offload`` entry has ``bytes_per_sample`` and ``accuracy``.

    Raises:
        BundleError: the manifest offers no option at all, or a figure is not a number.
    """
    options: list[Option] = []
    try:
        for split in manifest.splits:
            tail_share = 1.0 - float(split.head_mac_share)
            for lv in split.levels:
                options.append(
                    Option(
                        "split",
                        split.name,
                        int(lv.level),
                        float(lv.bytes_per_sample),
                        float(lv.accuracy),
                        tail_share,
                    )
                )
        if "accuracy" in manifest.local:
            options.append(Option("local", None, None, 0.0, float(manifest.local["accuracy"]), 0.0))
        if {"bytes_per_sample", "accuracy"} <= manifest.offload.keys():
            options.append(
                Option(
                    "offload",
                    OFFLOAD_SPLIT,
                    None,
                    float(manifest.offload["bytes_per_sample"]),
                    float(manifest.offload["accuracy"]),
                    1.0,
                )
            )
    except (TypeError, ValueError) as exc:
        raise BundleError(f"manifest of {manifest.name!r} has a non-numeric option figure: {exc}") from exc
    if not options:
        raise BundleError(f"manifest of {manifest.name!r} offers no split, local or offload option")
    return tuple(options)
