"""The train state: everything a resumed run needs, as one pytree Orbax can save."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from flowers_jax import models, pretrained


@flax.struct.dataclass
class TrainState:
    """step: global step; params/batch_stats/preprocess: the model's variables;
    opt_state: of the current stage's optimizer; ema_params: exponential moving
    average of params (None when off); rng: uint32[2] key for dropout."""

    step: jax.Array
    params: Any
    batch_stats: Any
    preprocess: Any
    opt_state: Any
    ema_params: Any
    rng: jax.Array

    def variables(self, *, ema: bool = False) -> dict:
        """Variables for `model.apply`, with the EMA parameters when asked and kept."""
        params = self.ema_params if ema and self.ema_params is not None else self.params
        return {"params": params, "batch_stats": self.batch_stats, "preprocess": self.preprocess}


def build_model(config: ml_collections.ConfigDict) -> models.Classifier:
    overrides = {"bn_momentum": config.bn_momentum} if config.get("bn_momentum") else {}
    return models.create(
        config.model,
        config.num_classes,
        dtype=jnp.dtype(config.dtype),
        depthwise_impl=config.depthwise_impl,
        **overrides,
    )


def initial_variables(config: ml_collections.ConfigDict, model: models.Classifier) -> dict:
    """Pretrained variables (backbone from `config.pretrained`, new head) or a random init."""
    rng = jax.random.PRNGKey(config.seed)
    if config.pretrained:
        return pretrained.load(config.pretrained, config.model, config.num_classes, rng=rng)
    size = config.data.image_size
    return jax.jit(model.init)(rng, jnp.zeros((1, size, size, 3)))


def new_state(variables: dict, tx: optax.GradientTransformation, *, seed: int, ema: bool) -> TrainState:
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        preprocess=variables["preprocess"],
        opt_state=tx.init(params),
        ema_params=jax.tree.map(jnp.copy, params) if ema else None,
        rng=jax.random.PRNGKey(seed + 1),
    )


def abstract_state(config: ml_collections.ConfigDict, model: models.Classifier, stage_index: int) -> TrainState:
    """Shapes/dtypes of the TrainState in stage `stage_index` (for restoring a checkpoint).

    The optimizer state's structure depends on the stage's parameter groups, not on
    its schedule, so placeholder step counts are fine here.
    """
    from flowers_jax import optim  # local: optim is only needed to rebuild the stage's groups

    shapes = models.variable_shapes(model)
    from flowers_jax.config import stages

    stage = stages(config)[stage_index][1]
    groups = optim.param_groups(shapes["params"], stage, models.get_arch(config.model))
    tx = optim.make_optimizer(config, stage, groups, steps=2, steps_per_epoch=1)
    return jax.eval_shape(lambda: new_state(shapes, tx, seed=config.seed, ema=config.ema_decay > 0))
