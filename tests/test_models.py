"""Architecture tables and the model API (the two layer implementations: tests/test_kernels.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowers_jax import models


def _shapes(name: str, num_classes: int = 10):
    model = models.create(name, num_classes)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize(
    "name, expected",
    [
        # keras.applications(weights=None).count_params(), less Normalization's 7 values (ours are in `preprocess`).
        ("efficientnet_b0", 5_330_571 - 7),
        ("efficientnet_b3", 12_320_535 - 7),
        ("efficientnet_b7", 66_658_687 - 7),
        ("mobilenet_v2", 3_538_984),
        ("mobilenet_v2_035", 1_691_208),
        ("mobilenet_v2_140", 6_156_712),
        # efficientnet-lite0 .pth: 4,694,073 values incl. 49 BatchNorm step counters.
        ("efficientnet_lite0", 4_694_073 - 49),
    ],
)
def test_parameter_counts_match_the_references(name, expected):
    shapes = _shapes(name, 1000)
    assert _count(shapes["params"]) + _count(shapes["batch_stats"]) == expected


def test_every_name_builds_with_separate_backbone_and_head():
    for name in models.names():
        shapes = _shapes(name)
        assert set(shapes) == {"params", "batch_stats", "preprocess"}
        assert set(shapes["params"]) == {"backbone", "head"}
        assert shapes["params"]["head"]["predictions"]["kernel"].shape[-1] == 10


def test_forward_train_and_eval():
    model = models.create("mobilenet_v2_035", 7)
    images = jax.random.uniform(jax.random.key(1), (2, 64, 64, 3), maxval=255.0)
    variables = jax.jit(model.init)(jax.random.key(0), images)
    logits = jax.jit(model.apply)(variables, images)
    assert logits.shape == (2, 7) and logits.dtype == jnp.float32
    train_apply = jax.jit(lambda v, x, r: model.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": r}))
    logits, updates = train_apply(variables, images, jax.random.key(2))
    assert set(updates) == {"batch_stats"}
    assert bool(jnp.all(jnp.isfinite(logits)))


def test_bfloat16_compute_keeps_float32_params_and_logits():
    model = models.create("efficientnet_lite0", 5, dtype=jnp.bfloat16)
    images = jnp.full((1, 64, 64, 3), 128.0)
    variables = jax.jit(model.init)(jax.random.key(0), images)
    assert {x.dtype for x in jax.tree.leaves(variables["params"])} == {jnp.dtype(jnp.float32)}
    assert jax.jit(model.apply)(variables, images).dtype == jnp.float32


def test_bad_names_and_overrides_are_clear_errors():
    with pytest.raises(ValueError, match="unknown model 'efficientnet_b9'.*efficientnet_b0"):
        models.create("efficientnet_b9", 10)
    with pytest.raises(TypeError, match="unknown override.*dropout"):
        models.create("efficientnet_b0", 10, dropuot_rate=0.1)
