"""The rules both ends of the compact wire derive from a manifest: bundle id, option order, framing."""

from __future__ import annotations

import dataclasses

import pytest

from splitserve.core.bundle import OFFLOAD_SPLIT, Bundle, OffloadInfo
from splitserve.core.wire import (
    GRPC_PREFIX_BYTES,
    UNARY_HEADERS_BYTES,
    WINDOW_UPDATES_BYTES,
    WireOption,
    offload_codecs,
    stream_item_bytes,
    unary_request_bytes,
    wire_id,
    wire_options,
)


@pytest.fixture(scope="module")
def manifest(tiny_bundle):
    bundle = Bundle.open(tiny_bundle)
    bundle.close()
    return bundle.manifest


def test_the_wire_id_names_the_exact_bundle(manifest):
    assert wire_id(manifest) == wire_id(dataclasses.replace(manifest))
    assert 0 < wire_id(manifest) < 2**32
    rel = next(iter(manifest.files))
    changed = dataclasses.replace(manifest, files={**manifest.files, rel: "0" * 64})
    assert wire_id(changed) != wire_id(manifest)
    assert wire_id(dataclasses.replace(manifest, version="2")) != wire_id(manifest)


def test_options_are_each_splits_levels_then_the_offload_levels(manifest):
    options = wire_options(manifest)
    latent = [WireOption(s.name, lv.level) for s in manifest.splits for lv in s.levels]
    assert list(options[: len(latent)]) == latent
    assert list(options[len(latent) :]) == [WireOption(OFFLOAD_SPLIT, lv) for lv in sorted(offload_codecs(manifest))]
    assert options[-1].offload and not options[0].offload


def test_a_manifest_without_offload_figures_still_serves_png(manifest):
    bare = OffloadInfo(manifest.offload.triton_model, manifest.offload.onnx)
    assert offload_codecs(dataclasses.replace(manifest, offload=bare)) == {0: "png"}
    assert offload_codecs(dataclasses.replace(manifest, offload=OffloadInfo())) == {}


def test_framing_model():
    assert stream_item_bytes(100) == 100 + GRPC_PREFIX_BYTES + 9 + WINDOW_UPDATES_BYTES
    assert unary_request_bytes(100) == stream_item_bytes(100) + UNARY_HEADERS_BYTES
