"""The jitted training and evaluation steps (pure functions of state and batch)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from flowers_jax import metrics, mixing
from flowers_jax.models import Classifier
from flowers_jax.state import TrainState

Batch = dict[str, jax.Array]


def make_train_step(
    model: Classifier,
    tx: optax.GradientTransformation,
    *,
    update_batch_stats: bool,
    label_smoothing: float,
    class_weights: jax.Array,
    ema_decay: float,
    mixup_alpha: float = 0.0,
    cutmix_alpha: float = 0.0,
    axis_name: str | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """One optimisation step on a global batch {"image": [B, S, S, 3], "label": [B]}.

    Under `jax.jit` with the batch sharded over the mesh and the state replicated,
    the means below are global: XLA inserts the all-reduces, BatchNorm included.

    Args:
      update_batch_stats: BatchNorm trains (batch statistics, running averages
        updated) or is frozen (running averages, unchanged).
      label_smoothing: mass spread uniformly over the classes.
      class_weights: [C] per-class loss weights (ones: unweighted).
      ema_decay: 0 for no EMA of parameters.
      mixup_alpha, cutmix_alpha: Beta(alpha, alpha) of mixup / CutMix (mixing.py); 0 = off, both 0: unmixed.
      axis_name: only for running this step under `jax.pmap` (a benchmark peer):
        the mapped axis to average gradients and metrics over. Under jit over a
        mesh it stays None.
    """
    num_classes = model.num_classes
    mix = mixing.enabled(mixup_alpha, cutmix_alpha)

    def loss_fn(params, state: TrainState, batch: Batch, rng: jax.Array):
        variables = {"params": params, "batch_stats": state.batch_stats, "preprocess": state.preprocess}
        logits, updates = model.apply(
            variables,
            batch["image"],
            train=True,
            update_batch_stats=update_batch_stats,
            mutable=["batch_stats"],
            rngs={"dropout": rng},
        )
        if mix:  # label smoothing is linear: smoothing the mixed targets = mixing smoothed ones
            targets, weights = mixing.mixed_targets(batch["label"], batch["lam"], class_weights)
        else:
            targets, weights = jax.nn.one_hot(batch["label"], num_classes), class_weights[batch["label"]]
        targets = optax.smooth_labels(targets, label_smoothing)
        per_example = optax.softmax_cross_entropy(logits, targets) * weights
        return per_example.mean(), (logits, updates)

    def step(state: TrainState, batch: Batch):
        rng = jax.random.fold_in(state.rng, state.step)
        labels = batch["label"]  # what train accuracy counts against: mixed, each example's dominant label
        if mix:  # a key of its own, so that dropout's stays the unmixed step's
            batch, labels = mixing.mix(jax.random.fold_in(rng, 1), batch, mixup_alpha, cutmix_alpha)
        (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, state, batch, rng)
        deltas, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, deltas)
        ema = state.ema_params
        if ema is not None:
            ema = optax.incremental_update(params, ema, step_size=1.0 - ema_decay)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            batch_stats=updates["batch_stats"] if update_batch_stats else state.batch_stats,
            opt_state=opt_state,
            ema_params=ema,
        )
        accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
        if axis_name is not None:
            accuracy = jax.lax.pmean(accuracy, axis_name)
        # The parameter norm is what makes a save safe: a finite loss was computed *before* this
        # update, which can still overflow the parameters (the loop checks every value is finite).
        return new_state, {
            "loss": loss,
            "accuracy": accuracy,
            "update_norm": optax.tree.norm(deltas),
            "param_norm": optax.tree.norm(params),
        }

    return step


def make_eval_step(model: Classifier, *, use_ema: bool) -> Callable[[TrainState, Batch], jax.Array]:
    """[C, C] confusion counts of a padded batch {"image", "label", "mask"}."""

    def step(state: TrainState, batch: Batch) -> jax.Array:
        logits = model.apply(state.variables(ema=use_ema), batch["image"], train=False)
        return metrics.confusion_matrix(batch["label"], logits, batch["mask"])

    return step
