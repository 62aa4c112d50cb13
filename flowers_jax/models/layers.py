"""Layers the backbones share: TF-style "SAME" padding and a depthwise convolution.

Both families are ports of TensorFlow models, whose stride-2 convolutions pad
asymmetrically ("SAME": the extra row/column goes at the bottom/right). XLA's
`padding="SAME"` follows the same rule, so the weights port without changes.
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import linen as nn

DepthwiseImpl = Literal["auto", "conv", "shift"]

ACTIVATIONS = {
    "swish": nn.swish,  # Keras "swish" is x * sigmoid(x), the same as jax.nn.swish.
    "relu6": nn.relu6,
}


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(low, high) padding of TF/XLA "SAME" for one spatial dimension."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _depthwise_shift(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """Depthwise conv as a sum of k*k shifted, per-channel-scaled slices.

    Written by hand because XLA:CPU lowers `feature_group_count == channels`
    convolutions to a slow generic loop (jax-ml/jax#23713): on the CPU this is
    3-5x faster than `lax.conv_general_dilated` and computes the same values.

    Args:
      x: [N, H, W, C] input.
      kernel: [k, k, 1, C] depthwise kernel (flax layout).
      stride: spatial stride.
    Returns:
      [N, ceil(H/stride), ceil(W/stride), C].
    """
    k = kernel.shape[0]
    _, h, w, _ = x.shape
    pad_h, pad_w = same_padding(h, k, stride), same_padding(w, k, stride)
    x = jnp.pad(x, ((0, 0), pad_h, pad_w, (0, 0)))
    out_h, out_w = -(-h // stride), -(-w // stride)
    out = None
    for i in range(k):
        for j in range(k):
            tap = jax.lax.slice(
                x,
                (0, i, j, 0),
                (x.shape[0], i + (out_h - 1) * stride + 1, j + (out_w - 1) * stride + 1, x.shape[3]),
                (1, stride, stride, 1),
            )
            term = tap * kernel[i, j, 0]
            out = term if out is None else out + term
    return out


class DepthwiseConv2D(nn.Module):
    """Depthwise 2-D convolution (depth multiplier 1, no bias), "SAME" padding.

    Attributes:
      kernel_size: square kernel size k.
      strides: spatial stride (1 or 2).
      impl: "conv" uses `lax.conv_general_dilated` (right for TPU/GPU), "shift"
        the slice-sum above (right for XLA:CPU), "auto" picks by backend.
    """

    kernel_size: int
    strides: int = 1
    impl: DepthwiseImpl = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: nn.initializers.Initializer = nn.initializers.variance_scaling(2.0, "fan_out", "truncated_normal")

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[N, H, W, C] -> [N, H/strides, W/strides, C]."""
        channels = x.shape[-1]
        kernel = self.param(
            "kernel", self.kernel_init, (self.kernel_size, self.kernel_size, 1, channels), self.param_dtype
        )
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        impl = self.impl
        if impl == "auto":
            impl = "shift" if jax.default_backend() == "cpu" else "conv"
        if impl == "shift":
            return _depthwise_shift(x, kernel, self.strides)
        if impl != "conv":
            raise ValueError(f"depthwise impl must be 'auto', 'conv' or 'shift', got {self.impl!r}")
        return jax.lax.conv_general_dilated(
            x,
            kernel,
            window_strides=(self.strides, self.strides),
            padding="SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=channels,
        )
