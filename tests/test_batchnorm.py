"""The hand-written BatchNorm gradient against autodiff of `flax.linen.BatchNorm`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from flowers_jax.models.batchnorm import BatchNorm, batch_normalize

SHAPE = (4, 5, 6, 8)  # [N, H, W, C]


def _variables(seed: int = 0):
    """Non-trivial scale, bias and running statistics (identity-like BatchNorm would hide bugs)."""
    k = jax.random.split(jax.random.key(seed), 4)
    c = SHAPE[-1]
    return {
        "params": {
            "scale": jax.random.uniform(k[0], (c,), minval=0.5, maxval=1.5),
            "bias": jax.random.normal(k[1], (c,)),
        },
        "batch_stats": {"mean": jax.random.normal(k[2], (c,)), "var": jax.random.uniform(k[3], (c,), minval=0.5)},
    }


def _inputs(seed: int = 1):
    kx, kw = jax.random.split(jax.random.key(seed))
    # An offset and a spread per channel, as real activations have.
    x = jax.random.normal(kx, SHAPE) * jnp.linspace(0.5, 3.0, SHAPE[-1]) + jnp.linspace(-2.0, 2.0, SHAPE[-1])
    return x, jax.random.normal(kw, SHAPE)


def _loss_and_grads(module, variables, x, w):
    def loss(params, x):
        y, updates = module.apply({**variables, "params": params}, x, mutable=["batch_stats"])
        return jnp.sum(jnp.sin(y) * w), updates  # a non-linear loss: g varies per element

    (value, updates), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(variables["params"], x)
    return value, updates["batch_stats"], grads


def test_same_variables_as_flax():
    x, _ = _inputs()
    ours = BatchNorm().init(jax.random.key(0), x)
    flax = nn.BatchNorm(use_running_average=False).init(jax.random.key(0), x)
    assert jax.tree.structure(ours) == jax.tree.structure(flax)
    jax.tree.map(np.testing.assert_array_equal, ours, flax)


@pytest.mark.parametrize("frozen", [False, True])
def test_values_statistics_and_gradients_match_flax(frozen):
    variables, (x, w) = _variables(), _inputs()
    kwargs = {"use_running_average": frozen, "momentum": 0.9, "epsilon": 1e-3}
    ours = _loss_and_grads(BatchNorm(**kwargs), variables, x, w)
    ref = _loss_and_grads(nn.BatchNorm(**kwargs), variables, x, w)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5), ours, ref)
    if not frozen:  # the running averages moved towards the batch statistics
        assert not np.allclose(ours[1]["mean"], variables["batch_stats"]["mean"])


class _FlaxThenActivation(nn.Module):
    """The unfused reference: `activation(nn.BatchNorm(x))`, differentiated by autodiff."""

    activation: object
    kwargs: dict

    @nn.compact
    def __call__(self, x):
        return self.activation(nn.BatchNorm(name="bn", **self.kwargs)(x))


@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize("activation", [nn.relu6, nn.swish], ids=["relu6", "swish"])
def test_a_fused_activation_matches_activation_after_flax(activation, frozen):
    variables, (x, w) = _variables(), _inputs()
    # scale x3: normalised values beyond about +-1.3 cross relu6's edges, so both of its flat
    # (zero-gradient) regions are exercised, not only its identity part.
    variables["params"]["scale"] = 3.0 * variables["params"]["scale"]
    kwargs = {"use_running_average": frozen, "momentum": 0.9, "epsilon": 1e-3}
    module = BatchNorm(activation=activation, **kwargs)
    ours = _loss_and_grads(module, variables, x, w)
    ref = _loss_and_grads(_FlaxThenActivation(activation, kwargs), {k: {"bn": v} for k, v in variables.items()}, x, w)
    ref = (ref[0], ref[1]["bn"], (ref[2][0]["bn"], ref[2][1]))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5), ours, ref)
    if activation is nn.relu6:
        y, _ = module.apply(variables, x, mutable=["batch_stats"])
        regions = (y == 0.0, (y > 0.0) & (y < 6.0), y == 6.0)
        assert all(np.sum(r) >= 5 for r in regions), [int(np.sum(r)) for r in regions]


def test_statistics_span_a_mapped_axis_like_flax():
    """Under a mapped axis (pmap's path) the statistics, and so dx, span every shard."""
    variables, (x, w) = _variables(), _inputs()
    xs, ws = x.reshape(2, 2, *SHAPE[1:]), w.reshape(2, 2, *SHAPE[1:])

    def mapped(module):
        f = lambda x, w: _loss_and_grads(module, variables, x, w)  # noqa: E731
        return jax.vmap(f, axis_name="batch")(xs, ws)

    kwargs = {"momentum": 0.9, "epsilon": 1e-3, "axis_name": "batch"}
    ours, ref = mapped(BatchNorm(**kwargs)), mapped(nn.BatchNorm(use_running_average=False, **kwargs))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5), ours, ref)
    # And the shards together equal one unmapped batch: the statistics really are global.
    whole = _loss_and_grads(BatchNorm(momentum=0.9, epsilon=1e-3), variables, x, w)
    np.testing.assert_allclose(ours[0].sum(), whole[0], rtol=1e-5)
    np.testing.assert_allclose(ours[2][1].reshape(SHAPE), whole[2][1], rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(ours[2][0]["scale"].sum(0), whole[2][0]["scale"], rtol=2e-5, atol=2e-5)


def test_the_statistics_outputs_have_their_gradient():
    """mean and variance are outputs too: their gradient is exact, not dropped (vs plain autodiff)."""
    x, _ = _inputs()
    scale, bias = jnp.linspace(0.5, 1.5, SHAPE[-1]), jnp.linspace(-1.0, 1.0, SHAPE[-1])

    def plain(x, scale, bias, epsilon, axis_name):
        mean = x.mean(axis=(0, 1, 2))
        var = jnp.maximum(jnp.mean(x**2, axis=(0, 1, 2)) - mean**2, 0.0)
        return (x - mean) * jax.lax.rsqrt(var + epsilon) * scale + bias, mean, var

    def loss(normalize):
        def f(x, scale, bias):
            y, mean, var = normalize(x, scale, bias, 1e-3, None)
            return jnp.sum(jnp.cos(y)) + jnp.sum(mean**2) + jnp.sum(jnp.sqrt(var))

        return jax.grad(f, argnums=(0, 1, 2))(x, scale, bias)

    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5), loss(batch_normalize), loss(plain)
    )


def test_bfloat16_input_keeps_float32_statistics():
    variables, (x, w) = _variables(), _inputs()
    ours = _loss_and_grads(BatchNorm(dtype=jnp.bfloat16), variables, x.astype(jnp.bfloat16), w)
    ref = _loss_and_grads(BatchNorm(), variables, x, w)
    assert ours[1]["mean"].dtype == jnp.float32
    np.testing.assert_allclose(ours[1]["mean"], ref[1]["mean"], rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(ours[2][0]["scale"], ref[2][0]["scale"], rtol=5e-2, atol=5e-1)
