"""The model bundle: the one contract between ``models`` (which writes it), ``edge`` and ``cloud``.

A bundle is a directory (or a ``.tar`` of one) written by ``splitserve export``::

    manifest.json                       model, input spec, classes, splits, levels, measured figures,
                                        sha256 of every other file
    edge/full.{fp32,int8}.onnx          the whole model, for local fallback on the device
    edge/<split>/head.{fp32,int8}.onnx  backbone up to the split + bottleneck encoder -> latent y
    edge/<split>/level<l>.json          entropy tables of rate level l (see ``core.codec``)
    triton/onnxruntime/<model>_tail_<split>/{config.pbtxt,1/model.onnx}   official Triton image
    triton/python/<model>_tail_<split>/{config.pbtxt,1/model.onnx,1/model.py}  pytriton's binary
    triton/*/<model>_full/...           the whole model, for offload (compressed input image)

Opening a bundle checks the sha256 of every file, refuses files it does not list, and accepts only
ONNX, JSON, Triton ``config.pbtxt`` and the python-backend ``model.py`` that this splitserve ships
(byte-for-byte): never pickles.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .codec import CODEC_NAME, CODEC_VERSION, EntropyTables
from .errors import BundleError, IntegrityError, UnknownModelError

__all__ = [
    "MANIFEST_FORMAT",
    "Bundle",
    "LevelInfo",
    "Manifest",
    "OFFLOAD_SPLIT",
    "SplitInfo",
    "TRITON_PYTHON_MODEL",
    "sha256_file",
]

MANIFEST_FORMAT = "splitserve.bundle"
MANIFEST_VERSION = 1
OFFLOAD_SPLIT = "input"
TRITON_PYTHON_MODEL = Path(__file__).with_name("triton_python_model.py")
_ONNX_FIRST_BYTE = 0x08  # ModelProto field 1 (ir_version), varint


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class LevelInfo:
    """One rate level of one split, with the figures measured at export."""

    level: int
    tables: str
    bytes_per_sample: float
    accuracy: float
    accuracy_fp32: float
    fidelity: float


@dataclass(frozen=True)
class SplitInfo:
    """One split point: the edge head, the cloud tail and the rate levels between them."""

    name: str
    latent_shape: tuple[int, int, int]
    head_int8: str
    head_fp32: str
    tail_model: str
    tail_onnx: str
    head_macs: int
    head_mac_share: float
    levels: tuple[LevelInfo, ...]

    def level(self, level: int) -> LevelInfo:
        for info in self.levels:
            if info.level == level:
                return info
        known = [lv.level for lv in self.levels]
        raise UnknownModelError(f"split {self.name!r} has no level {level} (levels: {known})")


@dataclass(frozen=True)
class Manifest:
    """The parsed ``manifest.json``."""

    name: str
    version: str
    input_shape: tuple[int, ...]
    input_dtype: str
    preprocess: dict[str, Any]
    classes: tuple[str, ...]
    total_macs: int
    unsplit_accuracy: float
    splits: tuple[SplitInfo, ...]
    local: dict[str, Any]
    offload: dict[str, Any]
    files: dict[str, str]
    extra: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> SplitInfo:
        for s in self.splits:
            if s.name == name:
                return s
        raise UnknownModelError(
            f"model {self.name!r} version {self.version!r} has no split {name!r} "
            f"(splits: {[s.name for s in self.splits]})"
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        if d.get("format") != MANIFEST_FORMAT:
            raise BundleError(f"not a splitserve bundle manifest (format={d.get('format')!r})")
        if d.get("format_version") != MANIFEST_VERSION:
            raise BundleError(
                f"bundle format version {d.get('format_version')!r} is not supported (this build reads "
                f"{MANIFEST_VERSION})"
            )
        try:
            splits = tuple(
                SplitInfo(
                    name=s["name"],
                    latent_shape=tuple(int(v) for v in s["latent_shape"]),  # type: ignore[arg-type]
                    head_int8=s["head_int8"],
                    head_fp32=s["head_fp32"],
                    tail_model=s["tail_model"],
                    tail_onnx=s["tail_onnx"],
                    head_macs=int(s["head_macs"]),
                    head_mac_share=float(s["head_mac_share"]),
                    levels=tuple(LevelInfo(**lv) for lv in s["levels"]),
                )
                for s in d["splits"]
            )
            return cls(
                name=d["name"],
                version=str(d["version"]),
                input_shape=tuple(int(v) for v in d["input"]["shape"]),
                input_dtype=d["input"]["dtype"],
                preprocess=dict(d["input"].get("preprocess", {})),
                classes=tuple(d["classes"]),
                total_macs=int(d["total_macs"]),
                unsplit_accuracy=float(d["unsplit_accuracy"]),
                splits=splits,
                local=dict(d["local"]),
                offload=dict(d["offload"]),
                files=dict(d["files"]),
                extra=dict(d.get("extra", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"malformed manifest: {exc!r}") from exc


class Bundle:
    """An opened, verified bundle. Use :meth:`open`."""

    def __init__(self, root: Path, manifest: Manifest, *, _tmp: tempfile.TemporaryDirectory[str] | None = None):
        self.root = root
        self.manifest = manifest
        self._tmp = _tmp
        self._tables: dict[tuple[str, int], EntropyTables] = {}

    @classmethod
    def open(cls, path: str | Path, *, verify: bool = True) -> Bundle:
        """Open a bundle directory or ``.tar``; with ``verify`` every file's sha256 is checked.

        Raises:
            BundleError: missing, malformed, unsupported or unlisted files.
            IntegrityError: a file's content differs from its recorded sha256.
        """
        path = Path(path)
        tmp = None
        if path.is_file() and tarfile.is_tarfile(path):
            tmp = tempfile.TemporaryDirectory(prefix="splitserve-bundle-")
            with tarfile.open(path) as tar:
                tar.extractall(tmp.name, filter="data")
            entries = [p for p in Path(tmp.name).iterdir()]
            root = entries[0] if len(entries) == 1 and entries[0].is_dir() else Path(tmp.name)
        elif path.is_dir():
            root = path
        else:
            raise BundleError(f"no bundle at {path}: expected a directory or a .tar written by `splitserve export`")
        manifest_path = root / "manifest.json"
        try:
            raw = json.loads(manifest_path.read_text())
        except FileNotFoundError as exc:
            raise BundleError(f"{path} has no manifest.json: not a splitserve bundle") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"{manifest_path} is not valid JSON: {exc}") from exc
        manifest = Manifest.from_dict(raw)
        coded = manifest.extra.get("codec", {})
        if coded and (coded.get("name"), coded.get("version")) != (CODEC_NAME, CODEC_VERSION):
            raise BundleError(
                f"bundle {path} codes latents with {coded.get('name')} v{coded.get('version')}; this build speaks "
                f"{CODEC_NAME} v{CODEC_VERSION}: re-export it with `splitserve export`"
            )
        if verify:
            _verify_files(root, manifest.files)
        return cls(root, manifest, _tmp=tmp)

    def path(self, rel: str) -> Path:
        if rel not in self.manifest.files:
            raise BundleError(f"{rel!r} is not a file of this bundle")
        return self.root / rel

    def tables(self, split: str, level: int) -> EntropyTables:
        """Entropy tables of ``split`` at ``level`` (loaded once, then cached)."""
        key = (split, level)
        if key not in self._tables:
            info = self.manifest.split(split).level(level)
            self._tables[key] = EntropyTables.load(self.path(info.tables))
        return self._tables[key]

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __repr__(self) -> str:
        return f"Bundle({self.manifest.name!r}, version={self.manifest.version!r}, root={str(self.root)!r})"


def _verify_files(root: Path, files: dict[str, str]) -> None:
    present = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    present.discard("manifest.json")
    unlisted = sorted(present - files.keys())
    if unlisted:
        raise BundleError(f"bundle {root} holds files its manifest does not list: {unlisted[:5]}")
    template = TRITON_PYTHON_MODEL.read_bytes()
    for rel, digest in files.items():
        p = root / rel
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            raise BundleError(f"bundle file path {rel!r} escapes the bundle")
        if not p.is_file():
            raise BundleError(f"bundle file {rel} is missing")
        if sha256_file(p) != digest:
            raise IntegrityError(f"bundle file {rel} does not match its sha256: truncated or tampered with")
        _check_kind(p, rel, template)


def _check_kind(p: Path, rel: str, template: bytes) -> None:
    name = p.name
    if name.endswith(".onnx"):
        with open(p, "rb") as f:
            head = f.read(1)
        if head != bytes([_ONNX_FIRST_BYTE]):
            raise BundleError(f"bundle file {rel} is not an ONNX model")
    elif name.endswith(".json"):
        try:
            json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"bundle file {rel} is not valid JSON") from exc
    elif name == "config.pbtxt":
        try:
            p.read_text()
        except UnicodeDecodeError as exc:
            raise BundleError(f"bundle file {rel} is not text") from exc
    elif name == "model.py":
        if p.read_bytes() != template:
            raise BundleError(f"bundle file {rel} is not the python-backend model shipped with splitserve")
    else:
        raise BundleError(f"bundle file {rel} is neither ONNX nor JSON: refused (bundles carry no pickles)")


def copy_python_backend_model(dest: Path) -> None:
    """Write the shipped Triton python-backend ``model.py`` to ``dest`` (used by the exporter)."""
    shutil.copyfile(TRITON_PYTHON_MODEL, dest)
