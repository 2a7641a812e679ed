"""Model toolkit: registry, splitting, bottleneck lifecycle, exported int8 heads, rate of the real stream."""

from __future__ import annotations

import onnx
import pytest
import torch

from splitserve.core import codec
from splitserve.core.bundle import Bundle
from splitserve.core.datasets import load_fashion_mnist
from splitserve.core.errors import DuplicateRegistrationError, UnknownBackboneError, UnknownSplitPointError
from splitserve.models import (
    BottleneckCfg,
    get_backbone,
    get_backbone_cfg,
    list_backbones,
    list_split_points,
    register_backbone,
)
from splitserve.models._split import count_macs
from splitserve.models.bottleneck import BottleneckCodec

torch.manual_seed(0)


class TestRegistry:
    def test_lists_backbones_and_split_points(self):
        assert "fmnist_resnet" in list_backbones()
        assert list_split_points("fmnist_resnet") == ["stem", "layer1", "layer2"]

    def test_unknown_names_raise(self):
        with pytest.raises(UnknownBackboneError, match="unknown backbone 'nope'"):
            get_backbone("nope")
        with pytest.raises(UnknownSplitPointError, match="no split point 'layer9'"):
            get_backbone_cfg("fmnist_resnet").split_point("layer9")

    def test_duplicate_registration_raises(self):
        with pytest.raises(DuplicateRegistrationError):
            register_backbone(get_backbone_cfg("fmnist_resnet"))(lambda: None)


# The ImageNet backbones are tested the same way on smaller inputs in test_imagenet_backbones.py.
@pytest.mark.parametrize("name", [n for n in list_backbones() if get_backbone_cfg(n).input_shape[-1] <= 32])
class TestSplitBackbone:
    def test_edge_then_cloud_equals_whole_model(self, name):
        model = get_backbone(name)().eval()
        cfg = model.cfg
        x = torch.randint(0, 256, (3, *cfg.input_shape), dtype=torch.uint8)
        with torch.no_grad():
            whole = model(x)
            for sp in cfg.split_points:
                f = model.forward_edge(x, sp.name)
                assert f.shape[1] == sp.num_chs
                assert f.shape[-1] == cfg.input_shape[-1] // sp.reduction
                torch.testing.assert_close(model.forward_cloud(f, sp.name), whole)

    def test_bottleneck_lifecycle(self, name):
        model = get_backbone(name)().eval()
        sp = model.cfg.split_points[-1]
        bcfg = model.cfg.bottleneck.get(sp.name, BottleneckCfg())
        bn = BottleneckCodec(sp.num_chs, bcfg).eval()
        x = torch.randint(0, 256, (2, *model.cfg.input_shape), dtype=torch.uint8)
        f = model.forward_edge(x, sp.name)
        with pytest.raises(RuntimeError, match="Run update"):
            bn.export_tables(0)
        out = bn(f, level=0)
        assert out["y_hat"].shape == f.shape
        assert torch.all((out["likelihoods"] > 0) & (out["likelihoods"] <= 1))
        bn.update()
        for level in range(bn.num_levels):
            tables = bn.export_tables(level)
            assert tables.channels == bcfg.latent_chs
            assert tables.step == pytest.approx(bcfg.level_steps[level])


def test_count_macs_counts_convolutions():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    assert count_macs(conv, torch.zeros(1, 3, 10, 10)) == 10 * 10 * 8 * 3 * 9


