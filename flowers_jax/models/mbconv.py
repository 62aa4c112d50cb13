"""The inverted-residual ("MBConv") backbone that EfficientNet and MobileNetV2 share.

An `Arch` is the architecture table of one model: every block spelled out with its
channels, kernel, stride, expansion and squeeze-excite width, plus the layer names
of the family. Layer names are those of `keras.applications`, so the same names
import Keras weights and (read backwards) export them. The Flax module below has
no architecture knowledge of its own: it walks the table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from flowers_jax.models.kernels import DepthwiseImpl, Kernels, Layers, resolve, resolve_depthwise
from flowers_jax.models.layers import ACTIVATIONS

# Keras's EfficientNet initialisers (fan-out variance scaling), used for fresh layers.
CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "truncated_normal")


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One inverted-residual block.

    Attributes:
      prefix: Keras layer-name prefix, e.g. "block2a_" or "block_3_".
      in_ch, out_ch: input/output channels.
      expand_ch: channels after the 1x1 expansion (== in_ch: no expansion conv).
      kernel, stride: of the depthwise convolution.
      se_ch: squeeze-excite bottleneck width (0: no squeeze-excite).
      drop_rate: stochastic-depth rate of the residual branch.
    """

    prefix: str
    in_ch: int
    out_ch: int
    expand_ch: int
    kernel: int
    stride: int
    se_ch: int = 0
    drop_rate: float = 0.0

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_ch == self.out_ch


