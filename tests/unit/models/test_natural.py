"""The natural-image distillation: views from disk, a resumable (tiny) run, the benchmark's statistics."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from splitserve.benchmarks.natural import _agreement, _encode, _summary, wilson_interval
from splitserve.core import codec
from splitserve.core.errors import ConfigError
from splitserve.core.natural_images import PHOTO_FILES, package_file
from splitserve.models import BottleneckCfg
from splitserve.models.backbones.efficientnet import efficientnet_lite0
from splitserve.models.natural import NaturalRecipe, PhotoViews, distill, heldout_views, prepare_images

TINY = NaturalRecipe(
    bottleneck=BottleneckCfg(latent_chs=4, hidden_chs=8, stride=2, level_steps=(1.0, 2.0)), refine_blocks=1,
    steps=4, batch=2, crop=96, warmup_steps=1, checkpoint_every=1, log_every=1, prepare_side=128,
)


@pytest.fixture(scope="module")
def photo_files() -> list:
    return [package_file(dist, rel) for dist, rel in PHOTO_FILES[:3]]


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPLITSERVE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_views_are_a_pure_function_of_their_index(photo_files, cache):
    files = prepare_images(photo_files, 128, cache / "prepared")
    assert all(min(__import__("PIL.Image").Image.open(f).size) <= 128 for f in files)
    views = PhotoViews(files, 64, (0.2, 1.0), seed=3)
    a, b = views[5], views[5]
    assert a.shape == (3, 64, 64) and a.dtype == torch.uint8 and torch.equal(a, b)
    assert not torch.equal(views[5], views[6])


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(photo_files, cache, tmp_path):
    torch.manual_seed(0)
    teacher = efficientnet_lite0(pretrained=False)
    straight = distill(teacher, TINY, photo_files, tmp_path / "a", progress=False)
    distill(teacher, TINY, photo_files, tmp_path / "b", steps=2, progress=False)
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["step"] == 2
    resumed = distill(teacher, TINY, photo_files, tmp_path / "b", progress=False)
    for (name, x), (_, y) in zip(straight.codec.state_dict().items(), resumed.codec.state_dict().items()):
        assert torch.allclose(x.float(), y.float(), atol=1e-5), name
    log = [json.loads(line) for line in (tmp_path / "b" / "progress.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4] and {"kd", "feat", "kib", "agree"} <= set(log[0]["L0"])
    sessions = json.loads((tmp_path / "b" / "run.json").read_text())["sessions"]
    assert [s["from_step"] for s in sessions] == [0, 2] and sessions[0]["cpu"]


def test_the_trained_split_codes_and_classifies(photo_files, cache, tmp_path):
    teacher = efficientnet_lite0(pretrained=False)
    sm = distill(teacher, dataclasses.replace(TINY, steps=1), photo_files, tmp_path / "run", progress=False)
    tuned, frozen = sm.tail[0], list(sm.tail)[1:]
    assert tuned is not teacher.cloud_modules("stage3")[0] and all(p.requires_grad for p in tuned.parameters())
    assert not any(p.requires_grad for m in frozen for p in m.parameters())
    assert all(a is b for a, b in zip(frozen, teacher.cloud_modules("stage3")[1:]))
    x = torch.zeros(1, 3, 224, 224, dtype=torch.uint8)
    with torch.no_grad():
        y = sm.edge_head()(x).numpy()[0]
        assert y.shape == (4, 14, 14)  # stage3 is 28x28, the patch transform halves it
        tables = sm.codec.export_tables(1)
        q = codec.quantize(y, tables)
        assert np.array_equal(codec.decode_symbols(codec.encode_symbols(q, tables), q.shape, tables), q)
        assert sm.cloud_tail()(torch.from_numpy(codec.dequantize(q, tables))[None]).shape == (1, 1000)


def test_held_out_photos_need_the_corpus(cache):
    with pytest.raises(ConfigError, match="splitserve data photos --split heldout"):
        heldout_views(1)


def test_wilson_interval():
    lo, hi = wilson_interval(95, 100)
    assert lo == pytest.approx(0.8883, abs=1e-4) and hi == pytest.approx(0.9785, abs=1e-4)
    assert wilson_interval(20, 20)[0] == pytest.approx(0.8389, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_agreement_counts_views_and_centre_crops():
    ref = np.array([1, 1, 2, 2])
    out = _agreement(np.array([1, 0, 2, 2]), ref, np.array([True, False, True, False]))
    assert out["views"]["agreement"] == 0.75 and out["views"]["n"] == 4
    assert out["centre"]["agreement"] == 1.0 and out["centre"]["n"] == 2


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_codec_baselines_round_trip_the_input(fmt):
    images = np.random.default_rng(0).integers(0, 255, (2, 3, 32, 32), dtype=np.uint8)
    images[:, :, :16] = 128  # some flat area
    sizes, decoded = _encode(images, fmt, 90)
    assert decoded.shape == images.shape and decoded.dtype == np.uint8 and (sizes > 100).all()
    assert np.abs(decoded[:, :, :16].astype(int) - 128).mean() < 3


def test_summary_checks_the_targets_and_prices_the_codecs():
    def agree(a):
        return {"views": {"agreement": a}, "centre": {"agreement": a}}

    points = [
        {"split": "stage3", "level": lv, "int8": True, "bytes_centre": b, "bytes_per_image": b, **agree(a)}
        for lv, b, a in ((0, 2400, 0.95), (1, 1900, 0.94), (2, 1100, 0.90))
    ]
    baselines = [{"codec": "jpeg", "quality": 10, "bytes_centre": 4000, "bytes_per_image": 4000, **agree(0.9)},
                 {"codec": "webp", "quality": 50, "bytes_centre": 9000, "bytes_per_image": 9000, **agree(0.96)}]
    timing = {"local": {"fp32": 10.0, "int8": 6.0}, "stage3": {"fp32": 3.0, "int8": 2.5, "encode_level0": 0.1}}
    s = _summary(points, baselines, timing)
    assert s["met"] and s["best"]["level"] == 1 and not s["stretch_met"]
    by_level = {r["level"]: r for r in s["vs_codecs"]}
    assert by_level[1]["codec"] == "webp q50" and by_level[1]["ratio"] == pytest.approx(9000 / 1900)
    assert by_level[2]["codec"] == "jpeg q10"
    assert s["local_int8_speedup"] == pytest.approx(10 / 6)
    assert s["head_plus_encode_share_of_local"]["stage3"] == pytest.approx(2.6 / 6)


def test_levels_fitted_after_training_extend_the_codec(photo_files, cache, tmp_path):
    from splitserve.models.natural import add_levels

    teacher = efficientnet_lite0(pretrained=False)
    recipe = dataclasses.replace(TINY, steps=1, extra_level_steps=(0.5,), extra_level_views=4, extra_level_iters=3)
    trained = distill(teacher, recipe, photo_files, tmp_path / "run", progress=False)
    full = add_levels(trained, recipe, photo_files)
    assert full.codec.num_levels == 3 and full.codec.steps.tolist() == [1.0, 2.0, 0.5]
    assert torch.equal(full.codec.encoder[1].weight, trained.codec.encoder[1].weight)  # the encoder is kept
    x = torch.zeros(1, 3, 96, 96, dtype=torch.uint8)
    with torch.no_grad():
        y = full.edge_head()(x).numpy()[0]
    fine, coarse = full.codec.export_tables(2), full.codec.export_tables(0)
    assert fine.step == 0.5 and len(codec.encode_symbols(codec.quantize(y, fine), fine)) > 0
    assert coarse.step == 1.0


def test_committed_weights_fit_their_recipes_and_hashes():
    """Every committed weight file is still what its recipe builds (else the recipe changed: retrain)."""
    from splitserve.core.bundle import sha256_file
    from splitserve.models.natural import NATURAL_RECIPES, WEIGHTS_DIR

    for side in WEIGHTS_DIR.glob("*.json"):
        meta = json.loads(side.read_text())
        assert NATURAL_RECIPES[meta["recipe"]].key(meta["data_digest"]) == meta["key"], side.name
        assert sha256_file(side.with_suffix(".pt")) == meta["sha256"] and meta["bytes"] <= 5 * 2**20
        assert side.stem == f"{meta['recipe']}-{meta['key']}" and meta["command"] and meta["figures"]


def test_committed_weights_are_used_only_while_they_fit(tmp_path, monkeypatch):
    from splitserve.core.bundle import sha256_file
    from splitserve.core.errors import IntegrityError
    from splitserve.models import natural

    monkeypatch.setattr(natural, "WEIGHTS_DIR", tmp_path)
    monkeypatch.setitem(natural.NATURAL_RECIPES, "tiny", TINY)
    key = TINY.key("digest0")
    (tmp_path / f"tiny-{key}.pt").write_bytes(b"weights")
    meta = {"recipe": "tiny", "key": key, "data_digest": "digest0", "sha256": sha256_file(tmp_path / f"tiny-{key}.pt")}
    (tmp_path / f"tiny-{key}.json").write_text(json.dumps(meta))
    assert natural.committed_weights("tiny")[0] == tmp_path / f"tiny-{key}.pt"
    monkeypatch.setitem(natural.NATURAL_RECIPES, "tiny", dataclasses.replace(TINY, steps=5))
    assert natural.committed_weights("tiny") is None  # the recipe changed: stale, not reused
    monkeypatch.setitem(natural.NATURAL_RECIPES, "tiny", TINY)
    (tmp_path / f"tiny-{key}.pt").write_bytes(b"tampered")
    with pytest.raises(IntegrityError, match="does not match the sha256"):
        natural.committed_weights("tiny")


def test_fisher_code_keeps_what_the_tail_is_sensitive_to():
    """Two feature directions with equal variance: the one the gradients point along is kept."""
    from splitserve.models.natural import NaturalCodec

    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(64, 2, 4, 4, generator=gen)
    grads = torch.zeros_like(feats)
    grads[:, 1] = torch.randn(64, 4, 4, generator=gen)  # the tail looks only at channel 1
    cfg = BottleneckCfg(latent_chs=1, hidden_chs=4, stride=1, level_steps=(1.0,))
    code = NaturalCodec(2, cfg, refine_blocks=0)
    code.init_fisher(feats, grads, scale=1.0, eps=0.01)
    w = code.encoder[1].weight[:, :, 0, 0]
    assert abs(float(w[0, 1])) > 10 * abs(float(w[0, 0]))
    with torch.no_grad():
        rebuilt = code.decoder(code.encoder(feats))
    assert torch.allclose(rebuilt[:, 1], feats[:, 1], atol=1e-3)  # kept exactly (no quantization here)
    plain = NaturalCodec(2, cfg, refine_blocks=0)
    plain.init_fisher(feats, torch.randn(64, 2, 4, 4, generator=gen), scale=1.0, eps=0.01)
    with torch.no_grad():  # isotropic sensitivity: principal components, the error is what PCA leaves
        err = (plain.decoder(plain.encoder(feats)) - feats).pow(2).mean()
    assert float(err) < float(feats.var())


def test_fitted_recipe_builds_a_codec_without_a_training_loop(photo_files, cache):
    from splitserve.models.natural import fit_fisher

    recipe = dataclasses.replace(TINY, fit="fisher", refine_blocks=0, tune_tail_stages=0, fit_views=4,
                                 extra_level_steps=(), extra_level_iters=3)
    model = fit_fisher(efficientnet_lite0(pretrained=False), recipe, photo_files, progress=False)
    assert model.codec.num_levels == 2 and list(model.tail.parameters())  # the teacher's own tail
    x = torch.zeros(1, 3, 96, 96, dtype=torch.uint8)
    with torch.no_grad():
        y = model.edge_head()(x).numpy()[0]
    tables = model.codec.export_tables(0)
    assert len(codec.encode_symbols(codec.quantize(y, tables), tables)) > 0
