"""What the benchmarks share: random batches, a timer, and our real training step ready to time.

The step is `flowers_jax.steps.make_train_step` with the optimizer `flowers_jax.optim` builds for
a stage (AdamW, weight-decay mask, clipping, label smoothing), as `flowers_jax.train` runs it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flowers_jax import hugepages, models, optim
from flowers_jax.state import TrainState, new_state
from flowers_jax.steps import make_train_step

NUM_CLASSES = 104


def random_batch(batch: int, size: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 [B, S, S, 3] in [0, 255], labels int32 [B])."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
    return images, rng.integers(0, NUM_CLASSES, batch).astype(np.int32)


def keras_env(backend: str = "tensorflow", *, huge_pages: bool = False) -> dict[str, str]:
    """Environment of a Keras peer's subprocess: `backend`, TF's log noise off, and (unless
    `huge_pages`) without the huge-page restart ours runs with, so Keras runs as by default."""
    env = dict(os.environ) if huge_pages else hugepages.without_huge_pages(os.environ)
    return env | {"KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}


def median_seconds(fn: Callable[[], Any], *, warmup: int = 1, min_reps: int = 3, min_seconds: float = 10.0) -> float:
    """Median wall seconds of `fn()` (which must block until done) after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times, start = [], time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def stage(train: str = "all", bn: str = "train") -> ml_collections.ConfigDict:
    """A training stage as configs/default.py spells one: what trains, and BatchNorm's mode."""
    return ml_collections.ConfigDict(
        dict(name=train, train=train, lr_scale="", lr=1e-3, warmup_epochs=0.0, end_lr_ratio=0.0, bn=bn)
    )


def optimizer_config() -> ml_collections.ConfigDict:
    """configs/default.py's optimizer section."""
    from configs import default  # configs/ is installed with the package (pyproject.toml)

    return ml_collections.ConfigDict(dict(optimizer=default.get_config().optimizer))


def train_step_and_state(
    model_name: str,
    *,
    size: int,
    train: str = "all",
    bn: str = "train",
    axis_name: str | None = None,
    **overrides: Any,
) -> tuple[Callable[[TrainState, dict], tuple[TrainState, dict]], TrainState]:
    """(step, state): our un-jitted train step for `model_name` and a fresh (random-init) state.

    Args:
      train: the stage's trainable selector ("all", "head", ...).
      bn: "train" (batch statistics) or "frozen".
      axis_name: for running the step under `jax.pmap` (BatchNorm and metrics averaged over it).
      overrides: `models.create` overrides (dtype, depthwise_impl, ...).
    """
    if axis_name:
        overrides["bn_axis_name"] = axis_name
    model = models.create(model_name, NUM_CLASSES, **overrides)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))
    s = stage(train, bn)
    groups = optim.param_groups(variables["params"], s, models.get_arch(model_name))
    tx = optim.make_optimizer(optimizer_config(), s, groups, steps=1000, steps_per_epoch=100)
    step = make_train_step(
        model,
        tx,
        update_batch_stats=bn == "train",
        label_smoothing=0.1,
        class_weights=jnp.ones(NUM_CLASSES),
        ema_decay=0.0,
        axis_name=axis_name,
    )
    return step, new_state(variables, tx, seed=0, ema=False)


def step_runner(
    model_name: str, *, batch: int, size: int, train: str = "all", bn: str = "train", **overrides: Any
) -> Callable[[], None]:
    """A callable running one jitted training step on a fixed random batch and waiting for it
    (`overrides`: `models.create`'s, e.g. kernels="xla")."""
    step, state = train_step_and_state(model_name, size=size, train=train, bn=bn, **overrides)
    step = jax.jit(step, donate_argnums=0)
    images, labels = random_batch(batch, size)
    arrays = {"image": jax.device_put(images), "label": jax.device_put(labels)}
    holder = [state]

    def one() -> None:
        holder[0], metrics = step(holder[0], arrays)
        jax.block_until_ready(metrics)

    return one
