"""Orbax checkpoints of a run: "latest" (every N steps, async) and "best" (by val macro-F1).

Layout: <workdir>/checkpoints/{latest,best}/<step>/{state,meta}. `state` is the
whole TrainState; `meta` is JSON: the run config, stage and early-stopping
bookkeeping, metrics. State is restored against shapes from `jax.eval_shape`
with shardings of the *current* mesh, so a checkpoint written on 8 devices
restores on 1 and vice versa. Orbax writes to a temporary directory and
renames it when complete, so a SIGKILL mid-save leaves the previous
checkpoint intact.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath


class CheckpointError(RuntimeError):
    """A checkpoint is missing or does not belong to this run's model."""


def _root(workdir: str) -> epath.Path:
    """<workdir>/checkpoints as an absolute path: Orbax refuses relative ones (gs:// is absolute)."""
    return epath.Path(workdir if "://" in workdir else os.path.abspath(workdir)) / "checkpoints"


def _manager(
    directory: epath.Path, max_to_keep: int, async_save: bool, *, read_only: bool = False
) -> ocp.CheckpointManager:
    """The trainer's manager of one series, or (`read_only`) a reader's: one that never creates a
    folder, deletes a step or cleans up the temporary folder of a save in flight (the trainer's)."""
    # A read-only manager logs WARNINGs on every look-up ("Given directory is read only",
    # "setting save_interval_steps=0") that say nothing wrong; they are kept out of the output.
    with _absl_level(logging.ERROR) if read_only else contextlib.nullcontext():
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else max_to_keep,
            create=not read_only,
            read_only=read_only,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=not read_only,
            # Orbax names its cross-process barriers after the step directory ("async_write_complete.8"):
            # "latest" and "best" saving the same step at once would join one barrier twice and fail
            # multi-host runs ("Barrier ... is already ongoing"). A per-series prefix keeps them apart.
            multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=directory.name),
        )
        return ocp.CheckpointManager(directory, options=options, item_names=("state", "meta"))


@contextlib.contextmanager
def _absl_level(level: int):
    logger = logging.getLogger("absl")
    old = logger.level
    logger.setLevel(max(level, old))
    try:
        yield
    finally:
        logger.setLevel(old)


class Checkpoints:
    """The two checkpoint series of a workdir."""

    def __init__(self, workdir: str, *, max_to_keep: int = 2, async_save: bool = True):
        root = _root(workdir)
        self.latest = _manager(root / "latest", max_to_keep, async_save)
        self.best = _manager(root / "best", 1, async_save)

    def save(self, which: str, step: int, state: Any, meta: dict) -> None:
        manager = self.latest if which == "latest" else self.best
        if manager.latest_step() == step:
            return  # already saved at this step (e.g. an epoch end that is also a save step)
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

    def latest_meta(self) -> tuple[int, dict] | None:
        """(step, meta) of the latest checkpoint, or None in a fresh workdir.

        Uses this object's own manager: every process of a multi-host run must create
        the same Orbax managers in the same order (their constructors synchronise).
        """
        step = self.latest.latest_step()
        return None if step is None else (step, restore_meta(self.latest, step))

    def restore_latest(self, abstract_state: Any) -> Any:
        """The latest TrainState, onto the shardings given in `abstract_state`."""
        return restore_state(self.latest, self.latest.latest_step(), abstract_state)

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def find(workdir: str, which: str) -> tuple[ocp.CheckpointManager, int]:
    """Manager and step of which = "best" | "latest" | a step number (a read-only look-up)."""
    root = _root(workdir)
    if not root.is_dir():
        raise CheckpointError(f"{workdir}: no checkpoints/ folder; is this a training workdir?")
    name = "best" if which == "best" else "latest"
    if not (root / name).is_dir():
        raise CheckpointError(f"{workdir}: no {name} checkpoint yet")
    manager = _manager(root / name, 1, async_save=False, read_only=True)
    if which in ("best", "latest"):
        step = manager.latest_step()
    else:
        if not str(which).isdigit():
            raise CheckpointError(f"--checkpoint must be best, latest or a step number, got {which!r}")
        step = int(which)
        if step not in manager.all_steps():
            raise CheckpointError(f"{workdir}: no checkpoint at step {step}; have {sorted(manager.all_steps())}")
    if step is None:
        raise CheckpointError(f"{workdir}: no {name} checkpoint yet")
    return manager, step


def restore_meta(manager: ocp.CheckpointManager, step: int) -> dict:
    """The JSON `meta` item of a checkpoint (cheap: no arrays are read)."""
    return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def restore_state(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> Any:
    """The `state` item of a checkpoint, onto the shardings given in `abstract_state` (ShapeDtypeStructs)."""
    return manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))["state"]


def read_meta(workdir: str, which: str = "latest") -> tuple[int, dict] | None:
    """(step, meta) of a checkpoint, or None when the workdir has none yet."""
    try:
        manager, step = find(workdir, which)
    except CheckpointError:
        return None
    return step, restore_meta(manager, step)


def abstract_with_sharding(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """ShapeDtypeStructs of `tree`, all placed on `sharding`."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
