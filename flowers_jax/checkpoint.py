"""Orbax checkpoints of a run: "latest" (every N steps, async) and "best" (by val macro-F1).

Layout: <workdir>/checkpoints/{latest,best}/<step>/{state,meta}. `state` is the
whole TrainState; `meta` is JSON: the run config, stage and early-stopping
bookkeeping, metrics (`state.RunProgress`). State is restored against shapes
from `jax.eval_shape` with shardings of the *current* mesh, so a checkpoint
written on 8 devices restores on 1 and vice versa. Orbax writes to a temporary
directory and renames it when complete, so a SIGKILL mid-save leaves the
previous checkpoint intact; a step damaged later (a truncated file, a deleted
one) is skipped on resume and moved to <workdir>/checkpoints/corrupt/.

This module owns restoring: the trainer's resume (`Checkpoints.restore_latest`),
the readers' look-ups (`find`, read-only) and the compatibility check.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint is missing or does not belong to this run's model."""


class UnreadableError(CheckpointError):
    """None of the checkpoint steps tried can be restored; `unreadable`: [(step, its error)]."""

    def __init__(self, message: str, unreadable: list[tuple[int, str]]):
        super().__init__(message)
        self.unreadable = unreadable


def check_compatible(meta: Mapping[str, Any], config: ml_collections.ConfigDict, where: str) -> None:
    """A workdir's checkpoint must be of this config's model and head size."""
    for key in ("model", "num_classes"):
        if meta[key] != config[key]:
            raise CheckpointError(
                f"{where} holds a checkpoint of {key}={meta[key]!r} but the config says {config[key]!r}; "
                "use another --workdir or the config that trained it"
            )


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
            # One manager with AnyPreservationPolicy(LatestN, BestN) would need no prefix, but it moves
            # every step to checkpoints/<step> (old workdirs, readers and launch/fetch.sh expect
            # latest/ and best/) and BestN keeps the later of tied scores where we keep the first.
            multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=directory.name),
        )
        return ocp.CheckpointManager(directory, options=options, item_names=("state", "meta"))


def _listed(list_series: Callable[[], Any], *, tries: int = 5) -> Any:
    """`list_series()` (an Orbax look-up that lists the step folders of a series and reads each one's
    metadata), again when a folder vanished between the listing and the read: a trainer beside this
    reader deletes old steps (max_to_keep), and Orbax then raises a bare FileNotFoundError."""
    for attempt in range(tries):
        try:
            return list_series()
        except FileNotFoundError:
            if attempt == tries - 1:
                raise
            time.sleep(0.05 * (attempt + 1))


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
    """The two checkpoint series of a workdir, as the trainer writes them."""

    def __init__(self, workdir: str, *, max_to_keep: int = 2, async_save: bool = True):
        self.root = _root(workdir)
        self.latest = _manager(self.root / "latest", max_to_keep, async_save)
        self.best = _manager(self.root / "best", 1, async_save)

    def save(self, which: str, step: int, state: Any, meta: Mapping[str, Any]) -> None:
        """Saves (asynchronously) `state` and the JSON record `meta` as step `step` of `which`."""
        manager = self.latest if which == "latest" else self.best
        if manager.latest_step() == step:
            return  # already saved at this step (e.g. an epoch end that is also a save step)
        # Orbax serialises the JSON item later, in its background thread, while the caller goes on
        # changing its record: the checkpoint gets a deep copy as of now (and a value that is not
        # JSON fails here, in the caller's thread, not in the writer's).
        snapshot = json.loads(json.dumps(dict(meta)))
        manager.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(snapshot))
        )

    def restore_latest(self, abstract_for: Callable[[dict], Any]) -> tuple[int, dict, Any] | None:
        """(step, meta, state) of the newest readable "latest" step, or None in a fresh workdir.

        `abstract_for(meta)` gives the ShapeDtypeStructs (with shardings) to restore the state
        onto; a CheckpointError it raises (an incompatible run) is passed on. Steps newer than the
        newest readable one (a truncated or deleted file) are skipped with a warning naming each
        and why, and moved aside to checkpoints/corrupt/ (never deleted): Orbax would otherwise
        keep taking one for the newest step and skip the saves of the steps replayed before it.
        When no step reads, nothing is moved (the cause may be this run's config, not the files).

        Every process of a multi-host run calls this (the managers' constructors synchronise);
        they agree on each step's verdict, and only process 0 moves a step.
        """
        step, restored, unreadable = _newest_readable(
            self.latest, sorted(self.latest.all_steps(), reverse=True), abstract_for, agree=_all_processes_ok
        )
        for bad, why in unreadable:
            self._set_aside(bad, why, step)
        return None if step is None else (step, *restored)

    def _set_aside(self, step: int, why: str, resume_step: int) -> None:
        """Moves an unreadable step out of the series (process 0), saying which, why and where."""
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        target = self.root / "corrupt" / f"latest-{step}-{stamp}"
        if jax.process_index() == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
            # A rename: atomic on a local disk; on an object store (gs://) a copy and delete of each
            # file, which still never loses the data.
            (self.latest.directory / str(step)).rename(target)
            log.warning(
                "checkpoint step %d in %s is unreadable (%s); resuming from step %d. "
                "The bad step is kept: moved it to %s",
                step,
                self.latest.directory,
                why,
                resume_step,
                target,
            )
        _sync(f"set aside step {step}")
        self.latest.reload()

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def _newest_readable(
    manager: ocp.CheckpointManager,
    steps: list[int],
    abstract_for: Callable[[dict], Any],
    *,
    agree: Callable[[bool], bool] = bool,
) -> tuple[int | None, tuple[dict, Any] | None, list[tuple[int, str]]]:
    """(step, (meta, state), [(newer step, why unreadable)]) of the first of `steps` that restores.

    A CheckpointError of `abstract_for` (an incompatible run) is passed on. When no step restores,
    raises CheckpointError naming each step and its error: nothing is then known to be damaged,
    since the cause may as well be the reader's config as the files. `agree` makes the processes
    of a multi-host run share one verdict per step.
    """
    unreadable: list[tuple[int, str]] = []
    for step in steps:
        try:
            meta = restore_meta(manager, step)
            restored = meta, restore_state(manager, step, abstract_for(meta))
            error = ""
        except CheckpointError:
            raise
        except Exception as e:  # Orbax/TensorStore raise many types for a missing or damaged file
            error = _first_line(f"{type(e).__name__}: {e}")
        if agree(not error):
            return step, restored, unreadable
        unreadable.append((step, error or "unreadable on another process"))
    if unreadable:
        raise UnreadableError(
            f"{manager.directory}: no checkpoint step can be restored: "
            + "; ".join(f"step {s}: {why}" for s, why in unreadable)
            + ". If the files are damaged, move the step folders out of the way (or use another --workdir)",
            unreadable,
        )
    return None, None, unreadable