def test_int8_heads_are_quantized(test_bundle):
    b = Bundle.open(test_bundle)
    for s in b.manifest.splits:
        graph = onnx.load(str(b.path(s.head_int8))).graph
        ops = {n.op_type for n in graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
        assert int8_weights, "weights are not stored as int8"


def test_stream_bytes_match_the_entropy_models_rate(test_bundle):
    """Bytes on the wire are within 2% of the rate the trained EntropyBottleneck predicts."""
    from splitserve.models.zoo import RECIPES, trained_backbone, trained_split

    recipe = RECIPES["fmnist_resnet-test"]
    teacher, _ = trained_backbone(recipe)
    x, _ = load_fashion_mnist("test")
    x = torch.from_numpy(x[:300])
    for split in recipe.splits:
        sm = trained_split(recipe, teacher, split)
        with torch.no_grad():
            f = sm.features(x)
            y = sm.codec.encoder(f).numpy()
            for level in range(sm.codec.num_levels):
                model_bits = -torch.log2(sm.codec(f, level)["likelihoods"]).sum().item()
                tables = sm.codec.export_tables(level)
                real = sum(len(codec.encode(v, tables)[0]) for v in y)
                assert abs(real * 8 / model_bits - 1) < 0.02, (split, level, real * 8, model_bits)


def test_fine_tuned_head_is_a_student_copy_and_the_teacher_stays_frozen():
    """With ``head_lr`` the edge head is the fine-tuned student copy; without it, the teacher's own stages."""
    from splitserve.models.train import train_split

    teacher = get_backbone("fmnist_resnet")().eval()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    images, labels = load_fashion_mnist("train")
    cfg = BottleneckCfg(latent_chs=4, hidden_chs=8, stride=2, level_steps=(1.0,))
    kw = {"hd_epochs": 0.2, "kd_epochs": 0.2, "batch": 64, "label_weight": 0.5}
    tuned = train_split(teacher, "stem", cfg, images[:320], labels[:320], head_lr=1e-3, **kw)
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(v, before[k])
    head_conv = tuned.edge_head().stages[0][0].weight
    assert not torch.equal(head_conv, teacher.stages.stem[0].weight)
    frozen = train_split(teacher, "stem", cfg, images[:320], labels[:320], **kw)
    assert frozen.head is None and frozen.edge_head().stages[0] is teacher.stages.stem
    with pytest.raises(ValueError, match="one label per training image"):
        train_split(teacher, "stem", cfg, images[:320], None, **kw)


def test_recipes_command_lists_every_recipe_with_its_training_length() -> None:
    from click.testing import CliRunner

    from splitserve.cli.main import cli
    from splitserve.models.zoo import RECIPES

    out = CliRunner().invoke(cli, ["recipes"])
    assert out.exit_code == 0, out.output
    lines = {line.split()[0]: line for line in out.output.splitlines() if line.strip()}
    assert set(lines) == set(RECIPES)
    assert "kd_epochs=16 " in lines["fmnist_resnet"] and "kd_epochs=3 " in lines["fmnist_resnet-quick"]
    assert "layer1_kd_epochs=40 " in lines["fmnist_resnet"] and "layer1_kd" not in lines["fmnist_resnet-quick"]


def test_backbone_training_under_bf16_autocast_keeps_float32_weights():
    """bf16 autocast changes the arithmetic of the forward pass only: weights stay float32 and learn."""
    from splitserve.models.train import train_classifier

    images, labels = load_fashion_mnist("train")
    model = get_backbone("fmnist_resnet")()
    before = model.stages.stem[0].weight.detach().clone()
    trained = train_classifier(model, images[:256], labels[:256], epochs=1, batch=32, bf16=True)
    weights = list(trained.state_dict().values())
    assert all(w.dtype in (torch.float32, torch.int64) for w in weights)
    assert not torch.equal(trained.stages.stem[0].weight, before)
    assert torch.isfinite(trained(torch.from_numpy(images[:8]))).all()


def test_cache_keys_follow_everything_a_bundle_is_built_from(monkeypatch):
    """Backbone, split and bundle keys change with the training settings, the bf16 switch and the
    backbone's default bottlenecks (which a recipe need not name)."""
    import dataclasses

    from splitserve.models import zoo

    base = zoo.RECIPES["fmnist_resnet-quick"]
    keys = {zoo.bundle_key(base)}
    for change in ({"backbone_batch": 128}, {"backbone_lr": 0.1}, {"backbone_epochs": 5}, {"kd_epochs": 4.0}):
        variant = dataclasses.replace(base, **change)
        keys.add(zoo.bundle_key(variant))
        if "kd_epochs" not in change:
            assert variant.backbone_key() != base.backbone_key(), change
    assert len(keys) == 5
    longer = dataclasses.replace(base, split_kd_epochs={"layer1": 9.0})
    assert longer.kd_epochs_for("layer1") == 9.0 and longer.kd_epochs_for("stem") == base.kd_epochs
    assert zoo.split_key(longer, "stem") == zoo.split_key(base, "stem")  # the other split stays cached
    assert zoo.split_key(longer, "layer1") != zoo.split_key(base, "layer1")

    monkeypatch.setattr(zoo, "bf16_native", lambda: True)
    assert base.bf16 and base.backbone_key().endswith("-bf16")
    assert not dataclasses.replace(base, backbone_bf16=False).bf16
    monkeypatch.setattr(zoo, "bf16_native", lambda: False)
    assert not base.bf16 and not base.backbone_key().endswith("-bf16")

    cfg = get_backbone_cfg("fmnist_resnet")
    moved = dataclasses.replace(cfg.bottleneck["stem"], latent_chs=cfg.bottleneck["stem"].latent_chs + 1)
    before = zoo.bundle_key(base)
    monkeypatch.setattr(zoo, "get_backbone_cfg", lambda name: dataclasses.replace(cfg, bottleneck={**cfg.bottleneck, "stem": moved}))
    assert base.bottleneck_for("stem") == moved
    assert zoo.bundle_key(base) != before
