"""BatchNorm with a closed-form gradient: same variables and values as `flax.linen.BatchNorm`.

Written by hand because autodiff of `nn.BatchNorm` in training mode differentiates its
statistics op by op (the mean, E[x^2], the rsqrt and the broadcasts each get their own
pass over the activation), which on XLA:CPU made BatchNorm the largest part of a
fine-tuning step. The textbook gradient needs two reductions and one elementwise pass:

    xhat = (x - mean) * rstd
    dbias = sum(g),  dscale = sum(g * xhat)
    dx = scale * rstd / n * (n * g - dbias - xhat * dscale)

An elementwise activation after the normalisation can be fused in (`activation=`):
its input z = xhat * scale + bias is then recomputed from x in the backward pass
instead of being kept from the forward pass, which saves writing and re-reading one
activation-sized array per layer (autodiff of `act(bn(x))` keeps both x and z).

Variables ("params": scale, bias; "batch_stats": mean, var), initialisers, the
running-average update (biased variance, `momentum`) and float32 statistics for
low-precision inputs are those of `nn.BatchNorm`, so checkpoints and the weight
importers do not see a difference.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn


def _sum_over_batch(values: tuple[jax.Array, ...], axis_name: str | None) -> tuple[jax.Array, ...]:
    """Per-channel sums over every axis but the last, then over the mapped axis if any."""
    sums = tuple(jnp.sum(v, axis=tuple(range(v.ndim - 1))) for v in values)
    return sums if axis_name is None else jax.lax.psum(sums, axis_name)


def _count(x: jax.Array, axis_name: str | None) -> jax.Array | int:
    n = x.size // x.shape[-1]
    return n if axis_name is None else jax.lax.psum(n, axis_name)


Activation = Callable[[jax.Array], jax.Array]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def batch_normalize(
    x: jax.Array,
    scale: jax.Array,
    bias: jax.Array,
    epsilon: float,
    axis_name: str | None,
    activation: Activation | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Normalises x [..., C] with its own statistics, then applies `activation` if given.

    Args:
      x: [..., C] activations (any float dtype; statistics are float32).
      scale, bias: [C].
      epsilon: added to the variance.
      axis_name: mapped axis (pmap/vmap/shard_map) the statistics also span; None under jit.
      activation: an elementwise function fused in, or None.
    Returns:
      (y [..., C] float32, mean [C], biased variance [C]).
    """
    return _batch_normalize_fwd(x, scale, bias, epsilon, axis_name, activation)[0]


def _batch_normalize_fwd(x, scale, bias, epsilon, axis_name, activation):
    xf = x.astype(jnp.float32)
    n = _count(x, axis_name)
    s1, s2 = _sum_over_batch((xf, jnp.square(xf)), axis_name)
    mean = s1 / n
    var = jnp.maximum(s2 / n - jnp.square(mean), 0.0)  # E[x^2] - E[x]^2, as flax's fast variance
    rstd = jax.lax.rsqrt(var + epsilon)
    y = (xf - mean) * (rstd * scale) + bias
    if activation is not None:
        y = activation(y)
    return (y, mean, var), (x, mean, rstd, scale, bias)


def _batch_normalize_bwd(epsilon, axis_name, activation, residuals, cotangents):
    """Cotangents (g [..., C], g_mean [C], g_var [C]) -> (dx, dscale, dbias).

    dscale and dbias are this shard's sums, as autodiff gives them under a mapped axis
    (the caller averages gradients); dx needs the sums over every shard, because the
    statistics do. The mean/variance outputs are normally only fed to the running
    averages (zero cotangent), but their gradient is included so the function is exact.
    """
    del epsilon
    x, mean, rstd, scale, bias = residuals
    g, g_mean, g_var = cotangents
    xf = x.astype(jnp.float32)
    g = g.astype(jnp.float32)
    n = _count(x, axis_name)
    xhat = (xf - mean) * rstd
    if activation is not None:  # back through the activation at its recomputed input
        g = jax.vjp(activation, xhat * scale + bias)[1](g)[0]
    dbias, dscale = _sum_over_batch((g, g * xhat), None)
    totals = (dbias, dscale, g_mean, g_var)
    total_dbias, total_dscale, g_mean, g_var = totals if axis_name is None else jax.lax.psum(totals, axis_name)
    dx = (scale * rstd / n) * (n * g - total_dbias - xhat * total_dscale)
    dx = dx + (g_mean + 2.0 * g_var * (xf - mean)) / n
    return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(scale.dtype)


batch_normalize.defvjp(_batch_normalize_fwd, _batch_normalize_bwd)


class BatchNorm(nn.Module):
    """Drop-in `nn.BatchNorm` over the last axis of [..., C] (see the module docstring).

    Attributes:
      use_running_average: normalise with the running averages (frozen BatchNorm,
        plain autodiff of an affine map) instead of batch statistics.
      momentum: running-average decay.
      epsilon: added to the variance.
      dtype: output dtype.
      axis_name: mapped axis the batch statistics span (pmap); None under jit over a mesh.
      activation: elementwise function applied after the normalisation (fused into its
        gradient when statistics are computed), or None.
    """

    use_running_average: bool = False
    momentum: float = 0.99
    epsilon: float = 1e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    axis_name: str | None = None
    activation: Activation | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[..., C] -> [..., C] in `dtype`."""
        c = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        if self.use_running_average:
            mul = jax.lax.rsqrt(ra_var.value + self.epsilon) * scale
            y = (x.astype(jnp.float32) - ra_mean.value) * mul + bias
            if self.activation is not None:
                y = self.activation(y)
        else:
            y, mean, var = batch_normalize(x, scale, bias, self.epsilon, self.axis_name, self.activation)
            if not self.is_initializing():
                ra_mean.value = self.momentum * ra_mean.value + (1.0 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1.0 - self.momentum) * var
        return y.astype(self.dtype)
