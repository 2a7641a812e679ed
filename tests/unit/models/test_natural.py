"""The natural-image EfficientNet split: disjoint data, a (tiny) training run, the benchmark's statistics."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from splitserve.benchmarks.natural import _agreement, _jpeg, _summary, wilson_interval
from splitserve.core import codec
from splitserve.models import BottleneckCfg
from splitserve.models.backbones.efficientnet import efficientnet_lite0
from splitserve.models.natural import NATURAL_RECIPES, _train, eval_views, train_views

TINY = dataclasses.replace(
    NATURAL_RECIPES["efficientnet_lite0-natural"],
    bottleneck=BottleneckCfg(latent_chs=4, hidden_chs=8, stride=4, level_steps=(1.0, 2.0)),
    train_views=4, hd_steps=2, hd_batch=2, patch=16, kd_steps=1, kd_batch=2,
)


def test_views_are_seeded_and_eval_keeps_centre_crops_first():
    a = train_views(dataclasses.replace(TINY, train_views=2))
    assert a.shape == (2, 3, 224, 224) and a.dtype == np.uint8
    assert np.array_equal(a, train_views(dataclasses.replace(TINY, train_views=2)))
    images, labels, index = eval_views(1)
    assert images.shape == (40, 3, 224, 224)
    assert labels[:4].tolist() == [243, 243, 559, 559] and index[:4].tolist() == [0, 0, 1, 1]


def test_tiny_training_run_gives_a_codable_split():
    teacher = efficientnet_lite0(pretrained=False)
    sm = _train(TINY, teacher, train_views(TINY))
    assert not any(p.requires_grad for p in sm.tail.parameters())
    assert not isinstance(sm.codec.decoder[-1], torch.nn.ReLU)  # signed features are reconstructed
    x = torch.from_numpy(train_views(TINY)[:1])
    with torch.no_grad():
        y = sm.edge_head()(x).numpy()[0]
        assert y.shape == (4, 14, 14)
        tables = sm.codec.export_tables(1)
        q = codec.quantize(y, tables)
        data = codec.encode_symbols(q, tables)
        assert np.array_equal(codec.decode_symbols(data, q.shape, tables), q)
        logits = sm.cloud_tail()(torch.from_numpy(codec.dequantize(q, tables))[None])
    assert logits.shape == (1, 1000)


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


def test_jpeg_baseline_round_trips_the_crop():
    images = eval_views(0)[0][:2]
    sizes, decoded = _jpeg(images, 90)
    assert decoded.shape == images.shape and decoded.dtype == np.uint8
    assert (sizes > 1000).all() and np.abs(decoded.astype(int) - images).mean() < 8


def test_summary_picks_the_smallest_point_that_meets_the_target():
    agree = lambda a: {"views": {"agreement": a}, "centre": {"agreement": a}}
    points = [
        {"split": "stage2", "level": lv, "int8": True, "bytes_per_image": b, "head_mac_share": 0.2, **agree(a)}
        for lv, b, a in ((0, 1900, 0.97), (1, 1500, 0.955), (2, 1100, 0.93))
    ]
    baselines = [{"name": "jpeg-q5", "bytes_per_image": 1400, **agree(0.6)},
                 {"name": "jpeg-q50", "bytes_per_image": 6000, **agree(0.96)}]
    s = _summary(points, baselines)
    assert s["met"] and s["best"]["level"] == 1
    assert s["best"]["best_jpeg_within_bytes"]["name"] == "jpeg-q5"
    assert s["best"]["smallest_jpeg_as_good"]["name"] == "jpeg-q50"
