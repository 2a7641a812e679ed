"""Opening a bundle: hashes, refusals of tampered, truncated, unlisted and non-ONNX/JSON files."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import pytest

from splitserve.core.bundle import Bundle, Manifest, sha256_file
from splitserve.core.errors import BundleError, IntegrityError, UnknownModelError


@pytest.fixture()
def bundle_copy(tiny_bundle, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, dst)
    return dst


def _relist(root, rel):
    """Rewrite the manifest so that ``rel`` carries its current hash (a consistent but hostile bundle)."""
    m = json.loads((root / "manifest.json").read_text())
    m["files"][rel] = sha256_file(root / rel)
    (root / "manifest.json").write_text(json.dumps(m))


def test_opens_and_exposes_manifest(tiny_bundle):
    b = Bundle.open(tiny_bundle)
    m = b.manifest
    assert m.name == "fmnist_tiny" and len(m.classes) == 10
    assert [s.name for s in m.splits] == ["stem", "layer1"]
    for s in m.splits:
        assert b.path(s.head_int8).exists() and b.path(s.tail_onnx).exists()
        for lv in s.levels:
            assert b.tables(s.name, lv.level).channels == s.latent_shape[0]
            assert lv.bytes_per_sample > 0 and 0 < lv.accuracy <= 1
        assert 0 < s.head_mac_share < 1
    with pytest.raises(UnknownModelError, match="no split"):
        m.split("nope")
    with pytest.raises(UnknownModelError, match="no level 9"):
        m.splits[0].level(9)


def test_the_manifest_reads_back_exactly_as_the_exporter_wrote_it(tiny_bundle):
    """``Manifest.to_dict`` inverts ``from_dict`` byte for byte on the tiny bundle and cached natural bundles."""
    cache = Path(os.environ.get("SPLITSERVE_CACHE", Path.home() / ".cache" / "splitserve"))  # models.zoo.cache_dir, torch-free
    natural = sorted((cache / "bundles").glob("efficientnet_lite0-natural-*/manifest.json"))
    for path in [tiny_bundle / "manifest.json", *natural]:
        text = path.read_text()
        raw = json.loads(text)
        m = Manifest.from_dict(raw)
        assert Manifest.from_dict(m.to_dict()) == m
        if "levels" in raw["offload"]:
            assert json.dumps(m.to_dict(), indent=1) == text, path
        else:  # exported before offload levels existed: only the (empty) list is new
            assert m.to_dict() == {**raw, "offload": {**raw["offload"], "levels": []}}, path


def test_tampered_file_is_refused(bundle_copy):
    target = bundle_copy / "edge/layer1/head.int8.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="head.int8.onnx does not match its sha256"):
        Bundle.open(bundle_copy)


def test_truncated_file_is_refused(bundle_copy):
    target = bundle_copy / "edge/stem/level0.json"
    target.write_bytes(target.read_bytes()[:100])
    with pytest.raises(IntegrityError, match="level0.json"):
        Bundle.open(bundle_copy)


def test_missing_file_is_refused(bundle_copy):
    (bundle_copy / "edge/full.int8.onnx").unlink()
    with pytest.raises(BundleError, match="missing"):
        Bundle.open(bundle_copy)


def test_unlisted_file_is_refused(bundle_copy):
    (bundle_copy / "edge/extra.onnx").write_bytes(b"\x08\x07")
    with pytest.raises(BundleError, match="does not list"):
        Bundle.open(bundle_copy)


def test_pickle_is_refused_even_with_a_matching_hash(bundle_copy):
    rel = "edge/layer1/head.int8.onnx"
    (bundle_copy / rel).write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    _relist(bundle_copy, rel)
    with pytest.raises(BundleError, match="not an ONNX model"):
        Bundle.open(bundle_copy)


def test_foreign_python_model_is_refused(bundle_copy):
    rel = "triton/python/fmnist_tiny_full/1/model.py"
    (bundle_copy / rel).write_text("import os\nos.system('true')\n")
    _relist(bundle_copy, rel)
    with pytest.raises(BundleError, match="not the python-backend model shipped"):
        Bundle.open(bundle_copy)


def test_corrupt_manifest_is_refused(bundle_copy):
    (bundle_copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle.open(bundle_copy)
    (bundle_copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match="no manifest.json"):
        Bundle.open(bundle_copy)


def test_tar_bundle_opens(tiny_bundle, tmp_path):
    tar_path = tmp_path / "bundle.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(tiny_bundle, arcname="fmnist")
    b = Bundle.open(tar_path)
    assert b.manifest.name == "fmnist_tiny"
    b.close()