def make_divisible(v: float, divisor: int = 8) -> int:
    """Keras/TF channel rounding (MobileNetV2's `_make_divisible`, EfficientNet's `round_filters`):
    the nearest multiple of `divisor`, at least `divisor`, never below 90% of `v`."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new < 0.9 * v:
        new += divisor
    return new


def drop_rate(drop_connect_rate: float, block: int, total: int) -> float:
    """Block `block`'s stochastic-depth rate of `total`: rising linearly from 0 toward
    `drop_connect_rate` (Keras's and TF's EfficientNet rule)."""
    return drop_connect_rate * block / total


def stack(
    stem_ch: int,
    stages: Sequence[tuple[int, int, int, int, int]],
    prefix: Callable[[int, int, int], str],
    *,
    se_ratio: float = 0.0,
    drop_connect_rate: float = 0.0,
) -> tuple[BlockSpec, ...]:
    """The blocks of a backbone from its stages, each (out_ch, repeats, kernel, stride, expansion).

    A stage's first block takes the stage's stride and the width before it; the others stride 1 at
    out_ch. `prefix(stage, j, b)` names block j of a stage (b: its index in the whole backbone).
    Keras's EfficientNet blocks also have squeeze-excite of `se_ratio` x their input width and a
    stochastic-depth rate rising linearly to `drop_connect_rate` (0: none, as MobileNetV2).
    """
    total = sum(repeats for _, repeats, *_ in stages)
    blocks: list[BlockSpec] = []
    in_ch = stem_ch
    for s, (out_ch, repeats, kernel, stride, expansion) in enumerate(stages):
        for j in range(repeats):
            b = len(blocks)
            spec = BlockSpec(
                prefix=prefix(s, j, b),
                in_ch=in_ch,
                out_ch=out_ch,
                expand_ch=in_ch * expansion,
                kernel=kernel,
                stride=stride if j == 0 else 1,
                se_ch=max(1, int(in_ch * se_ratio)) if se_ratio else 0,
                drop_rate=drop_rate(drop_connect_rate, b, total),
            )
            blocks.append(spec)
            in_ch = out_ch
    return tuple(blocks)


# The families' Keras layer names: role -> (EfficientNet's, MobileNetV2's). Block layers get the
# block's prefix ("block2a_", "block_3_"); squeeze-excite (EfficientNet's alone) is named alike in both.
FAMILIES = ("efficientnet", "mobilenet_v2")
_KERAS_NAMES = {
    "stem_conv": ("stem_conv", "Conv1"),
    "stem_bn": ("stem_bn", "bn_Conv1"),
    "expand_conv": ("expand_conv", "expand"),
    "expand_bn": ("expand_bn", "expand_BN"),
    "dwconv": ("dwconv", "depthwise"),
    "dwconv_bn": ("bn", "depthwise_BN"),
    "project_conv": ("project_conv", "project"),
    "project_bn": ("project_bn", "project_BN"),
    "top_conv": ("top_conv", "Conv_1"),
    "top_bn": ("top_bn", "Conv_1_bn"),
}


@dataclasses.dataclass(frozen=True)
class LayerNames:
    """Keras layer names of a family (block names are `prefix + name`); `LayerNames.of(family)`."""

    stem_conv: str
    stem_bn: str
    expand_conv: str
    expand_bn: str
    dwconv: str
    dwconv_bn: str
    project_conv: str
    project_bn: str
    top_conv: str
    top_bn: str
    se_reduce: str = "se_reduce"
    se_expand: str = "se_expand"

    @classmethod
    def of(cls, family: str) -> LayerNames:
        """The names of `family` (one of `FAMILIES`), from the table above."""
        column = FAMILIES.index(family)
        return cls(**{role: names[column] for role, names in _KERAS_NAMES.items()})


@dataclasses.dataclass(frozen=True)
class Arch:
    """Architecture table of one model, plus the defaults of its pretrained source.

    `input_mean`/`input_std` are in [0, 255] pixel units: the model computes
    (x - mean) / std first. They seed the `preprocess` variables, which a
    pretrained loader overwrites with what its source actually computes.
    """

    name: str
    family: str
    blocks: tuple[BlockSpec, ...]
    stem_ch: int
    top_ch: int
    activation: str
    names: LayerNames
    resolution: int
    dropout_rate: float
    input_mean: tuple[float, float, float]
    input_std: tuple[float, float, float]
    bn_epsilon: float = 1e-3
    bn_momentum: float = 0.99

    def depthwise_layers(self) -> frozenset[str]:
        """Names of the depthwise-conv layers (their kernels change layout across frameworks)."""
        return frozenset(b.prefix + self.names.dwconv for b in self.blocks)


def _block(x: jax.Array, spec: BlockSpec, names: LayerNames, layers: Layers, *, act: Any, train: bool) -> jax.Array:
    """One block, [N, H, W, in_ch] -> [N, H/stride, W/stride, out_ch].

    A plain function rather than a submodule: it is called inside the parent's
    compact `__call__`, so its layers get flat Keras names ("block2a_dwconv"),
    not nested ones ("block2a/dwconv").
    """
    p = spec.prefix
    inputs = x
    if spec.expand_ch != spec.in_ch:
        x = layers.pointwise(spec.expand_ch, use_bias=False, name=p + names.expand_conv)(x)
        x = layers.norm(name=p + names.expand_bn, activation=act)(x)
    x = layers.depthwise_conv(spec.expand_ch, spec.kernel, spec.stride, name=p + names.dwconv)(x)
    x = layers.norm(name=p + names.dwconv_bn, activation=act)(x)
    if spec.se_ch:
        se = jnp.mean(x, axis=(1, 2), keepdims=True)
        se = act(layers.pointwise(spec.se_ch, use_bias=True, name=p + names.se_reduce)(se))
        se = layers.pointwise(spec.expand_ch, use_bias=True, name=p + names.se_expand)(se)
        x = x * nn.sigmoid(se)
    x = layers.pointwise(spec.out_ch, use_bias=False, name=p + names.project_conv)(x)
    x = layers.norm(name=p + names.project_bn)(x)
    if spec.residual:
        if spec.drop_rate > 0:
            # Stochastic depth: drop the whole residual branch per example.
            x = nn.Dropout(spec.drop_rate, broadcast_dims=(1, 2, 3), deterministic=not train)(x)
        x = x + inputs
    return x


class MBConvNet(nn.Module):
    """Backbone: images (already normalised) [N, H, W, 3] -> features [N, H/32, W/32, top_ch].

    Attributes:
      arch: the architecture table.
      dtype: compute dtype (e.g. bfloat16); parameters stay float32.
      kernels: "cpu" (hand-written XLA:CPU layers), "xla" (flax's nn.Conv / nn.BatchNorm) or
        "auto" (cpu on the CPU backend, else xla); see `models/kernels.py`. Same variables either way.
      depthwise_impl: the depthwise convolution alone: "shift", "conv", or "auto" (as `kernels`).
      bn_momentum: BatchNorm's running-average momentum; None: the table's (the architecture's).
      bn_axis_name: mapped axis to average BatchNorm statistics over under
        pmap/shard_map; not needed under jit over a mesh, where they are global.
    """

    arch: Arch
    dtype: Any = jnp.float32
    kernels: Kernels = "auto"
    depthwise_impl: DepthwiseImpl = "auto"
    bn_momentum: float | None = None
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, update_batch_stats: bool | None = None) -> jax.Array:
        """`train` switches dropout/stochastic depth; BatchNorm uses (and updates) batch
        statistics when `update_batch_stats` (default: `train`), else its running averages."""
        a, n = self.arch, self.arch.names
        batch_stats = train if update_batch_stats is None else update_batch_stats
        act = ACTIVATIONS[a.activation]
        layers = Layers(
            kernels=resolve(self.kernels),
            depthwise=resolve_depthwise(self.depthwise_impl, self.kernels),
            dtype=self.dtype,
            kernel_init=CONV_INIT,
            use_running_average=not batch_stats,
            momentum=a.bn_momentum if self.bn_momentum is None else self.bn_momentum,
            epsilon=a.bn_epsilon,
            axis_name=self.bn_axis_name,
        )
        x = layers.stem(a.stem_ch, 3, 2, name=n.stem_conv)(x)
        x = layers.norm(name=n.stem_bn, activation=act)(x)
        for spec in a.blocks:
            x = _block(x, spec, n, layers, act=act, train=train)
        x = layers.pointwise(a.top_ch, use_bias=False, name=n.top_conv)(x)
        return layers.norm(name=n.top_bn, activation=act)(x)
