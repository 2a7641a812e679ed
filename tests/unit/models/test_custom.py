"""A user's own classifier, not in the registry: traced, cut, distilled on unlabelled images, exported."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from splitserve.core.bundle import Bundle
from splitserve.core.errors import ConfigError, UnknownSplitPointError
from splitserve.models.custom import ModelSpec, cut_points, export_user_model, load_factory, split_model

USER_MODEL = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv = nn.Conv2d(c, c, 3, 1, 1)

        def forward(self, x):
            return torch.relu(x + self.conv(x))  # a skip connection inside the block

    class TinyNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU())
            self.block1 = Block(8)
            self.down = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
            self.block2 = Block(16)
            self.fc = nn.Linear(16, 5)

        def forward(self, x):
            x = self.block2(self.down(self.block1(self.stem(x))))
            return self.fc(x.mean((2, 3)))

    def build():
        torch.manual_seed(0)
        return TinyNet()

    def not_a_model():
        return 3
    """
)


@pytest.fixture()
def user_file(tmp_path: Path) -> Path:
    path = tmp_path / "user_nets.py"
    path.write_text(USER_MODEL)
    return path


def _spec(**kw) -> ModelSpec:
    return ModelSpec(name="tinynet", input_size=64, resize=72, **kw)


def test_named_splits_cut_the_network_without_changing_it(user_file):
    model = load_factory(f"{user_file}:build")()
    backbone = split_model(model, _spec(splits=("block1", "down")))
    assert [(s.name, s.num_chs, s.reduction) for s in backbone.cfg.split_points] == [("block1", 8, 2), ("down", 16, 4)]
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        f = backbone.forward_edge(x, "block1")
        assert torch.allclose(backbone.forward_cloud(f, "block1"), backbone(x), atol=1e-5)


def test_stage_boundaries_are_found_when_no_split_is_named(user_file):
    backbone = split_model(load_factory(f"{user_file}:build")(), _spec())
    assert [s.reduction for s in backbone.cfg.split_points] == [2]  # the final resolution is left out


def test_bad_models_and_split_names_get_clear_errors(user_file, tmp_path):
    model = load_factory(f"{user_file}:build")()
    with pytest.raises(UnknownSplitPointError, match="no module or node named 'nope'"):
        split_model(model, _spec(splits=("nope",)))
    with pytest.raises(UnknownSplitPointError, match="skip connection"):
        split_model(model, _spec(splits=("block1.conv",)))
    with pytest.raises(ConfigError, match="no callable 'missing'"):
        load_factory(f"{user_file}:missing")
    with pytest.raises(ConfigError, match="cannot import"):
        load_factory("no_such_package_xyz.nets:build")
    with pytest.raises(ConfigError, match="expected package.module:function"):
        load_factory("just_a_name")

    class Dynamic(torch.nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x  # data-dependent control flow

    with pytest.raises(ConfigError, match="does not trace"):
        split_model(Dynamic(), _spec())
    with pytest.raises(ConfigError, match="not a torch.nn.Module"):
        export_user_model(f"{user_file}:not_a_model", _spec(), tmp_path, tmp_path / "b", steps=1, progress=False)


def test_cut_points_exclude_places_a_skip_connection_crosses(user_file):
    from splitserve.models.custom import _trace

    gm = _trace(load_factory(f"{user_file}:build")(), torch.zeros(1, 3, 64, 64))
    names = [n.name for n in cut_points(gm)]
    assert "block1_conv" not in names and "stem_1" in names


def test_export_from_a_folder_of_unlabelled_images(user_file, tmp_path, monkeypatch):
    monkeypatch.setenv("SPLITSERVE_CACHE", str(tmp_path / "cache"))
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(images / f"im{i}.jpg")
    (images / "notes.txt").write_text("not an image")
    out = export_user_model(f"{user_file}:build", _spec(splits=("down",)), images, tmp_path / "bundle",
                            heldout_every=3, progress=False)  # fitted (the default): no training loop
    bundle = Bundle.open(out)
    m = bundle.manifest
    assert m.name == "tinynet" and [s.name for s in m.splits] == ["down"]
    assert m.preprocess == {"resize": 72, "crop": 64} and m.input_shape == (3, 64, 64)
    assert len(m.splits[0].levels) == 3 and m.splits[0].levels[0].bytes_per_sample > 0
    bundle.close()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("x")
    distilled = export_user_model(f"{user_file}:build", _spec(splits=("down",)), images, tmp_path / "bundle2",
                                  steps=2, fit="distill", heldout_every=3, progress=False)
    assert len(Bundle.open(distilled).manifest.splits[0].levels) == 3
    with pytest.raises(ConfigError, match=r"no readable image in .* \(1 files skipped"):
        export_user_model(f"{user_file}:build", _spec(), empty, tmp_path / "b2", steps=1, progress=False)


def test_cli_errors_are_one_line_with_a_nonzero_exit(user_file, tmp_path):
    from click.testing import CliRunner

    from splitserve.cli.main import cli

    empty = tmp_path / "empty"
    empty.mkdir()
    runner = CliRunner()
    res = runner.invoke(cli, ["export", "--model", f"{user_file}:build", "--images", str(empty), "--out",
                              str(tmp_path / "b"), "--input-size", "64"])
    assert res.exit_code == 2 and res.output.strip().startswith("error: no readable image in")
    res = runner.invoke(cli, ["export", "--model", f"{user_file}:build", "--images", str(empty), "--out",
                              str(tmp_path / "b"), "--split", "nope", "--input-size", "64"])
    assert res.exit_code == 2 and "no module or node named 'nope'" in res.output
    res = runner.invoke(cli, ["export", "--model", f"{user_file}:build"])
    assert res.exit_code == 2 and "--model needs --images" in res.output
