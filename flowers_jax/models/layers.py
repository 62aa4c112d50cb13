"""The hand-written XLA:CPU layers: depthwise as shifted slices, the stem as patches + dot, 1x1 as a dot.

Each computes what a flax `nn.Conv` computes, with the same parameter names and shapes,
in a form XLA:CPU runs fast (docs/design.md, §cpu). `models/kernels.py` decides where they
are used: by default only on the CPU backend.

Both families are ports of TensorFlow models, whose stride-2 convolutions pad
asymmetrically ("SAME": the extra row/column goes at the bottom/right). XLA's
`padding="SAME"` follows the same rule, so the weights port without changes.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

ACTIVATIONS = {
    "swish": nn.swish,  # Keras "swish" is x * sigmoid(x), the same as jax.nn.swish.
    "relu6": nn.relu6,
}


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(low, high) padding of TF/XLA "SAME" for one spatial dimension."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _taps(xp: jax.Array, k: int, out_h: int, out_w: int, stride: int) -> list[jax.Array]:
    """The k*k strided windows [N, out_h, out_w, C] of a padded input, row-major over the kernel."""
    n, _, _, c = xp.shape
    return [
        jax.lax.slice(
            xp, (0, i, j, 0), (n, i + (out_h - 1) * stride + 1, j + (out_w - 1) * stride + 1, c), (1, stride, stride, 1)
        )
        for i in range(k)
        for j in range(k)
    ]


def _weighted_taps(xp: jax.Array, kernel: jax.Array, out_h: int, out_w: int, stride: int) -> jax.Array:
    """sum_ij window_ij(xp) * kernel[i, j, 0]: the depthwise correlation of an already padded input."""
    taps = _taps(xp, kernel.shape[0], out_h, out_w, stride)
    out = taps[0] * kernel.reshape(len(taps), -1)[0]
    for tap, weight in zip(taps[1:], kernel.reshape(len(taps), -1)[1:], strict=True):
        out = out + tap * weight
    return out


def _pad_same(x: jax.Array, k: int, stride: int) -> jax.Array:
    _, h, w, _ = x.shape
    return jnp.pad(x, ((0, 0), same_padding(h, k, stride), same_padding(w, k, stride), (0, 0)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _depthwise_shift(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """Depthwise conv as a sum of k*k shifted, per-channel-scaled slices.

    Written by hand because XLA:CPU lowers `feature_group_count == channels`
    convolutions to a slow generic loop (jax-ml/jax#23713): on the CPU this is
    3-5x faster than `lax.conv_general_dilated` and computes the same values.
    Its gradient is written by hand too (below): autodiff of the slices scatters
    k*k padded copies of the output gradient and reduces k*k products one by one.

    Args:
      x: [N, H, W, C] input.
      kernel: [k, k, 1, C] depthwise kernel (flax layout).
      stride: spatial stride.
    Returns:
      [N, ceil(H/stride), ceil(W/stride), C].
    """
    _, h, w, _ = x.shape
    return _weighted_taps(_pad_same(x, kernel.shape[0], stride), kernel, -(-h // stride), -(-w // stride), stride)


def _depthwise_shift_fwd(x, kernel, stride):
    return _depthwise_shift(x, kernel, stride), (x, kernel)


def _depthwise_shift_bwd(stride, residuals, g):
    """Gradients of `_depthwise_shift`, g: [N, out_h, out_w, C].

    dx is the correlation of g, spread back to input resolution (zeros between rows
    and columns when stride > 1) and padded, with the flipped kernel: one more
    shifted-slice sum. dkernel[i, j] = sum over N, y, x of window_ij(x) * g: the k*k
    products are reduced in one variadic reduce, which reads x and g once instead of
    k*k times, first over each image (float32 sums) and then over the batch.
    """
    x, kernel = residuals
    k = kernel.shape[0]
    _, h, w, _ = x.shape
    _, out_h, out_w, _ = g.shape
    (top, _), (left, _) = same_padding(h, k, stride), same_padding(w, k, stride)
    spread = ((out_h - 1) * stride + 1, (out_w - 1) * stride + 1)
    pads = (
        (0, 0, 0),
        (k - 1 - top, h - spread[0] + top, stride - 1),
        (k - 1 - left, w - spread[1] + left, stride - 1),
        (0, 0, 0),
    )
    dx = _weighted_taps(jax.lax.pad(g, jnp.zeros((), g.dtype), pads), kernel[::-1, ::-1], h, w, 1)

    products = tuple((tap * g).astype(jnp.float32) for tap in _taps(_pad_same(x, k, stride), k, out_h, out_w, stride))
    zeros = (jnp.float32(0),) * len(products)
    sums = jax.lax.reduce(products, zeros, lambda a, b: tuple(u + v for u, v in zip(a, b, strict=True)), (1, 2))
    dkernel = jnp.stack(sums).sum(axis=1).reshape(kernel.shape)
    return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


_depthwise_shift.defvjp(_depthwise_shift_fwd, _depthwise_shift_bwd)


class PointwiseConv(nn.Module):
    """1x1 convolution computed as a matrix product over the channel axis.

    Same parameters as `nn.Conv(features, (1, 1))` (kernel [1, 1, in, out], bias [out]),
    so weights and checkpoints are interchangeable with it. Written by hand because
    XLA:CPU runs a 1x1 `conv_general_dilated` through its generic convolution path,
    3-10x slower than the equivalent dot (forward and gradients, measured at 224 px
    in EfficientNet shapes); on TPU/GPU both lower to the same matmul.
    """

    features: int
    use_bias: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[..., in] -> [..., features]."""
        kernel = self.param("kernel", self.kernel_init, (1, 1, x.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype) if self.use_bias else None
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        # A 2-D product of [N*H*W, in] rows: its gradient for the kernel is then one dot contracting
        # the rows in place. Contracting N, H and W of a 4-D array instead makes XLA:CPU copy the
        # output gradient into [out, N*H*W] first (measured: 1.8x slower, the whole step 15%).
        y = jnp.dot(x.reshape(-1, x.shape[-1]), kernel[0, 0]).reshape(*x.shape[:-1], self.features)
        return y if bias is None else y + bias


class StemConv(nn.Module):
    """k x k convolution, "SAME" padding, no bias, for a layer with few input channels (the stem).

    Same parameter as `nn.Conv(features, (k, k), strides, padding="SAME", use_bias=False)`
    (kernel [k, k, in, out]), computed as patches and one dot: the k*k strided windows are
    stacked on the channel axis ([N, H', W', k*k*in], `_taps`' row-major order matches the
    kernel's) and multiplied by the kernel as a [k*k*in, out] matrix. Written by hand because
    XLA:CPU runs a 3-channel convolution through a generic path (~120 ms for EfficientNet's
    stem at batch 32 x 224 px, about 10x the dot).
    """

    features: int
    kernel_size: int
    strides: int = 1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[N, H, W, in] -> [N, ceil(H/strides), ceil(W/strides), features]."""
        k, s = self.kernel_size, self.strides
        kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features), self.param_dtype)
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        _, h, w, _ = x.shape
        patches = jnp.concatenate(_taps(_pad_same(x, k, s), k, -(-h // s), -(-w // s), s), axis=-1)
        y = jnp.dot(patches.reshape(-1, patches.shape[-1]), kernel.reshape(-1, self.features))  # 2-D: see PointwiseConv
        return y.reshape(*patches.shape[:-1], self.features)


class DepthwiseConv2D(nn.Module):
    """Depthwise 2-D convolution (depth multiplier 1, no bias), "SAME" padding, as shifted slices.

    Same parameter as `nn.Conv(C, (k, k), strides, padding="SAME", feature_group_count=C,
    use_bias=False)` (kernel [k, k, 1, C]); computed by `_depthwise_shift` (see there why).

    Attributes:
      kernel_size: square kernel size k.
      strides: spatial stride (1 or 2).
    """

    kernel_size: int
    strides: int = 1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: nn.initializers.Initializer = nn.initializers.variance_scaling(2.0, "fan_out", "truncated_normal")

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[N, H, W, C] -> [N, ceil(H/strides), ceil(W/strides), C]."""
        channels = x.shape[-1]
        kernel = self.param(
            "kernel", self.kernel_init, (self.kernel_size, self.kernel_size, 1, channels), self.param_dtype
        )
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        return _depthwise_shift(x, kernel, self.strides)
