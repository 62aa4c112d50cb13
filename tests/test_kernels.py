"""The two layer implementations (`kernels="cpu"`: hand-written, `"xla"`: flax) agree on the CPU.

Values and gradients of every layer kind the backbone builds, through `models.kernels.Layers`
(the factory the backbone itself uses), and a whole model's training step: loss, every
parameter's gradient and the new BatchNorm statistics. Both paths create the same variables,
so each comparison runs both on the very same variables.

Tolerances (float32, eps = 1.2e-7), as the largest difference over the largest magnitude of the
reference (`_relative`), so a tolerance means the same for a gradient of 1e-3 and one of 10:
- one layer: 1e-5. The paths sum the same products in a different order (a dot over the
  patches vs XLA's convolution loop; the closed-form BatchNorm gradient vs autodiff's
  op-by-op one), which moves a float32 result by a few eps times the reduction's length
  (<= 150 terms here). Measured: <= 4.6e-7 (BatchNorm in training mode), 0 in eval mode.
- a whole model's train step: 1e-4 for the loss and the new BatchNorm statistics, 1e-3 for
  every gradient. The per-layer differences compound through 17-50 blocks, and every BatchNorm
  divides by a batch standard deviation (batch 4 at 64 px: 16 values per channel in the last
  blocks), which amplifies them, in the backward pass most. Measured: loss <= 1.2e-6,
  statistics <= 5e-7, gradients <= 1.7e-4 (Lite0; MobileNetV2 5.9e-5). A wrong gradient (a
  dropped term, a mis-scaled one) is off by O(1). The whole-model step runs with swish in place
  of relu6, whose kinks turn rounding into gradient jumps (see `_smooth`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from flowers_jax import models
from flowers_jax.models import kernels
from flowers_jax.models.mbconv import CONV_INIT

LAYER_TOL = 1e-5


def _relative(a, b, floor: float = 0.0) -> float:
    """max |a - b| / max(max |b|, floor); 0 when both are all zeros."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    diff, scale = np.max(np.abs(a - b)), max(float(np.max(np.abs(b))), floor)
    return float(diff / scale) if scale > 0 else float(diff)


def _assert_trees_agree(ours, ref, tol: float, what: str, *, floor: float = 0.0) -> float:
    """Every leaf of `ours` within `tol` (see `_relative`) of `ref`; returns the worst."""
    assert jax.tree.structure(ours) == jax.tree.structure(ref), what
    errors = jax.tree.leaves(jax.tree.map(lambda a, b: _relative(a, b, floor), ours, ref))
    worst = max(errors)
    assert worst <= tol, f"{what}: relative difference {worst:.2e} > {tol:.0e}"
    return worst


def _layers(impl: str, *, frozen: bool = False) -> kernels.Layers:
    return kernels.Layers(
        kernels=impl,
        depthwise="shift" if impl == "cpu" else "conv",
        dtype=jnp.float32,
        kernel_init=CONV_INIT,
        use_running_average=frozen,
        momentum=0.9,
        epsilon=1e-3,
    )


class _OneLayer(nn.Module):
    """One layer made by `Layers.<kind>(*args, name="layer")`: as the backbone makes it."""

    layers: kernels.Layers
    kind: str
    args: tuple
    kwargs: tuple = ()

    @nn.compact
    def __call__(self, x):
        return getattr(self.layers, self.kind)(*self.args, name="layer", **dict(self.kwargs))(x)


def _outputs_grads_and_stats(module, variables, x, w):
    """(y, gradients of sum(sin(y) * w) for the params and x, the updated batch_stats), jitted."""

    def run(variables, x, w):
        def loss(params, x):
            y, updates = module.apply({**variables, "params": params}, x, mutable=["batch_stats"])
            return jnp.sum(jnp.sin(y) * w), (y, updates)  # a non-linear loss: the cotangent varies per element

        (_, (y, updates)), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(variables["params"], x)
        return y, grads, updates.get("batch_stats", {})

    return jax.jit(run)(variables, x, w)


def _random_variables(shapes, seed: int):
    """Random values for a variable tree (numpy: JAX's RNG would cost a compile per shape).

    Kernels ~ N(0, 1/fan_in); BatchNorm scale, bias and statistics away from the identity (an
    identity BatchNorm would hide bugs); conv biases non-zero.
    """
    rng = np.random.default_rng(seed)

    def one(path, leaf):
        name, shape = jax.tree_util.keystr(path[-1:]), leaf.shape
        if "kernel" in name:
            return rng.normal(0.0, 1.0 / np.sqrt(np.prod(shape[:-1])), shape).astype(np.float32)
        if "scale" in name or "var" in name:
            return rng.uniform(0.5, 2.0, shape).astype(np.float32)
        return rng.normal(0.0, 0.5, shape).astype(np.float32)  # bias, mean, preprocess

    return jax.tree_util.tree_map_with_path(one, shapes)


