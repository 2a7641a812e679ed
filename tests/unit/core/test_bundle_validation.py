"""Hostile bundles are refused at open with one clear error: bad manifest values, links, FIFOs, fake ONNX."""

from __future__ import annotations

import io
import json
import os
import pickle
import tarfile
from pathlib import Path

import pytest

from splitserve.core.bundle import MANIFEST_FORMAT, MANIFEST_VERSION, Bundle, Manifest, sha256_file
from splitserve.core.errors import BundleError

ONNX = b"\x08\x08" + b"\x3a\x03\x12\x01g"  # ir_version 8, a graph named "g": the smallest ModelProto


def _bundle(root: Path, **changes) -> Path:
    """A minimal bundle that opens; ``changes`` edit the manifest (or its split with ``split_*`` keys)."""
    files = {
        "edge/s/head.int8.onnx": ONNX, "edge/s/head.fp32.onnx": ONNX, "triton/t/1/model.onnx": ONNX,
        "edge/s/level0.json": b"{}", "edge/full.fp32.onnx": ONNX,
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    split = {
        "name": "s", "latent_shape": [4, 7, 7], "head_int8": "edge/s/head.int8.onnx", "head_fp32": "edge/s/head.fp32.onnx",
        "tail_model": "m_tail_s", "tail_onnx": "triton/t/1/model.onnx", "head_macs": 10, "head_mac_share": 0.2,
        "levels": [{"level": 0, "tables": "edge/s/level0.json", "bytes_per_sample": 30.0, "accuracy": 0.9,
                    "accuracy_fp32": 0.9, "fidelity": 0.95}],
    }
    split.update({k[6:]: v for k, v in changes.items() if k.startswith("split_")})
    manifest = {
        "format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION, "name": "m", "version": "1",
        "input": {"shape": [1, 28, 28], "dtype": "uint8"}, "classes": ["a", "b"], "total_macs": 100,
        "unsplit_accuracy": 0.9, "splits": [split], "local": {"fp32": "edge/full.fp32.onnx"}, "offload": {},
        "files": {rel: sha256_file(root / rel) for rel in files},
    }
    manifest.update({k: v for k, v in changes.items() if not k.startswith("split_")})
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_the_minimal_bundle_opens_and_its_manifest_reads_back_as_written(tmp_path):
    m = Bundle.open(_bundle(tmp_path)).manifest
    assert m.splits[0].latent_shape == (4, 7, 7) and m.local.fp32 == "edge/full.fp32.onnx" and m.local.int8 is None
    assert m.offload.levels == () and m.extra.codec is None
    assert Manifest.from_dict(m.to_dict()) == m


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"split_latent_shape": [-1, 7, 7]}, "latent_shape"),
        ({"split_latent_shape": [2**40, 7, 7]}, "latent_shape"),
        ({"split_latent_shape": [0, 0, 0]}, "latent_shape"),
        ({"split_latent_shape": [7, 7]}, "latent_shape"),
        ({"classes": []}, "classes"),
        ({"name": "../evil"}, "name and version"),
        ({"split_head_mac_share": 700.0}, "head MACs"),
        ({"split_levels": []}, "levels"),
        ({"split_tail_onnx": "/etc/passwd"}, "is not a bundle file"),
        ({"input": {"shape": [1, 28], "dtype": "uint8"}}, "input shape"),
        ({"split_head_macs": float("inf")}, "not a finite number"),
        ({"split_tail_model": 7}, "tail_model 7 is not a string"),
        ({"local": {"fp32": "edge/full.fp32.onnx", "accuracy": 1.5}}, "local accuracy"),
        ({"local": {"fp32": ["edge/full.fp32.onnx"]}}, "local.fp32"),
        ({"offload": {"split": "stem"}}, "offload split"),
        ({"offload": {"bytes_per_sample": 9.0, "accuracy": "high"}}, "offload level"),
        ({"extra": {"codec": {"version": 2}}}, "malformed manifest"),
        ({"extra": {"codec": {"name": "bigrans", "version": 99}}}, "codes latents with bigrans v99"),
        ({"extra": {"eval_size": "1000"}}, "extra.eval_size"),
        ({"files": ["edge/s/level0.json"]}, "files must be an object"),
    ],
)
def test_bad_manifest_values_are_refused_at_open(tmp_path, changes, message):
    with pytest.raises(BundleError, match=message):
        Bundle.open(_bundle(tmp_path, **changes))


