"""The registry of served bundles: newest-version routing, lookups, drain before unload."""

from __future__ import annotations

import asyncio
import json
import shutil

import numpy as np
import pytest

from splitserve.cloud._registry import ModelRegistry, ServedBundle, version_key
from splitserve.core.bundle import OFFLOAD_SPLIT, Bundle
from splitserve.core.errors import DuplicateRegistrationError, UnknownModelError


@pytest.fixture(scope="module")
def versions(tiny_bundle, tmp_path_factory):
    """The test bundle served as versions 1.9, 1.10 and 1.2."""
    served = []
    for version in ("1.9", "1.10", "1.2"):
        root = tmp_path_factory.mktemp("v") / "bundle"
        shutil.copytree(tiny_bundle, root)
        manifest = json.loads((root / "manifest.json").read_text())
        manifest["version"] = version
        (root / "manifest.json").write_text(json.dumps(manifest))
        served.append(ServedBundle.from_bundle(Bundle.open(root)))
    return served


def test_versions_compare_naturally():
    assert sorted(["1.10", "1.9", "1.2", "2", "1.9a"], key=version_key) == ["1.2", "1.9", "1.9a", "1.10", "2"]


def test_served_bundle_precomputes_the_request_path(tiny_bundle):
    served = ServedBundle.from_bundle(Bundle.open(tiny_bundle))
    m = served.bundle.manifest
    assert set(served.tails) == {s.name for s in m.splits} | {OFFLOAD_SPLIT}
    stem = served.tails["stem"]
    assert (stem.input_name, stem.input_dtype, stem.triton_model) == (
        "y_hat",
        np.float32,
        "fmnist_tiny_tail_stem",
    )
    assert served.tails[OFFLOAD_SPLIT].input_dtype == np.uint8
    assert served.image_pixels == 28 * 28
    n = int(np.prod(m.split("stem").latent_shape))
    assert served.splits["stem"].levels[0].max_bytes >= n * 2  # room for every symbol as an escape
    assert len(served.decode_work()) == sum(len(s.levels) for s in m.splits)


def test_empty_version_routes_to_the_newest_and_lookups_say_what_exists(versions):
    registry = ModelRegistry()
    for served in versions:
        registry.add(served)
    name = versions[0].name
    assert registry.resolve(name, "").version == "1.10"
    assert registry.resolve(name, "1.2").version == "1.2"
    assert [s.version for s in registry] == ["1.2", "1.9", "1.10"]
    with pytest.raises(
        UnknownModelError, match=r"no version '3' here \(versions: \['1.2', '1.9', '1.10'\]\)"
    ):
        registry.resolve(name, "3")
    with pytest.raises(UnknownModelError, match="'other' is not served here"):
        registry.resolve("other", "")
    with pytest.raises(DuplicateRegistrationError):
        registry.add(versions[0])
    registry.remove(name, "1.10")
    assert registry.resolve(name, "").version == "1.9"
    for version in ("1.9", "1.2"):
        registry.remove(name, version)
    assert len(registry) == 0
    with pytest.raises(UnknownModelError):
        registry.remove(name, "1.2")


def test_split_lookup_is_not_found_with_the_splits(versions):
    with pytest.raises(UnknownModelError, match=r"no split 'x' \(splits: \['stem', 'layer1', 'input'\]\)"):
        versions[0].split("x")


def test_drained_waits_for_in_flight_requests(versions):
    served = versions[0]

    async def main():
        served.acquire()
        waiter = asyncio.create_task(served.drained())
        await asyncio.sleep(0.05)
        assert not waiter.done()
        served.release()
        await asyncio.wait_for(waiter, 1)
        await asyncio.wait_for(served.drained(), 1)  # idle: returns at once

    asyncio.run(main())