def _first_line(text: str, limit: int = 300) -> str:
    line = text.strip().splitlines()[0] if text.strip() else text
    return line if len(line) <= limit else line[:limit] + "..."


def _all_processes_ok(ok: bool) -> bool:
    """True when `ok` holds on every process (a collective on multi-host runs, else just `ok`)."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(multihost_utils.process_allgather(np.int32(ok)).min())


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def find(workdir: str, which: str) -> tuple[ocp.CheckpointManager, int]:
    """Manager and step of which = "best" | "latest" | a step number (a read-only look-up)."""
    root = _root(workdir)
    if not root.is_dir():
        raise CheckpointError(f"{workdir}: no checkpoints/ folder; is this a training workdir?")
    name = "best" if which == "best" else "latest"
    if not (root / name).is_dir():
        raise CheckpointError(f"{workdir}: no {name} checkpoint yet")
    manager = _listed(lambda: _manager(root / name, 1, async_save=False, read_only=True))
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


def load_for_inference(workdir: str, which: str = "best") -> tuple[ml_collections.ConfigDict, dict, dict[str, Any]]:
    """Restores a checkpoint of a training workdir onto this process's devices (read-only).

    Args:
      workdir: the run's --workdir.
      which: "best" (by val macro-F1), "latest", or a step number.
    Returns:
      (config the run was trained with, variables for `models.create(config.model,
      config.num_classes)` -- EMA parameters when the run kept them --, info dict
      with step, which, and the validation metrics recorded with the checkpoint).
    Raises:
      CheckpointError: no workdir, no such checkpoint, or none of them readable.
    """
    from flowers_jax import distributed, state  # local: the look-ups above need no model code

    if not epath.Path(workdir).is_dir():
        raise CheckpointError(f"workdir {workdir!r} does not exist")
    try:
        manager, step = find(workdir, which)
    except CheckpointError as e:
        if which not in ("best", "latest"):
            raise  # it lists the steps that exist
        raise CheckpointError(f"{workdir}: no {which!r} checkpoint (has the run saved one yet?)") from e
    replicated = distributed.replicated(distributed.make_mesh())

    def abstract_for(meta: dict) -> Any:
        config = ml_collections.ConfigDict(json.loads(meta["config"]))
        abstract = state.abstract_state(config, state.build_model(config), meta["stage_index"])
        return abstract_with_sharding(abstract, replicated)

    step, (meta, restored), unreadable = _restore_for_reader(manager, which, step, abstract_for)
    for bad, why in unreadable:
        log.warning("%s: %s step %d is unreadable (%s); using step %d", workdir, which, bad, why, step)
    config = ml_collections.ConfigDict(json.loads(meta["config"]))
    info = {
        "step": step,
        "which": which,
        "val": meta.get("best_val") if which == "best" else None,
        "stage_index": meta["stage_index"],
    }
    return config, restored.variables(ema=config.ema_decay > 0), info


def _restore_for_reader(
    manager: ocp.CheckpointManager, which: str, step: int, abstract_for: Callable[[dict], Any], *, looks: int = 3
) -> tuple[int, tuple[dict, Any], list[tuple[int, str]]]:
    """(step, (meta, state), [(step, why unreadable)]) for a reader of a workdir that may be training.

    "latest" and "best" are moving targets: a running trainer deletes old steps (max_to_keep) as it
    saves new ones, possibly the one being read, and a step can be unreadable (a crash, a full
    disk). A reader of "latest" falls back to the next newest step; when none of the steps it knew
    of reads (a trainer saving every step can delete them all meanwhile), or the "best" it read was
    replaced, it looks again for steps saved since, `looks` times in all. A step number is read as is.
    """
    if which not in ("best", "latest"):
        return _newest_readable(manager, [step], abstract_for)
    tried: list[tuple[int, str]] = []
    error = UnreadableError(f"{manager.directory}: no {which} checkpoint left to read", tried)
    for look in range(looks):
        if look:
            _listed(manager.reload)
        steps = sorted(manager.all_steps(), reverse=True)  # cached: the listing of find() or of the reload
        candidates = [s for s in (steps if which == "latest" else steps[:1]) if s not in dict(tried)]
        if not candidates:
            break
        try:
            found, restored, unreadable = _newest_readable(manager, candidates, abstract_for)
            return found, restored, tried + unreadable
        except UnreadableError as e:
            error = e
            tried += e.unreadable
    raise error


def abstract_with_sharding(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """ShapeDtypeStructs of `tree`, all placed on `sharding`."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