def test_manifest_that_is_not_an_object_or_nests_too_deep(tmp_path):
    root = _bundle(tmp_path)
    (root / "manifest.json").write_text("[1, 2]")
    with pytest.raises(BundleError, match="a JSON object is expected"):
        Bundle.open(root)
    (root / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(BundleError, match="nests too deeply|not valid JSON"):
        Bundle.open(root)


def test_links_and_special_files_are_refused(tmp_path):
    root = _bundle(tmp_path / "a")
    os.symlink("/etc", root / "edge" / "etc")
    with pytest.raises(BundleError, match="holds a link, edge/etc"):
        Bundle.open(root)
    root = _bundle(tmp_path / "b")
    target = root / "edge/s/level0.json"
    target.unlink()
    os.symlink("/etc/hostname", target)
    with pytest.raises(BundleError, match="holds a link"):
        Bundle.open(root)
    root = _bundle(tmp_path / "c")
    os.mkfifo(root / "edge" / "pipe")
    with pytest.raises(BundleError, match="not a regular file"):
        Bundle.open(root)


def test_one_valid_onnx_byte_before_a_pickle_is_refused(tmp_path):
    root = _bundle(tmp_path)
    rel = "edge/s/head.int8.onnx"
    (root / rel).write_bytes(b"\x08" + pickle.dumps({"weights": [1, 2]}))
    m = json.loads((root / "manifest.json").read_text())
    m["files"][rel] = sha256_file(root / rel)
    (root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="not an ONNX model"):
        Bundle.open(root)


def test_tar_members_that_leave_the_bundle_are_refused(tmp_path):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("../escaped.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    with pytest.raises(BundleError, match="is refused"):
        Bundle.open(archive)
    assert not (tmp_path.parent / "escaped.json").exists()


def test_signed_bundles_open_only_with_a_trusted_key_and_an_untouched_manifest(tmp_path):
    from splitserve.core.signing import generate_key, load_trusted_keys, sign_bundle

    root = _bundle(tmp_path / "b")
    trusted = load_trusted_keys([generate_key(tmp_path / "release.key")])
    other = load_trusted_keys([generate_key(tmp_path / "other.key")])
    with pytest.raises(BundleError, match="is not signed"):
        Bundle.open(root, trusted_keys=trusted)
    sign_bundle(root, tmp_path / "release.key")
    assert Bundle.open(root, trusted_keys=trusted).manifest.name == "m"
    assert Bundle.open(root).manifest.name == "m"  # signatures are optional where no keys are configured
    with pytest.raises(BundleError, match="not trusted"):
        Bundle.open(root, trusted_keys=other)
    # Tampered and re-hashed: every sha256 is consistent again, but the manifest is not the signed one.
    (root / "edge/s/level0.json").write_text('{"evil": 1}')
    m = json.loads((root / "manifest.json").read_text())
    m["files"]["edge/s/level0.json"] = sha256_file(root / "edge/s/level0.json")
    (root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="signature does not match"):
        Bundle.open(root, trusted_keys=trusted)
    assert oct((tmp_path / "release.key").stat().st_mode & 0o777) == "0o600"


def test_cli_keygen_and_export_sign(tmp_path):
    from click.testing import CliRunner

    from splitserve.cli.main import cli

    res = CliRunner().invoke(cli, ["keygen", str(tmp_path / "k")])
    assert res.exit_code == 0 and (tmp_path / "k.pub").exists()
    res = CliRunner().invoke(cli, ["keygen", str(tmp_path / "k")])
    assert res.exit_code == 2 and "not overwriting" in res.output
