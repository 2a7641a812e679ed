"""Split a user's own torch classifier: trace it, find where it can be cut, and make it a ``SplitBackbone``.

A network can be cut after a node of its traced graph when exactly one value crosses the cut (a skip
connection that jumps over it would need a second tensor on the wire). Those are the *cut points*;
among them, :func:`stage_boundaries` picks the last cut before each change of resolution, as timm's
``feature_info`` lists stage outputs. Users name split points by module name (``layer2``,
``features.6``) or let the boundaries be found::

    model = load_factory("mypkg.nets:build")()          # or "path/to/file.py:build"
    backbone = split_model(model, ModelSpec(name="mynet", splits=("layer2",), mean=..., std=...))

The pieces between consecutive cuts become the backbone's stages, so everything downstream (training,
int8 export, bundles) treats a user's network like a registered one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import sys
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from splitserve.core.errors import ConfigError, UnknownSplitPointError

from ._config import BackboneCfg, SplitPointCfg
from ._split import Normalize, SplitBackbone

__all__ = ["ModelSpec", "cut_points", "export_user_model", "load_factory", "split_model", "stage_boundaries"]


@dataclass(frozen=True)
class ModelSpec:
    """How a user's classifier is fed and where it may be split.

    Attributes:
        name: model name in the bundle.
        splits: module names to split after; empty: every stage boundary found by tracing.
        input_size: side of the square crop the model takes.
        resize: short side the edge resizes a photo to before the centre crop.
        mean, std: per-channel normalisation on the 0-255 scale (inside the exported graph).
        classes: class names; empty: ``class_<i>``.
    """

    name: str
    splits: tuple[str, ...] = ()
    input_size: int = 224
    resize: int = 256
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    classes: tuple[str, ...] = field(default_factory=tuple)


def load_factory(spec: str) -> Callable[[], nn.Module]:
    """``package.module:function`` or ``path/to/file.py:function`` -> the function.

    Raises:
        ConfigError: malformed spec, module not importable, or no such callable in it.
    """
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ConfigError(f"--model {spec!r}: expected package.module:function or file.py:function")
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise ConfigError(f"--model {spec!r}: no file {path}")
            mod_spec = importlib.util.spec_from_file_location(f"splitserve_user_{path.stem}", path)
            assert mod_spec is not None and mod_spec.loader is not None
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules[mod_spec.name] = module
            mod_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - any import failure is the user's module's
        raise ConfigError(f"--model {spec!r}: cannot import {target}: {type(exc).__name__}: {exc}") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"--model {spec!r}: {target} has no callable {attr!r}")
    return fn


def _trace(model: nn.Module, example: torch.Tensor) -> fx.GraphModule:
    try:
        gm = fx.symbolic_trace(model.eval())
    except Exception as exc:  # noqa: BLE001 - tracing errors come in many types
        raise ConfigError(
            f"the model does not trace with torch.fx ({type(exc).__name__}: {exc}); splitserve needs a static "
            "graph: move data-dependent control flow out of forward()"
        ) from exc
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(example)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"the model fails on a {tuple(example.shape)} input: {type(exc).__name__}: {exc}") from exc
    return gm


def cut_points(gm: fx.GraphModule) -> list[fx.Node]:
    """Nodes after which exactly one 4-D tensor (the node's own output) crosses to the rest."""
    nodes = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output", "get_attr")]
    order = {n: i for i, n in enumerate(nodes)}
    last_use = {n: max((order.get(u, len(nodes)) for u in n.users), default=-1) for n in nodes}
    cuts = []
    for i, n in enumerate(nodes[:-1]):
        live = [m for m in nodes[: i + 1] if last_use[m] > i]
        meta = n.meta.get("tensor_meta")
        if live == [n] and meta is not None and hasattr(meta, "shape") and len(meta.shape) == 4:
            cuts.append(n)
    return cuts


def stage_boundaries(gm: fx.GraphModule, input_size: int) -> list[fx.Node]:
    """Per spatial resolution below the input's, the narrowest cut point (the latest of equals): stage outputs.

    The final resolution is left out (a cut there leaves the device nearly the whole network).
    """
    by_res: OrderedDict[int, fx.Node] = OrderedDict()
    for n in cut_points(gm):
        res, chs = int(n.meta["tensor_meta"].shape[-1]), int(n.meta["tensor_meta"].shape[1])
        best = by_res.get(res)
        if res < input_size and (best is None or chs <= int(best.meta["tensor_meta"].shape[1])):
            by_res[res] = n
    bounds = list(by_res.values())
    return bounds[:-1] if len(bounds) > 1 else bounds


def _node_for(gm: fx.GraphModule, name: str) -> fx.Node:
    """The last node of module ``name`` (or the node called ``name``)."""
    found = None
    for n in gm.graph.nodes:
        owners = [str(v[0]) for v in (n.meta.get("nn_module_stack") or {}).values()]
        if n.op == "call_module":
            owners.append(str(n.target))
        if n.name == name or any(o == name or o.startswith(name + ".") for o in owners):
            found = n
    if found is None:
        raise UnknownSplitPointError(f"the model has no module or node named {name!r}")
    return found


def split_model(model: nn.Module, spec: ModelSpec) -> SplitBackbone:
    """Cut ``model`` at ``spec.splits`` (or its stage boundaries) into a ``SplitBackbone``.

    Raises:
        ConfigError: the model does not trace or run.
        UnknownSplitPointError: a named split does not exist, or a skip connection crosses it (the error
            lists the cut points there are).
    """
    example = torch.zeros(1, 3, spec.input_size, spec.input_size)
    gm = _trace(model, example)
    cuts = cut_points(gm)
    if spec.splits:
        chosen = []
        for name in spec.splits:
            node = _node_for(gm, name)
            if node not in cuts:
                modules = sorted({str(n.target) for n in cuts if n.op == "call_module"})
                raise UnknownSplitPointError(
                    f"cannot split after {name!r}: more than one tensor crosses there (a skip connection); "
                    f"modules that can be split after: {modules}"
                )
            chosen.append((name, node))
    else:
        chosen = [(str(n.target) if n.op == "call_module" else n.name, n) for n in stage_boundaries(gm, spec.input_size)]
        if not chosen:
            raise UnknownSplitPointError("found no point where the model can be cut (one tensor crossing)")
    nodes = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output")]
    position = {n: i for i, n in enumerate(nodes)}
    chosen.sort(key=lambda c: position[c[1]])
    bounds = [position[n] for _, n in chosen]

    def partition(node: fx.Node) -> int:
        return sum(position[node] > b for b in bounds)

    from torch.fx.passes.split_module import split_module

    parts = split_module(gm, model, partition)
    stages: OrderedDict[str, nn.Module] = OrderedDict()
    names = [_safe(n) for n, _ in chosen]
    for i, name in enumerate(names):
        stages[name] = getattr(parts, f"submod_{i}")
    classifier = getattr(parts, f"submod_{len(names)}")
    split_points = tuple(
        SplitPointCfg(name, name, int(node.meta["tensor_meta"].shape[1]),
                      spec.input_size // int(node.meta["tensor_meta"].shape[-1]))
        for name, (_, node) in zip(names, chosen)
    )
    with torch.no_grad():
        n_cls = int(model.eval()(example).shape[-1])
    classes = spec.classes or tuple(f"class_{i}" for i in range(n_cls))
    if len(classes) != n_cls:
        raise ConfigError(f"{len(classes)} class names given, the model has {n_cls} outputs")
    cfg = BackboneCfg(
        name=spec.name, input_shape=(3, spec.input_size, spec.input_size),
        preprocess={"resize": spec.resize, "crop": spec.input_size}, classes=classes,
        split_points=split_points, weights="user",
    )
    backbone = SplitBackbone(cfg, Normalize(list(spec.mean), list(spec.std)), stages, classifier).eval()
    _check_same(model, backbone, spec)
    return backbone


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"), dtype=np.uint8)


def _safe(name: str) -> str:
    return name.replace(".", "_")


def _check_same(model: nn.Module, backbone: SplitBackbone, spec: ModelSpec) -> None:
    """The cut network must compute what the user's network computes."""
    x = torch.randint(0, 256, (2, 3, spec.input_size, spec.input_size), dtype=torch.uint8)
    with torch.no_grad():
        want = model(backbone.preprocess(x))
        got = backbone(x)
    if not torch.allclose(want, got, rtol=1e-4, atol=1e-4):
        raise ConfigError("the split network does not reproduce the model's output (untraceable state?)")



def export_user_model(
    factory: str,
    spec: ModelSpec,
    images: Path,
    out_dir: Path,
    *,
    steps: int | None = None,
    fit: str = "fisher",
    heldout_every: int = 10,
    progress: bool = True,
) -> Path:
    """Split the user's model, make a bottleneck per split from ``images`` (no labels), export a bundle.

    ``fit="fisher"`` (the default) fits a linear transform code in the metric of the tail's Fisher
    information, in a few minutes and with nothing to over-fit (:func:`~splitserve.models.natural.fit_fisher`;
    on Lite0 and 287 photos it beat distillation by 13 points of held-out agreement); ``"distill"`` trains
    an encoder, decoder and the first tail stage by knowledge distillation for ``steps`` steps per split.
    Every ``heldout_every``-th image (sorted by path) is held out of training and measures the bundle:
    its figures are agreement with the unsplit model (the images have no labels).
    """
    from splitserve.core.natural_images import center_crop

    from ._config import BottleneckCfg
    from .export import EvalData, export_bundle
    from .natural import NaturalRecipe, PhotoViews, distill, fit_fisher, image_files, prepare_images
    from .zoo import cache_dir

    model = load_factory(factory)()
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--model {factory!r} returned {type(model).__name__}, not a torch.nn.Module")
    backbone = split_model(model, spec)
    files = image_files(images)
    held = files[::heldout_every]
    train = [f for f in files if f not in held] or files
    split_models = {}
    for sp in backbone.cfg.split_points:
        stride = 4 if sp.reduction <= 4 else 2
        recipe = NaturalRecipe(
            backbone=spec.name, split=sp.name, crop=spec.input_size,
            bottleneck=BottleneckCfg(latent_chs=max(8, sp.num_chs), hidden_chs=64, stride=stride,
                                     level_steps=(1.0, 1.4, 2.0)),
            steps=steps or NaturalRecipe.steps,
        )
        if fit == "fisher":  # a quarter (stride 2) or a sixteenth (stride 4) of each patch's values
            recipe = dataclasses.replace(recipe, fit="fisher", refine_blocks=0, tune_tail_stages=0, latent_scale=20.0,
                                         extra_level_steps=())
            split_models[sp.name] = fit_fisher(backbone, recipe, train, progress=progress)
            continue
        if fit != "distill":
            raise ConfigError(f"fit {fit!r} is not 'fisher' or 'distill'")
        digest = hashlib.sha256("".join(sorted(str(f) for f in train)).encode()).hexdigest()[:12]
        run = cache_dir() / "runs" / f"{spec.name}-{sp.name}-{recipe.key(digest)}"
        split_models[sp.name] = distill(backbone, recipe, train, run, progress=progress)
    eval_images = np.stack([center_crop(_rgb(f), spec.resize, spec.input_size) for f in held])
    with torch.no_grad():
        labels = backbone(torch.from_numpy(eval_images)).argmax(1).numpy()
    calib_src = PhotoViews(prepare_images(train, 512, cache_dir() / "prepared"), spec.input_size, (0.25, 1.0), 7)
    calib = np.stack([calib_src[i].numpy() for i in range(min(64, 8 * len(train)))])
    data = EvalData(calib=calib, images=eval_images, labels=labels,
                    name=f"{len(held)} held-out images of {images} (labels: the unsplit model's top-1)")
    return export_bundle(out_dir, backbone, split_models, data, progress=progress, int8_weight_bits=8)
