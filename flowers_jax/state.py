"""The train state: everything a resumed run needs, as one pytree Orbax can save, and the
run's progress record (stage, best and early-stopping bookkeeping) saved beside it as JSON."""

from __future__ import annotations

import dataclasses
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


@dataclasses.dataclass
class RunProgress:
    """Where a run stands, saved with every checkpoint (its `meta` item, JSON).

    model/num_classes/config: what the run trains (config as JSON; checked on resume and by readers).
    stage_index, stage_start_step: the current stage and the global step it started at.
    stage_finished: the stage ran its epochs or stopped early (a resume goes on to the next one).
    best_val_macro_f1, best_step, best_val: the best checkpoint's score, step and val metrics.
    stage_best_val_macro_f1, epochs_since_stage_best: early stopping within the current stage.
    """

    model: str
    num_classes: int
    config: str
    stage_index: int = 0
    stage_start_step: int = 0
    stage_finished: bool = False
    best_val_macro_f1: float = -1.0
    best_step: int | None = None
    best_val: dict[str, Any] | None = None
    stage_best_val_macro_f1: float = -1.0
    epochs_since_stage_best: int = 0

    @classmethod
    def fresh(cls, config: ml_collections.ConfigDict) -> RunProgress:
        return cls(model=config.model, num_classes=config.num_classes, config=config.to_json())

    def to_json(self) -> dict[str, Any]:
        """A new JSON-ready dict (nothing shared with this record)."""
        return dataclasses.asdict(self)

    def start_stage(self, index: int, step: int) -> None:
        """Stage `index` begins at global step `step`, with its own early-stopping count."""
        self.stage_index, self.stage_start_step, self.stage_finished = index, step, False
        self.stage_best_val_macro_f1, self.epochs_since_stage_best = -1.0, 0

    def record_best(self, step: int, val: dict[str, Any]) -> bool:
        """Takes an epoch's val metrics; True when they are the run's best macro-F1 so far."""
        if val["macro_f1"] <= self.best_val_macro_f1:
            return False
        self.best_val_macro_f1, self.best_step, self.best_val = val["macro_f1"], step, val
        return True

    def record_stage_epoch(self, val: dict[str, Any], *, min_delta: float, patience: int) -> bool:
        """Early stopping: True when the stage has gone `patience` epochs (> 0) without a macro-F1
        gain of more than `min_delta` over its best."""
        if val["macro_f1"] > self.stage_best_val_macro_f1 + min_delta:
            self.stage_best_val_macro_f1, self.epochs_since_stage_best = val["macro_f1"], 0
        else:
            self.epochs_since_stage_best += 1
        return patience > 0 and self.epochs_since_stage_best >= patience

    @classmethod
    def from_json(cls, meta: dict[str, Any]) -> RunProgress:
        """From a checkpoint's `meta`; older checkpoints wrote the same keys as a dict (best_val
        only once a best existed), and keys this version does not know are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in meta.items() if k in names})


def build_model(config: ml_collections.ConfigDict) -> models.Classifier:
    # .get: configs saved in checkpoints before `kernels` or the rates existed lack them.
    return models.create(
        config.model,
        config.num_classes,
        dtype=jnp.dtype(config.dtype),
        kernels=config.get("kernels", "auto"),
        depthwise_impl=config.depthwise_impl,
        bn_momentum=config.get("bn_momentum"),
        dropout_rate=config.get("dropout_rate"),
        drop_connect_rate=config.get("drop_connect_rate"),
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
    # The shapes go in as an argument, so that new_state sees tracers: the copies of the parameters
    # it makes (jnp.copy: the EMA's, L2-SP's anchor in the optimizer state) refuse a bare ShapeDtypeStruct.
    return jax.eval_shape(lambda v: new_state(v, tx, seed=config.seed, ema=config.ema_decay > 0), shapes)
