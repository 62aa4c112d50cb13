"""Trained variables out of a workdir, for evaluation, prediction and export."""

from __future__ import annotations

import json
import logging
from typing import Any

import ml_collections
from etils import epath

from flowers_jax import checkpoint, distributed
from flowers_jax.state import abstract_state, build_model

log = logging.getLogger(__name__)


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
    except checkpoint.CheckpointError as e:
        if which not in ("best", "latest"):
            raise  # it lists the steps that exist
        raise checkpoint.CheckpointError(f"{workdir}: no {which!r} checkpoint (has the run saved one yet?)") from e
    # "latest" is a moving target: a running trainer deletes old steps (max_to_keep) and a step
    # can be unreadable (a crash, a full disk). Its reader falls back to the next newest step.
    candidates = sorted(manager.all_steps(), reverse=True) if which == "latest" else [step]
    for i, step in enumerate(candidates):
        try:
            meta, config, state = _restore(manager, step)
            break
        except Exception as e:  # Orbax/TensorStore raise many types for a missing or damaged step
            if i + 1 == len(candidates):
                raise checkpoint.CheckpointError(
                    f"{workdir}: checkpoint {which!r} (step {step}) unreadable: {e}"
                ) from e
            log.warning("%s: latest step %d is unreadable (%s); using step %d", workdir, step, e, candidates[i + 1])
    info = {
        "step": step,
        "which": which,
        "val": meta.get("best_val") if which == "best" else None,
        "stage_index": meta["stage_index"],
    }
    return config, state.variables(ema=config.ema_decay > 0), info


def _restore(manager, step: int) -> tuple[dict, ml_collections.ConfigDict, Any]:
    """(meta, training config, TrainState) of one step, onto this process's devices."""
    meta = checkpoint.restore_meta(manager, step)
    config = ml_collections.ConfigDict(json.loads(meta["config"]))
    abstract = abstract_state(config, build_model(config), meta["stage_index"])
    mesh = distributed.make_mesh()
    state = checkpoint.restore_state(
        manager, step, checkpoint.abstract_with_sharding(abstract, distributed.replicated(mesh))
    )
    return meta, config, state
