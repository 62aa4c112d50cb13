"""`--mode describe`: builds the config's model, loads its pretrained weights, and says what it got.

A quick, offline check of a config before spending accelerator time: the parameter table per
subtree, the pretrained load report, and the stage plan with each stage's parameter-group table
(what trains, at which learning rate). Reads no data and writes nothing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from flowers_jax import config as config_lib
from flowers_jax import models, optim, pretrained


def parameter_table(variables: dict) -> str:
    """One row per (collection, top-level subtree): tensors and values."""
    rows = {}
    for path, leaf in traverse_util.flatten_dict(variables).items():
        key = "/".join(path[:2]) if path[0] == "params" else path[0]
        n, size = rows.get(key, (0, 0))
        rows[key] = (n + 1, size + int(np.prod(leaf.shape)))
    lines = [f"{'subtree':<28}{'tensors':>9}{'values':>14}"]
    lines += [f"{k:<28}{n:>9}{size:>14,}" for k, (n, size) in rows.items()]
    return "\n".join(lines)


def run(config: ml_collections.ConfigDict, workdir: str | None) -> dict:
    """Prints the model's parameter table and pretrained load report; returns the variables."""
    del workdir  # describe writes nothing
    model = models.create(config.model, config.num_classes, dtype=jnp.dtype(config.dtype))
    if config.pretrained:
        # The load report (what came from the source, what is new) is logged by `load`.
        variables = pretrained.load(
            config.pretrained, config.model, config.num_classes, rng=jax.random.key(config.seed)
        )
    else:
        variables = jax.jit(model.init)(jax.random.key(config.seed), jnp.zeros((1, 32, 32, 3)))
        print(f"{config.model}: randomly initialised (config.pretrained is empty)")
    print(parameter_table(variables))
    size = config.data.image_size
    images = jnp.full((2, size, size, 3), 127.0)
    logits = jax.jit(model.apply)(variables, images)
    print(f"forward pass on {images.shape} -> logits {logits.shape}, finite: {bool(jnp.isfinite(logits).all())}")
    arch = models.get_arch(config.model)
    stages = config_lib.stages(config)
    for i, (name, stage) in enumerate(stages):
        groups = optim.param_groups(variables["params"], stage, arch)
        print(
            f"stage {i + 1}/{len(stages)} {name!r}: {stage.epochs} epochs, trains {stage.train!r}, "
            f"BatchNorm {stage.bn}, peak lr {stage.lr:g}, warm-up {stage.warmup_epochs:g} epochs\n{groups.table}"
        )
    return variables
