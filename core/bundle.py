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

``manifest.json`` is :class:`Manifest`, typed throughout (:class:`SplitInfo`, :class:`LocalInfo`,
:class:`OffloadInfo`, :class:`ExportInfo`): the exporter writes :meth:`Manifest.to_dict` and every reader
gets :meth:`Manifest.from_dict`, its exact inverse (format ``splitserve.bundle``, ``format_version`` 1).

Opening a bundle checks the sha256 of every file, refuses files it does not list, and accepts only
ONNX, JSON, Triton ``config.pbtxt`` and the python-backend ``model.py`` that this splitserve ships
(byte-for-byte): never pickles.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .codec import CODEC_NAME, CODEC_VERSIONS, EntropyTables, read_leb128
from .errors import BundleError, IntegrityError, UnknownModelError
from .offload import OffloadLevel

__all__ = [
    "MANIFEST_FORMAT",
    "MANIFEST_VERSION",
    "OFFLOAD_SPLIT",
    "TRITON_PYTHON_MODEL",
    "Bundle",
    "CodecInfo",
    "ExportInfo",
    "Int8Info",
    "LevelInfo",
    "LocalInfo",
    "Manifest",
    "OffloadInfo",
    "SplitInfo",
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


_T = TypeVar("_T")


def _typed(value: Any, kind: type[_T], what: str) -> _T:
    """``value`` as a ``kind``: a string must be one, numbers go through ``int``/``float`` (as JSON holds them)."""
    if kind is str:
        if not isinstance(value, str):
            raise BundleError(f"malformed manifest: {what} {value!r} is not a string")
        return value  # type: ignore[return-value]
    if isinstance(value, (bool, str)) or not isinstance(value, (int, float)):
        raise BundleError(f"malformed manifest: {what} {value!r} is not a number")
    try:
        return kind(value)  # type: ignore[call-arg]
    except OverflowError as exc:  # int(inf)
        raise BundleError(f"malformed manifest: {what} {value!r} is not a finite number") from exc


def _need(d: Mapping[str, Any], key: str, kind: type[_T], entry: str) -> _T:
    """``d[key]`` as a ``kind`` (``KeyError`` where absent)."""
    return _typed(d[key], kind, f"{entry}.{key}")


def _optional(d: Mapping[str, Any], key: str, kind: type[_T], entry: str) -> _T | None:
    """``d[key]`` as a ``kind``; ``None`` where it is absent or null."""
    value = d.get(key)
    return None if value is None else _typed(value, kind, f"{entry}.{key}")


def _entry(d: Any, name: str) -> Mapping[str, Any]:
    if not isinstance(d, Mapping):
        raise BundleError(f"malformed manifest: {name} must be an object, not {type(d).__name__}")
    return d


def _present(**fields: Any) -> dict[str, Any]:
    """``fields`` less the absent (``None``) ones, in order: how optional entries are written."""
    return {k: v for k, v in fields.items() if v is not None}


@dataclass(frozen=True)
class LevelInfo:
    """One rate level of one split, with the figures measured at export."""

    level: int
    tables: str
    bytes_per_sample: float
    accuracy: float
    accuracy_fp32: float
    fidelity: float

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LevelInfo:
        what = f"split level {d.get('level')!r}"
        return cls(
            level=_need(d, "level", int, what),
            tables=_need(d, "tables", str, what),
            bytes_per_sample=_need(d, "bytes_per_sample", float, what),
            accuracy=_need(d, "accuracy", float, what),
            accuracy_fp32=_need(d, "accuracy_fp32", float, what),
            fidelity=_need(d, "fidelity", float, what),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SplitInfo:
        what = f"split {d.get('name')!r}"
        return cls(
            name=_need(d, "name", str, what),
            latent_shape=tuple(_typed(v, int, f"{what}.latent_shape") for v in d["latent_shape"]),  # type: ignore[arg-type]
            head_int8=_need(d, "head_int8", str, what),
            head_fp32=_need(d, "head_fp32", str, what),
            tail_model=_need(d, "tail_model", str, what),
            tail_onnx=_need(d, "tail_onnx", str, what),
            head_macs=_need(d, "head_macs", int, what),
            head_mac_share=_need(d, "head_mac_share", float, what),
            levels=tuple(LevelInfo.from_dict(_entry(lv, "a split level")) for lv in d["levels"]),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "latent_shape": list(self.latent_shape),
            "head_int8": self.head_int8,
            "head_fp32": self.head_fp32,
            "tail_model": self.tail_model,
            "tail_onnx": self.tail_onnx,
            "head_macs": self.head_macs,
            "head_mac_share": self.head_mac_share,
            "levels": [lv.to_dict() for lv in self.levels],
        }


@dataclass(frozen=True)
class LocalInfo:
    """The whole model on the device, for local fallback (manifest entry ``local``; every field optional).

    Attributes:
        fp32, int8: its ONNX files in the bundle.
        accuracy, accuracy_fp32: top-1 of the int8 and the fp32 model on the evaluation set; without
            ``accuracy`` the orchestrator offers no ``local`` option.
    """

    fp32: str | None = None
    int8: str | None = None
    accuracy: float | None = None
    accuracy_fp32: float | None = None

    @property
    def files(self) -> dict[str, str]:
        """Its ONNX files by precision (``fp32``, ``int8``), those it has."""
        return {k: v for k, v in (("fp32", self.fp32), ("int8", self.int8)) if v is not None}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LocalInfo:
        return cls(
            fp32=_optional(d, "fp32", str, "local"),
            int8=_optional(d, "int8", str, "local"),
            accuracy=_optional(d, "accuracy", float, "local"),
            accuracy_fp32=_optional(d, "accuracy_fp32", float, "local"),
        )

    def to_dict(self) -> dict[str, Any]:
        return _present(**asdict(self))


@dataclass(frozen=True)
class OffloadInfo:
    """The whole model in the cloud, sent the input image (manifest entry ``offload``).

    In the JSON, level 0 (PNG) is the entry's own ``codec``, ``bytes_per_sample`` and ``accuracy``, and the
    lossy levels are its ``levels`` list; here they are one tuple.

    Attributes:
        triton_model, onnx: the cloud's whole model (``""`` where the bundle serves no offload).
        levels: PNG (level 0) where measured, then the lossy levels as listed (see ``core.offload``).
    """

    triton_model: str = ""
    onnx: str = ""
    levels: tuple[OffloadLevel, ...] = ()

    def level(self, level: int) -> OffloadLevel:
        for info in self.levels:
            if info.level == level:
                return info
        raise UnknownModelError(f"no offload level {level} (levels: {[lv.level for lv in self.levels]})")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OffloadInfo:
        """Parse the ``offload`` entry.

        Raises:
            BundleError: a split other than ``input``, or levels that are not a list of at most 255 valid
                (:meth:`OffloadLevel.from_dict`), distinct ones.
        """
        if d.get("split", OFFLOAD_SPLIT) != OFFLOAD_SPLIT:
            raise BundleError(f"malformed manifest: offload split {d.get('split')!r} ({OFFLOAD_SPLIT!r} expected)")
        levels = []
        if {"bytes_per_sample", "accuracy"} <= d.keys():
            levels.append(OffloadLevel.from_dict({**d, "level": 0, "codec": d.get("codec", "png"), "quality": None}))
        raw = d.get("levels", [])
        if not isinstance(raw, list) or len(raw) > 255:
            raise BundleError("malformed manifest: offload levels must be a list of at most 255 entries")
        levels += [OffloadLevel.from_dict(_entry(entry, "an offload level")) for entry in raw]
        numbers = [lv.level for lv in levels]
        if len(set(numbers)) != len(numbers):
            raise BundleError(f"malformed manifest: offload levels {numbers} are not distinct")
        return cls(
            triton_model=_optional(d, "triton_model", str, "offload") or "",
            onnx=_optional(d, "onnx", str, "offload") or "",
            levels=tuple(levels),
        )

    def to_dict(self) -> dict[str, Any]:
        png = next((lv for lv in self.levels if lv.level == 0), None)
        return _present(
            split=OFFLOAD_SPLIT,
            codec=None if png is None else png.codec,
            triton_model=self.triton_model or None,
            onnx=self.onnx or None,
            bytes_per_sample=None if png is None else png.bytes_per_sample,
            accuracy=None if png is None else png.accuracy,
            levels=[lv.to_dict() for lv in self.levels if lv.level],
        )


@dataclass(frozen=True)
class CodecInfo:
    """The entropy codec the bundle's latents are coded with: its name and the newest version its tables need."""

    name: str
    version: int


@dataclass(frozen=True)
class Int8Info:
    """How the int8 models were quantized."""

    format: str
    weight_bits: int


@dataclass(frozen=True)
class ExportInfo:
    """What the exporter recorded about itself and its measurements (manifest entry ``extra``; all optional).

    Attributes:
        eval_set: the evaluation set every figure was measured on, in words.
        eval_size: its number of samples.
        created: when the bundle was written (ISO 8601, UTC).
        codec: the latent codec; :meth:`Bundle.open` refuses one this build does not speak.
        int8: the quantization of the int8 models.
    """

    eval_set: str | None = None
    eval_size: int | None = None
    created: str | None = None
    codec: CodecInfo | None = None
    int8: Int8Info | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ExportInfo:
        codec, int8 = d.get("codec"), d.get("int8")
        return cls(
            eval_set=_optional(d, "eval_set", str, "extra"),
            eval_size=_optional(d, "eval_size", int, "extra"),
            created=_optional(d, "created", str, "extra"),
            codec=None if codec is None else CodecInfo(
                _typed(_entry(codec, "extra.codec")["name"], str, "extra.codec"),
                _typed(codec["version"], int, "extra.codec"),
            ),
            int8=None if int8 is None else Int8Info(
                _typed(_entry(int8, "extra.int8")["format"], str, "extra.int8"),
                _typed(int8["weight_bits"], int, "extra.int8"),
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        return _present(**asdict(self))


@dataclass(frozen=True)
class Manifest:
    """The parsed ``manifest.json``: written by the exporter with :meth:`to_dict`, read with :meth:`from_dict`."""

    name: str
    version: str
    input_shape: tuple[int, ...]
    input_dtype: str
    preprocess: dict[str, int]
    classes: tuple[str, ...]
    total_macs: int
    unsplit_accuracy: float
    splits: tuple[SplitInfo, ...]
    local: LocalInfo
    offload: OffloadInfo
    files: dict[str, str]
    extra: ExportInfo = field(default_factory=ExportInfo)

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
        """Parse a manifest: every value typed, or one :class:`BundleError` (bounds: ``Bundle.open``)."""
        if not isinstance(d, dict):
            raise BundleError(f"malformed manifest: a JSON object is expected, not {type(d).__name__}")
        if d.get("format") != MANIFEST_FORMAT:
            raise BundleError(f"not a splitserve bundle manifest (format={d.get('format')!r})")
        if d.get("format_version") != MANIFEST_VERSION:
            raise BundleError(
                f"bundle format version {d.get('format_version')!r} is not supported (this build reads "
                f"{MANIFEST_VERSION})"
            )
        try:
            spec = _entry(d["input"], "input")
            preprocess = _entry(spec.get("preprocess", {}), "input.preprocess")
            files = _entry(d["files"], "files")
            return cls(
                name=_typed(d["name"], str, "name"),
                version=str(d["version"]),
                input_shape=tuple(_typed(v, int, "input.shape") for v in spec["shape"]),
                input_dtype=_typed(spec["dtype"], str, "input.dtype"),
                preprocess={k: _typed(v, int, "input.preprocess") for k, v in preprocess.items()},
                classes=tuple(_typed(c, str, "classes") for c in d["classes"]),
                total_macs=_typed(d["total_macs"], int, "total_macs"),
                unsplit_accuracy=_typed(d["unsplit_accuracy"], float, "unsplit_accuracy"),
                splits=tuple(SplitInfo.from_dict(_entry(s, "a split")) for s in d["splits"]),
                local=LocalInfo.from_dict(_entry(d["local"], "local")),
                offload=OffloadInfo.from_dict(_entry(d["offload"], "offload")),
                files={_typed(k, str, "files"): _typed(v, str, "files") for k, v in files.items()},
                extra=ExportInfo.from_dict(_entry(d.get("extra", {}), "extra")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BundleError(f"malformed manifest: {exc!r}") from exc

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``manifest.json``: :meth:`from_dict` reads it back to an equal manifest."""
        return {
            "format": MANIFEST_FORMAT,
            "format_version": MANIFEST_VERSION,
            "name": self.name,
            "version": self.version,
            "input": {"shape": list(self.input_shape), "dtype": self.input_dtype, "preprocess": dict(self.preprocess)},
            "classes": list(self.classes),
            "total_macs": self.total_macs,
            "unsplit_accuracy": self.unsplit_accuracy,
            "splits": [s.to_dict() for s in self.splits],
            "local": self.local.to_dict(),
            "offload": self.offload.to_dict(),
            "files": dict(self.files),
            "extra": self.extra.to_dict(),
        }


def _validate(m: Manifest) -> None:
    """Bounds a served manifest must keep (a hostile one is refused at open, not per request)."""

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise BundleError(f"malformed manifest: {what}")

    def name_ok(v: object, limit: int = 128) -> bool:
        return isinstance(v, str) and 0 < len(v) <= limit and all(c.isalnum() or c in "._-" for c in v)

    need(name_ok(m.name) and name_ok(m.version), "name and version must be 1-128 characters of [A-Za-z0-9._-]")
    need(len(m.input_shape) == 3 and all(1 <= v <= 8192 for v in m.input_shape), f"input shape {m.input_shape}")
    need(m.input_dtype == "uint8", f"input dtype {m.input_dtype!r} (uint8 expected)")
    need(0 < len(m.classes) <= 100_000 and all(isinstance(c, str) and len(c) <= 256 for c in m.classes),
         "classes must be 1-100000 names")
    need(0 <= m.total_macs < 10**15 and 0.0 <= m.unsplit_accuracy <= 1.0, "total_macs / unsplit_accuracy out of range")
    need(all(isinstance(k, str) and isinstance(v, str) and len(v) == 64 for k, v in m.files.items()),
         "files must map paths to sha256 hex digests")
    names = [s.name for s in m.splits]
    need(len(set(names)) == len(names) and OFFLOAD_SPLIT not in names, "split names must be unique")
    for s in m.splits:
        need(name_ok(s.name, 64), f"split name {s.name!r}")
        need(len(s.latent_shape) == 3 and all(1 <= v <= 65536 for v in s.latent_shape)
             and s.latent_shape[0] * s.latent_shape[1] * s.latent_shape[2] <= 1 << 24,
             f"latent_shape {list(s.latent_shape)} of split {s.name!r} (3 positive sizes, at most 2**24 values)")
        # head + encoder may exceed the whole model on a tiny one (a 2-conv net with a 1x1 encoder)
        need(0 <= s.head_macs < 10**15 and 0.0 <= s.head_mac_share <= 100.0, f"head MACs of split {s.name!r}")
        levels = [lv.level for lv in s.levels]
        need(0 < len(levels) <= 256 and len(set(levels)) == len(levels) and all(0 <= v < 256 for v in levels),
             f"levels of split {s.name!r} must be 1-256 distinct numbers in 0..255")
        for lv in s.levels:
            need(0 <= lv.bytes_per_sample < 1 << 30 and all(0.0 <= a <= 1.0 for a in (lv.accuracy, lv.accuracy_fp32, lv.fidelity)),
                 f"figures of {s.name!r} level {lv.level}")
            need(lv.tables in m.files, f"tables {lv.tables!r} of {s.name!r} level {lv.level} are not a bundle file")
        for rel in (s.head_int8, s.head_fp32, s.tail_onnx):
            need(rel in m.files, f"{rel!r} of split {s.name!r} is not a bundle file")
    need(all(a is None or 0.0 <= a <= 1.0 for a in (m.local.accuracy, m.local.accuracy_fp32)),
         "local accuracy out of range")


class Bundle:
    """An opened, verified bundle. Use :meth:`open`."""

    def __init__(self, root: Path, manifest: Manifest, *, _tmp: tempfile.TemporaryDirectory[str] | None = None):
        self.root = root
        self.manifest = manifest
        self._tmp = _tmp
        self._tables: dict[tuple[str, int], EntropyTables] = {}

    @classmethod
    def open(cls, path: str | Path, *, verify: bool = True, trusted_keys: tuple[bytes, ...] | None = None) -> Bundle:
        """Open a bundle directory or ``.tar``; with ``verify`` every file's sha256 is checked.

        With ``trusted_keys`` (raw Ed25519 public keys, see ``core.signing``) the manifest must also be
        signed by one of them.

        Raises:
            BundleError: missing, malformed, unsupported or unlisted files; an untrusted or bad signature.
            IntegrityError: a file's content differs from its recorded sha256.
        """
        path = Path(path)
        tmp = None
        if path.is_file() and tarfile.is_tarfile(path):
            tmp = tempfile.TemporaryDirectory(prefix="splitserve-bundle-")
            try:
                with tarfile.open(path) as tar:
                    tar.extractall(tmp.name, filter="data")
            except (tarfile.TarError, OSError) as exc:  # FilterError: members that leave the folder, links
                tmp.cleanup()
                raise BundleError(f"bundle archive {path} is refused: {exc}") from exc
            entries = list(Path(tmp.name).iterdir())
            root = entries[0] if len(entries) == 1 and entries[0].is_dir() else Path(tmp.name)
        elif path.is_dir():
            root = path
        else:
            raise BundleError(f"no bundle at {path}: expected a directory or a .tar written by `splitserve export`")
        manifest_path = root / "manifest.json"
        try:
            if manifest_path.is_symlink() or not manifest_path.is_file():
                raise FileNotFoundError(manifest_path)
            raw = json.loads(manifest_path.read_text())
        except FileNotFoundError as exc:
            raise BundleError(f"{path} has no manifest.json: not a splitserve bundle") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"{manifest_path} is not valid JSON: {exc}") from exc
        except RecursionError as exc:
            raise BundleError(f"{manifest_path} nests too deeply to be a manifest") from exc
        manifest = Manifest.from_dict(raw)
        _validate(manifest)
        coded = manifest.extra.codec
        if coded is not None and (coded.name != CODEC_NAME or coded.version not in CODEC_VERSIONS):
            raise BundleError(
                f"bundle {path} codes latents with {coded.name} v{coded.version}; this build speaks "
                f"{CODEC_NAME} v{'/'.join(map(str, CODEC_VERSIONS))}: re-export it with `splitserve export`"
            )
        if trusted_keys is not None:
            from .signing import verify_signature

            verify_signature(root, trusted_keys)
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
    present = set()
    for folder, dirs, names in os.walk(root):  # links are not followed: a link is refused, not read
        for entry in [*dirs, *names]:
            p = Path(folder) / entry
            rel = p.relative_to(root).as_posix()
            mode = p.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise BundleError(f"bundle {root} holds a link, {rel}: bundles hold regular files only")
            if entry in names:
                if not stat.S_ISREG(mode):
                    raise BundleError(f"bundle {root} holds {rel}, which is not a regular file")
                present.add(rel)
    present -= {"manifest.json", "manifest.sig"}
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
        if not _is_onnx(p.read_bytes()):
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


# ModelProto's fields and their protobuf wire types (0 varint, 2 length-delimited), from onnx.proto.
_MODEL_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}


def _is_onnx(data: bytes) -> bool:
    """Whether ``data`` parses as an ONNX ``ModelProto`` at its top level: known fields of the right wire
    types, lengths that end exactly at the end, an IR version and a graph (without the onnx package)."""
    pos, seen = 0, set()

    def varint() -> int:
        nonlocal pos
        value, pos = read_leb128(data, pos, max_bits=64)
        return value

    try:
        while pos < len(data):
            key = varint()
            number, wire = key >> 3, key & 7
            if _MODEL_FIELDS.get(number) != wire:
                return False
            length = varint() if wire == 2 else (varint(), 0)[1]
            if pos + length > len(data):
                return False
            pos += length
            seen.add(number)
    except ValueError:
        return False
    return data[:1] == bytes([_ONNX_FIRST_BYTE]) and {1, 7} <= seen


def copy_python_backend_model(dest: Path) -> None:
    """Write the shipped Triton python-backend ``model.py`` to ``dest`` (used by the exporter)."""
    shutil.copyfile(TRITON_PYTHON_MODEL, dest)