def _both(kind: str, args: tuple, kwargs: tuple, shape: tuple, *, frozen: bool = False, seed: int = 0):
    """The cpu and xla modules of one layer, shared random variables, input x and cotangent weights w."""
    cpu, xla = (_OneLayer(_layers(impl, frozen=frozen), kind, args, kwargs) for impl in ("cpu", "xla"))
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape).astype(np.float32)
    shapes = jax.eval_shape(cpu.init, jax.random.key(0), x)
    assert shapes == jax.eval_shape(xla.init, jax.random.key(0), x)  # the same variables
    variables = _random_variables(shapes, seed)
    y = jax.eval_shape(lambda v, x: cpu.apply(v, x, mutable=["batch_stats"])[0], variables, x)
    w = rng.normal(size=y.shape).astype(np.float32)
    return cpu, xla, variables, x, w


LAYER_CASES = [
    # (kind, args, kwargs, input shape [N, H, W, C])
    ("stem", (8, 3, 2), (), (2, 9, 9, 3)),
    ("stem", (8, 3, 2), (), (2, 8, 8, 3)),
    ("stem", (8, 3, 2), (), (2, 7, 11, 3)),
    ("pointwise", (12,), (("use_bias", False),), (2, 5, 6, 8)),
    ("pointwise", (12,), (("use_bias", True),), (2, 1, 1, 8)),  # squeeze-excite: [N, 1, 1, C], with bias
    ("depthwise_conv", (6, 3, 1), (), (2, 9, 9, 6)),
    ("depthwise_conv", (6, 3, 2), (), (2, 9, 9, 6)),
    ("depthwise_conv", (6, 3, 2), (), (2, 8, 8, 6)),
    ("depthwise_conv", (6, 5, 2), (), (2, 10, 10, 6)),
    ("depthwise_conv", (6, 5, 2), (), (2, 7, 11, 6)),
    ("depthwise_conv", (6, 5, 1), (), (2, 6, 5, 6)),
    ("depthwise_conv", (6, 3, 1), (), (2, 1, 2, 6)),  # an input smaller than the kernel
]


@pytest.mark.parametrize(
    "kind, args, kwargs",
    [
        ("stem", (8, 3, 2), ()),
        ("pointwise", (8,), (("use_bias", True),)),
        ("depthwise_conv", (6, 3, 2), ()),
        ("norm", (), ()),
    ],
)
def test_both_paths_initialise_the_same_values(kind, args, kwargs):
    """A fresh layer starts from the same values on either path (same names, so the same RNG streams)."""
    x = jnp.ones((1, 4, 4, 6 if kind == "depthwise_conv" else 3))
    cpu, xla = (_OneLayer(_layers(impl), kind, args, kwargs) for impl in ("cpu", "xla"))
    jax.tree.map(np.testing.assert_array_equal, *(jax.jit(m.init)(jax.random.key(0), x) for m in (cpu, xla)))


@pytest.mark.parametrize("kind, args, kwargs, shape", LAYER_CASES, ids=lambda v: str(v).replace(" ", ""))
def test_convolutions_agree_in_values_and_gradients(kind, args, kwargs, shape):
    cpu, xla, variables, x, w = _both(kind, args, kwargs, shape)
    ours, ref = (_outputs_grads_and_stats(m, variables, x, w) for m in (cpu, xla))
    _assert_trees_agree(ours[:2], ref[:2], LAYER_TOL, f"{kind}{args}")  # values, gradients (params and x)


@pytest.mark.parametrize("frozen", [False, True], ids=["train", "eval"])
@pytest.mark.parametrize("activation", [None, nn.relu6, nn.swish], ids=["none", "relu6", "swish"])
def test_batchnorm_and_fused_activation_agree(activation, frozen):
    """BatchNorm in both modes, alone and with the activation the cpu path fuses into it:
    values, gradients for x, scale and bias, and (training mode) the new running averages."""
    args = (("activation", activation),) if activation else ()
    cpu, xla, variables, x, w = _both("norm", (), args, (4, 5, 6, 8), frozen=frozen, seed=1)
    # An offset and a spread per channel, as real activations have; x3 so that relu6's flat
    # regions (below 0, above 6) are reached, not only its identity part.
    x = 3.0 * (x * np.linspace(0.5, 3.0, 8) + np.linspace(-2.0, 2.0, 8)).astype(np.float32)
    ours, ref = (_outputs_grads_and_stats(m, variables, x, w) for m in (cpu, xla))
    _assert_trees_agree(ours, ref, LAYER_TOL, "batchnorm")
    stats_moved = not np.allclose(ours[2]["layer"]["mean"], variables["batch_stats"]["layer"]["mean"])
    assert stats_moved != frozen  # training mode updated them, eval mode left them


