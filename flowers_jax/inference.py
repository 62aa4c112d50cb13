"""Trained variables out of a workdir, for evaluation, prediction and export."""

from __future__ import annotations

import json
from typing import Any

import ml_collections
from etils import epath

from flowers_jax import checkpoint, distributed
from flowers_jax.state import abstract_state, build_model


def load_for_inference(workdir: str, which: str = "best") -> tuple[ml_collections.ConfigDict, dict, dict[str, Any]]:
    """Restores a checkpoint of a training workdir onto this process's devices.

    Args:
      workdir: the run's --workdir.
      which: "best" (by val macro-F1), "latest", or a step number.
    Returns:
      (config the run was trained with, variables for `models.create(config.model,
      config.num_classes)` -- EMA parameters when the run kept them --, info dict
      with step, which, and the validation metrics recorded with the checkpoint).
    Raises:
      checkpoint.CheckpointError: no workdir, no such checkpoint.
    """
    if not epath.Path(workdir).is_dir():
        raise checkpoint.CheckpointError(f"workdir {workdir!r} does not exist")
    try:
        manager, step = checkpoint.find(workdir, which)
    except checkpoint.CheckpointError:
        raise checkpoint.CheckpointError(f"{workdir}: no {which!r} checkpoint (has the run saved one yet?)") from None
    meta = checkpoint.restore_meta(manager, step)
    config = ml_collections.ConfigDict(json.loads(meta["config"]))
    model = build_model(config)
    abstract = abstract_state(config, model, meta["stage_index"])
    mesh = distributed.make_mesh()
    state = checkpoint.restore_state(
        manager, step, checkpoint.abstract_with_sharding(abstract, distributed.replicated(mesh))
    )
    info = {
        "step": step,
        "which": which,
        "val": meta.get("best_val") if which == "best" else None,
        "stage_index": meta["stage_index"],
    }
    return config, state.variables(ema=config.ema_decay > 0), info
