"""Checks a run config before any compute, naming the key and what to do."""

from __future__ import annotations

import math

import jax
import ml_collections

from flowers_jax import models, optim


class ConfigError(ValueError):
    """A config value that cannot work."""


def _fail(key: str, message: str) -> None:
    raise ConfigError(f"config.{key}: {message}")


def stages(config: ml_collections.ConfigDict) -> list[tuple[str, ml_collections.ConfigDict]]:
    """(name, stage) pairs in run order."""
    return [(n.strip(), config.stages[n.strip()]) for n in config.stage_order.split(",") if n.strip()]


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError for the first bad value found."""
    if config.model not in models.names():
        _fail("model", f"unknown model {config.model!r}; choose one of {', '.join(models.names())}")
    arch = models.get_arch(config.model)
    if config.num_classes < 2:
        _fail("num_classes", f"must be >= 2, got {config.num_classes}")
    if config.dtype not in ("float32", "bfloat16"):
        _fail("dtype", f"must be 'float32' or 'bfloat16', got {config.dtype!r}")
    _validate_kernels(config)
    if config.batch_size < 1 or config.batch_size % jax.device_count():
        _fail("batch_size", f"{config.batch_size} must be a positive multiple of the {jax.device_count()} devices")
    if config.class_weights not in ("none", "balanced"):
        _fail("class_weights", f"must be 'none' or 'balanced', got {config.class_weights!r}")
    if not 0.0 <= config.label_smoothing < 1.0:
        _fail("label_smoothing", f"must be in [0, 1), got {config.label_smoothing}")
    if not 0.0 <= config.ema_decay < 1.0:
        _fail("ema_decay", f"must be in [0, 1), got {config.ema_decay}")
    if config.optimizer.name not in ("adamw", "sgd"):
        _fail("optimizer.name", f"must be 'adamw' or 'sgd', got {config.optimizer.name!r}")
    _validate_recipe(config)
    if config.checkpoint.every_steps < 1:
        _fail("checkpoint.every_steps", "must be >= 1")
    if config.log_every_steps < 1:
        _fail("log_every_steps", f"must be >= 1, got {config.log_every_steps}")
    if config.data.image_size < 16:
        _fail("data.image_size", f"must be >= 16 pixels, got {config.data.image_size}")
    if config.data.tfrecord_size < 0:
        _fail("data.tfrecord_size", f"must be 0 (= image_size) or a stored size, got {config.data.tfrecord_size}")
    modes = {m.strip() for m in config.eval.tta.split(",") if m.strip()}
    if modes - {"flip", "crops"}:
        _fail("eval.tta", f"unknown mode(s) {sorted(modes - {'flip', 'crops'})}; use '', flip, crops or flip,crops")
    _validate_trust(config)
    order = [s.strip() for s in config.stage_order.split(",") if s.strip()]
    if not order:
        _fail("stage_order", "names no stage")
    for name in order:
        if name not in config.stages:
            _fail("stage_order", f"no stage {name!r} in config.stages ({', '.join(config.stages)})")
    for key in order:
        stage = config.stages[key]
        if stage.epochs < 1:
            _fail(f"stages.{key}.epochs", f"must be >= 1, got {stage.epochs}")
        if stage.lr <= 0:
            _fail(f"stages.{key}.lr", f"must be > 0, got {stage.lr}")
        if stage.bn not in ("frozen", "train"):
            _fail(f"stages.{key}.bn", f"must be 'frozen' or 'train', got {stage.bn!r}")
        for field in ("train", "lr_scale"):
            for item in filter(None, (s.strip() for s in stage[field].split(","))):
                try:
                    optim.selector_regex(item.rsplit("=", 1)[0] if field == "lr_scale" else item, arch)
                    if field == "lr_scale":
                        optim._parse_scales(item)
                except (optim.ParamGroupError, ValueError) as e:
                    _fail(f"stages.{key}.{field}", str(e))


def _validate_kernels(config: ml_collections.ConfigDict) -> None:
    kernels, depthwise = models.kernels.KERNELS, models.kernels.DEPTHWISE_IMPLS
    if config.kernels not in kernels:
        _fail("kernels", f"must be one of {', '.join(map(repr, kernels))}, got {config.kernels!r}")
    if config.depthwise_impl not in depthwise:
        _fail("depthwise_impl", f"must be one of {', '.join(map(repr, depthwise))}, got {config.depthwise_impl!r}")
    m = config.bn_momentum
    if m is not None and not (isinstance(m, int | float) and 0.0 <= m < 1.0):
        _fail("bn_momentum", f"must be None (the architecture's momentum) or in [0, 1), got {m!r}")


def _validate_recipe(config: ml_collections.ConfigDict) -> None:
    """The regularisers of the recipe search (issue #15): weight decay's target, mixup/cutmix, rates."""
    decay_to = config.optimizer.decay_to
    if decay_to not in optim.DECAY_TO:
        _fail("optimizer.decay_to", f"must be one of {', '.join(map(repr, optim.DECAY_TO))}, got {decay_to!r}")
    if decay_to == "pretrained" and not config.pretrained:
        _fail(
            "optimizer.decay_to",
            "'pretrained' decays toward the pretrained weights, but config.pretrained is empty (random "
            "init); set a source or use 'zero'",
        )
    for key in ("mixup_alpha", "cutmix_alpha"):
        alpha = config[key]
        if not (isinstance(alpha, int | float) and math.isfinite(alpha) and alpha >= 0):
            _fail(key, f"must be a number >= 0 (the Beta(alpha, alpha) of each batch's mix; 0 = off), got {alpha!r}")
    for key in ("dropout_rate", "drop_connect_rate"):
        rate = config[key]
        if rate is not None and not (isinstance(rate, int | float) and 0.0 <= rate < 1.0):
            _fail(key, f"must be None (the architecture's rate) or in [0, 1), got {rate!r}")


def _validate_trust(config: ml_collections.ConfigDict) -> None:
    from flowers_jax import abstain  # numpy/scipy only

    if config.eval.calibration not in ("auto", "off"):
        _fail("eval.calibration", f"must be 'auto' or 'off', got {config.eval.calibration!r}")
    t = config.trust
    if not 0.0 < t.target_risk < 1.0:
        _fail("trust.target_risk", f"must be in (0, 1), e.g. 0.02 for 2% errors, got {t.target_risk}")
    if t.selective_score not in ("auto", *abstain.CONFIDENCE_SCORES):
        _fail(
            "trust.selective_score",
            f"must be 'auto' or one of {abstain.CONFIDENCE_SCORES}, got {t.selective_score!r}",
        )
    if t.openset_score not in abstain.OPENSET_SCORES:
        _fail("trust.openset_score", f"must be one of {abstain.OPENSET_SCORES}, got {t.openset_score!r}")
    if not 0.5 <= t.known_recall <= 1.0:
        _fail("trust.known_recall", f"must be in [0.5, 1] (share of val flowers kept), got {t.known_recall}")
    if not t.add_species.scale > 0:
        _fail("trust.add_species.scale", f"must be > 0 (flowers_jax/personalise.py), got {t.add_species.scale}")
    if not math.isfinite(t.add_species.margin):
        _fail("trust.add_species.margin", f"must be a finite number, got {t.add_species.margin}")