def test_auto_is_cpu_on_the_cpu_and_bad_values_are_named():
    assert jax.default_backend() == "cpu"  # conftest pins JAX_PLATFORMS=cpu
    assert kernels.resolve("auto") == "cpu" and kernels.resolve("xla") == "xla"
    assert kernels.resolve_depthwise("auto", "xla") == "conv" and kernels.resolve_depthwise("auto", "cpu") == "shift"
    assert models.create("mobilenet_v2_035", 3).backbone.kernels == "cpu"  # decided at creation
    assert models.create("mobilenet_v2_035", 3, kernels="xla").backbone.depthwise_impl == "conv"
    with pytest.raises(ValueError, match="kernels must be one of.*'tpu'"):
        models.create("mobilenet_v2_035", 3, kernels="tpu")
    with pytest.raises(ValueError, match="depthwise_impl must be one of.*'fast'"):
        models.create("mobilenet_v2_035", 3, depthwise_impl="fast")


def test_auto_builds_flax_layers_on_any_other_backend(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    backbone = models.create("mobilenet_v2_035", 3).backbone
    assert (backbone.kernels, backbone.depthwise_impl) == ("xla", "conv")
    # An explicit choice is kept whatever the backend.
    assert models.create("mobilenet_v2_035", 3, kernels="cpu", depthwise_impl="auto").backbone.depthwise_impl == "shift"


@pytest.mark.parametrize("name", ["efficientnet_b0", "efficientnet_lite0", "mobilenet_v2_035"])
def test_both_paths_create_the_same_variable_tree(name):
    """Checkpoints move between the paths: the same names, shapes and dtypes."""
    x = jnp.zeros((1, 32, 32, 3))
    cpu, xla = (jax.eval_shape(models.create(name, 5, kernels=k).init, jax.random.key(0), x) for k in ("cpu", "xla"))
    assert cpu == xla


def _train_step(model):
    """(loss, grads, new batch_stats) of one training step: cross-entropy, dropout on, BatchNorm updating."""

    def step(variables, images, labels, rng):
        def loss(params):
            logits, updates = model.apply(
                {**variables, "params": params}, images, train=True, mutable=["batch_stats"], rngs={"dropout": rng}
            )
            return jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1)), updates

        (value, updates), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
        return value, grads, updates["batch_stats"]

    return jax.jit(step)


def _smooth(name: str) -> models.Classifier:
    """`name`'s classifier built with the hand-written layers and with flax's, with swish for relu6.

    Why swish: relu6's gradient jumps by the whole incoming gradient at 0 and 6, and the two
    paths round a layer's output differently (by ~1e-7 relative), so among the ~10^6 activations
    of a step a few land on either side of a kink, and the gradients of every layer before them
    then differ by up to a few percent (measured on Lite0 at 64 px: 2.7% on block7a's depthwise
    kernel). That is rounding meeting a discontinuity, not a disagreement of the two paths; with
    a smooth activation the same comparison is tight. relu6 fused into BatchNorm is compared
    exactly, one layer at a time, above.
    """
    arch = models.get_arch(name)
    if arch.activation == "relu6":
        arch = dataclasses.replace(arch, activation="swish")
    return tuple(
        models.Classifier(
            backbone=models.MBConvNet(arch, kernels=k),
            num_classes=5,
            dropout_rate=arch.dropout_rate,
            input_mean=arch.input_mean,
            input_std=arch.input_std,
        )
        for k in ("cpu", "xla")
    )


@pytest.mark.parametrize("name", ["efficientnet_lite0", "mobilenet_v2_035"])
def test_a_whole_train_step_agrees(name):
    """Loss, every gradient and the new BatchNorm statistics of one step, batch 4 at 64 px."""
    rng = np.random.default_rng(2)
    images = rng.uniform(0, 255, (4, 64, 64, 3)).astype(np.float32)
    labels = rng.integers(0, 5, 4).astype(np.int32)
    cpu, xla = _smooth(name)
    shapes = jax.eval_shape(cpu.init, jax.random.key(0), images)
    assert shapes == jax.eval_shape(xla.init, jax.random.key(0), images)
    arch = models.get_arch(name)
    variables = {
        **_random_variables({k: shapes[k] for k in ("params", "batch_stats")}, 2),
        "preprocess": {"mean": np.asarray(arch.input_mean, np.float32), "std": np.asarray(arch.input_std, np.float32)},
    }
    dropout = jax.random.key(3)  # the same dropout and stochastic-depth masks on both paths (same layer names)
    (loss_c, grads_c, stats_c), (loss_x, grads_x, stats_x) = (
        _train_step(m)(variables, images, labels, dropout) for m in (cpu, xla)
    )
    assert np.isfinite(float(loss_c)) and _relative(loss_c, loss_x) <= 1e-4
    _assert_trees_agree(stats_c, stats_x, 1e-4, "new batch_stats")
    # The bias of a block's last BatchNorm has an exact gradient of 0 (every path from it meets a
    # BatchNorm's mean subtraction in training mode): its rounding noise (~1e-9 of the largest
    # gradient) is judged against a thousandth of the model's largest gradient, not its own zero.
    floor = 1e-3 * max(float(np.max(np.abs(g))) for g in jax.tree.leaves(grads_x))
    _assert_trees_agree(grads_c, grads_x, 1e-3, "gradients", floor=floor)
