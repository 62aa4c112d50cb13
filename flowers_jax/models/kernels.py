"""One switch for the layer implementations: `kernels = "auto" | "cpu" | "xla"`.

"cpu" builds the backbone from the hand-written XLA:CPU layers (`layers.py`: the stem as
patches + dot, 1x1 convolutions as 2-D products, the shifted-slices depthwise; `batchnorm.py`:
BatchNorm with a closed-form gradient and the activation fused into it). "xla" builds it from
flax's `nn.Conv` and `nn.BatchNorm` (activation applied after), which lower to the backend's
own kernels. "auto" is "cpu" when the default backend is XLA:CPU and "xla" everywhere else:
the hand-written layers were written and measured only on XLA:CPU, and their hand-written
gradients have never been measured or profiled on a TPU or GPU (docs/design.md, §cpu).

Both choices create the same variables (names, shapes, initial values), so a checkpoint
written with one restores into the other (tests/test_kernels.py checks it).
`depthwise_impl` overrides the depthwise convolution alone: "shift" (the hand-written one),
"conv" (flax's grouped `nn.Conv`) or "auto" (whatever `kernels` picks).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

import jax
from flax import linen as nn

from flowers_jax.models.batchnorm import BatchNorm
from flowers_jax.models.layers import DepthwiseConv2D, PointwiseConv, StemConv

Kernels = Literal["auto", "cpu", "xla"]
DepthwiseImpl = Literal["auto", "conv", "shift"]
KERNELS: tuple[str, ...] = ("auto", "cpu", "xla")
DEPTHWISE_IMPLS: tuple[str, ...] = ("auto", "conv", "shift")

Activation = Callable[[jax.Array], jax.Array]


def resolve(kernels: str) -> Literal["cpu", "xla"]:
    """The implementation `kernels` means on this process's default backend."""
    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {KERNELS}, got {kernels!r}")
    if kernels == "auto":
        return "cpu" if jax.default_backend() == "cpu" else "xla"
    return kernels  # type: ignore[return-value]


def resolve_depthwise(depthwise_impl: str, kernels: str) -> Literal["conv", "shift"]:
    """The depthwise convolution's implementation, "shift" or "conv", given `kernels` (resolved or not)."""
    if depthwise_impl not in DEPTHWISE_IMPLS:
        raise ValueError(f"depthwise_impl must be one of {DEPTHWISE_IMPLS}, got {depthwise_impl!r}")
    if depthwise_impl == "auto":
        return "shift" if resolve(kernels) == "cpu" else "conv"
    return depthwise_impl  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class Layers:
    """Makes the backbone's layers with one implementation choice.

    Each method creates a submodule named `name`, so it must be called inside the parent's
    compact `__call__` (where the layer gets that flat name, as the Keras names want).

    Attributes:
      kernels: "cpu" (hand-written) or "xla" (flax); see the module docstring.
      depthwise: "shift" (hand-written) or "conv" (flax's grouped convolution).
      dtype: compute dtype; parameters are float32.
      kernel_init: initialiser of every convolution kernel.
      use_running_average: BatchNorm normalises with its running averages (frozen).
      momentum, epsilon, axis_name: BatchNorm's (axis_name: the mapped axis under pmap, else None).
    """

    kernels: Literal["cpu", "xla"]
    depthwise: Literal["conv", "shift"]
    dtype: Any
    kernel_init: nn.initializers.Initializer
    use_running_average: bool
    momentum: float
    epsilon: float
    axis_name: str | None = None

    def stem(self, features: int, kernel: int, stride: int, *, name: str) -> nn.Module:
        """k x k "SAME" convolution without bias: [N, H, W, in] -> [N, H/stride, W/stride, features]."""
        if self.kernels == "cpu":
            return StemConv(features, kernel, stride, dtype=self.dtype, kernel_init=self.kernel_init, name=name)
        return self._conv(features, kernel, stride, use_bias=False, name=name)

    def pointwise(self, features: int, *, use_bias: bool, name: str) -> nn.Module:
        """1x1 convolution: [..., in] -> [..., features]."""
        if self.kernels == "cpu":
            return PointwiseConv(features, use_bias=use_bias, dtype=self.dtype, kernel_init=self.kernel_init, name=name)
        return self._conv(features, 1, 1, use_bias=use_bias, name=name)

    def depthwise_conv(self, channels: int, kernel: int, stride: int, *, name: str) -> nn.Module:
        """Depthwise "SAME" convolution without bias: [N, H, W, C] -> [N, H/stride, W/stride, C]."""
        if self.depthwise == "shift":
            return DepthwiseConv2D(kernel, stride, dtype=self.dtype, kernel_init=self.kernel_init, name=name)
        return self._conv(channels, kernel, stride, use_bias=False, groups=channels, name=name)

    def norm(self, *, name: str, activation: Activation | None = None) -> Callable[[jax.Array], jax.Array]:
        """BatchNorm over the last axis, then `activation` if given: [..., C] -> [..., C]."""
        kwargs = dict(
            use_running_average=self.use_running_average,
            momentum=self.momentum,
            epsilon=self.epsilon,
            dtype=self.dtype,
            axis_name=self.axis_name,
            name=name,
        )
        if self.kernels == "cpu":
            return BatchNorm(activation=activation, **kwargs)
        bn = nn.BatchNorm(**kwargs)
        return bn if activation is None else lambda x: activation(bn(x))

    def _conv(self, features: int, kernel: int, stride: int, *, use_bias: bool, name: str, groups: int = 1) -> nn.Conv:
        return nn.Conv(
            features,
            (kernel, kernel),
            strides=stride,
            padding="SAME",
            feature_group_count=groups,
            use_bias=use_bias,
            dtype=self.dtype,
            kernel_init=self.kernel_init,
            name=name,
        )
