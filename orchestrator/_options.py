"""The option set of a bundle: every (split, level), plus local and offload."""

from __future__ import annotations

from collections.abc import Mapping

from splitserve.core.bundle import OFFLOAD_SPLIT, Manifest
from splitserve.core.errors import BundleError

from .types import Option

__all__ = ["options_from_manifest"]


def options_from_manifest(
    manifest: Manifest, precisions: Mapping[str, str] | None = None
) -> tuple[Option, ...]:
    """Every option a bundle offers, with the bytes and accuracy its manifest measured.

    ``local`` is included when the manifest's ``local`` entry has an ``accuracy``; ``offload`` (PNG) when its
    ``offload`` entry has level 0 (its ``bytes_per_sample`` and ``accuracy``), and ``offload@<level>`` for
    each of its JPEG/WebP levels (``core.bundle.OffloadInfo``).

    Args:
        manifest: the bundle's manifest.
        precisions: the precision the device runs each head (by split name) and ``local`` in; an
            ``fp32`` one is rated by the manifest's fp32 accuracy (default: int8 figures throughout).

    Raises:
        BundleError: the manifest offers no option at all.
    """
    fp32 = {k for k, v in (precisions or {}).items() if v == "fp32"}
    options: list[Option] = []
    for split in manifest.splits:
        tail_share = 1.0 - split.head_mac_share
        for lv in split.levels:
            accuracy = lv.accuracy_fp32 if split.name in fp32 else lv.accuracy
            options.append(Option("split", split.name, lv.level, lv.bytes_per_sample, accuracy, tail_share))
    local = manifest.local
    if local.accuracy is not None:
        accuracy = local.accuracy_fp32 if "local" in fp32 and local.accuracy_fp32 is not None else local.accuracy
        options.append(Option("local", None, None, 0.0, accuracy, 0.0))
    for off in manifest.offload.levels:
        options.append(Option("offload", OFFLOAD_SPLIT, off.level or None, off.bytes_per_sample, off.accuracy, 1.0))
    if not options:
        raise BundleError(f"manifest of {manifest.name!r} offers no split, local or offload option")
    return tuple(options)
