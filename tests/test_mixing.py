"""Mixup / CutMix of the training batch (flowers_jax/mixing.py) and the train step that uses them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flowers_jax import mixing, models
from flowers_jax.state import new_state
from flowers_jax.steps import make_train_step

KEYS = jax.random.split(jax.random.PRNGKey(0), 2000)


def _images(b=4, size=32, seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(0, 255, (b, size, size, 3)), jnp.float32)


def _mix_many(images, **alphas):
    return jax.jit(jax.vmap(lambda k: mixing.mix_batch(k, images, **alphas)))(KEYS)


def test_mixup_lambda_is_beta_and_blends_whole_images():
    images = _images()
    mixed, lam = _mix_many(images, mixup_alpha=0.4, cutmix_alpha=0.0)
    lam = np.asarray(lam)
    # Beta(0.4, 0.4): mean 1/2, variance 1 / (4 (2 alpha + 1)) = 0.139, mostly near 0 or 1.
    assert abs(lam.mean() - 0.5) < 0.03 and abs(lam.var() - 1 / 7.2) < 0.015
    assert np.mean((lam < 0.1) | (lam > 0.9)) > 0.4
    i = int(np.argmin(np.abs(lam - 0.3)))
    np.testing.assert_allclose(mixed[i], lam[i] * images + (1 - lam[i]) * images[::-1], rtol=1e-6, atol=1e-4)


def test_cutmix_pastes_one_box_whose_area_is_one_minus_lambda():
    images = _images(size=40)
    mixed, lam = _mix_many(images, mixup_alpha=0.0, cutmix_alpha=1.0)
    pasted = np.all(np.asarray(mixed) == np.asarray(images[::-1])[None], axis=(1, 4))  # [K, H, W]
    kept = np.all(np.asarray(mixed) == np.asarray(images)[None], axis=(1, 4))
    assert np.all(pasted | kept)  # every pixel is one image's or its partner's, never a blend
    box = pasted & ~kept  # random images: no pixel is equal in both
    # lam is exactly the share left unpasted (after clipping the box at the border) ...
    np.testing.assert_allclose(1.0 - box.mean(axis=(1, 2)), lam, atol=1e-6)
    # ... the box is one rectangle, the same for the whole batch, and lam spreads over (0, 1): drawn from
    # Beta(1, 1) (mean 1/2), raised by the clipping (measured: mean 0.68 at 40 px).
    rows, cols = box.any(axis=2), box.any(axis=1)
    np.testing.assert_array_equal(box.sum(axis=(1, 2)), rows.sum(1) * cols.sum(1))
    lam = np.asarray(lam)
    assert lam.min() < 0.2 and lam.max() > 0.99 and 0.55 < lam.mean() < 0.8, (lam.min(), lam.max(), lam.mean())


def test_the_cutmix_box_has_the_drawn_area_until_the_border_clips_it():
    lam0 = jnp.linspace(0.0, 1.0, KEYS.shape[0])
    inside, lam = jax.jit(jax.vmap(lambda k, x: mixing.cutmix_box(k, x, 48, 48)))(KEYS, lam0)
    inside, lam, lam0 = np.asarray(inside), np.asarray(lam), np.asarray(lam0)
    np.testing.assert_allclose(lam, 1.0 - inside.mean(axis=(1, 2)), atol=1e-6)
    assert np.all(lam >= lam0 - 1e-6)  # rounding and clipping only ever shrink the box
    rows, cols = inside.any(axis=2), inside.any(axis=1)
    free = ~(rows[:, 0] | rows[:, -1] | cols[:, 0] | cols[:, -1]) & inside.any(axis=(1, 2))
    sides = np.sqrt(inside[free].sum(axis=(1, 2)))  # square: the image is
    assert free.sum() > 200  # measured: 334 of the 2000
    assert np.all(np.abs(sides - 48 * np.sqrt(1 - lam0[free])) <= 2.0)  # side = 2 * (floor(48 sqrt(1 - lam)) // 2)


def test_both_alphas_pick_mixup_or_cutmix_per_batch_half_the_time():
    images = _images()
    # Beta(1, 1) for both: lam is rarely so near 0 or 1 that a mixup blend rounds to a copy.
    mixed, lam = _mix_many(images, mixup_alpha=1.0, cutmix_alpha=1.0)
    either = np.all((np.asarray(mixed) == images) | (np.asarray(mixed) == images[::-1]), axis=(1, 2, 3, 4))
    interior = (np.asarray(lam) > 0.01) & (np.asarray(lam) < 0.99)
    cut_share = either[interior].mean()
    assert 0.4 < cut_share < 0.65, cut_share


def test_mixed_targets_sum_to_one_and_weigh_both_labels():
    labels, lam = jnp.array([0, 2, 2, 1]), jnp.float32(0.7)
    weights = jnp.array([1.0, 2.0, 4.0])
    targets, w = mixing.mixed_targets(labels, lam, weights)
    smoothed = optax.smooth_labels(targets, 0.1)  # as the step combines them
    np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(smoothed.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(targets[0], [0.7, 0.3, 0.0], rtol=1e-6)  # own 0, partner (reversed) 1
    np.testing.assert_allclose(w, [0.7 * 1 + 0.3 * 2, 4.0, 4.0, 0.7 * 2 + 0.3 * 1], rtol=1e-6)
    np.testing.assert_array_equal(mixing.dominant_labels(labels, lam), labels)
    np.testing.assert_array_equal(mixing.dominant_labels(labels, jnp.float32(0.2)), labels[::-1])


WEIGHTS = jnp.array([1.0, 2.0, 0.5, 1.0, 3.0])
STEP_KWARGS = dict(update_batch_stats=True, label_smoothing=0.1, class_weights=WEIGHTS, ema_decay=0.0)


@pytest.fixture(scope="module")
def plain_step():
    """(model, tx, state, batch, (state, metrics) of the unmixed step): one compile shared below."""
    model = models.create("mobilenet_v2_035", 5)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    tx = optax.adamw(1e-3, weight_decay=1e-4)
    batch = {"image": _images(8), "label": jnp.asarray(np.arange(8) % 5, jnp.int32)}
    state = new_state(variables, tx, seed=0, ema=False)
    step = jax.jit(make_train_step(model, tx, **STEP_KWARGS, mixup_alpha=0.0, cutmix_alpha=0.0))
    return model, tx, state, batch, step(state, batch)


def _todays_step(model, tx, label_smoothing, class_weights):
    """The step as it was before mixing existed (flowers_jax/steps.py at 1d1f937), for the off check."""

    def loss_fn(params, state, batch, rng):
        variables = {"params": params, "batch_stats": state.batch_stats, "preprocess": state.preprocess}
        logits, updates = model.apply(
            variables,
            batch["image"],
            train=True,
            update_batch_stats=True,
            mutable=["batch_stats"],
            rngs={"dropout": rng},
        )
        targets = optax.smooth_labels(jax.nn.one_hot(batch["label"], model.num_classes), label_smoothing)
        per_example = optax.softmax_cross_entropy(logits, targets) * class_weights[batch["label"]]
        return per_example.mean(), (logits, updates)

    def step(state, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        (loss, (_, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, state, batch, rng)
        deltas, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, deltas)
        return state.replace(
            step=state.step + 1, params=params, batch_stats=updates["batch_stats"], opt_state=opt_state
        ), loss

    return step


def test_mixing_off_is_bit_identical_to_the_unmixed_step(plain_step):
    model, tx, state, batch, (new, metrics) = plain_step
    old, loss = jax.jit(_todays_step(model, tx, 0.1, WEIGHTS))(state, batch)
    assert float(metrics["loss"]) == float(loss)
    jax.tree.map(np.testing.assert_array_equal, (new.params, new.batch_stats), (old.params, old.batch_stats))


def test_a_mixed_step_is_a_function_of_the_state_and_changes_the_loss(plain_step):
    model, tx, state, batch, (_, plain) = plain_step
    mixed = jax.jit(make_train_step(model, tx, **STEP_KWARGS, mixup_alpha=0.2, cutmix_alpha=1.0))
    (a, ma), (b, mb) = mixed(state, batch), mixed(state, batch)
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)  # same (seed, step): same mix
    assert float(ma["loss"]) == float(mb["loss"]) != float(plain["loss"])
    assert 0.0 <= float(ma["accuracy"]) <= 1.0
