"""The training loop: staged fine-tuning with checkpoints, evaluation and resume.

One loop over global steps, as flax's examples/imagenet and big_vision write it. Up front: mesh
and input, model, the stage plan (how many steps each stage of the config owns), and the state,
resumed from the workdir's latest checkpoint or fresh. Each pass trains one step; what else
happens at that step (entering a stage, logging, saving, the epoch's evaluation with the best
checkpoint and early stopping) is decided from the step by a short named function below.
Re-running in the same workdir resumes where it stopped, data position included; a finished run
leaves <workdir>/DONE.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf

from flowers_jax import checkpoint, data, distributed, logs, metrics, models, optim, workdir_lock
from flowers_jax import config as config_lib
from flowers_jax.state import RunProgress, TrainState, abstract_state, build_model, initial_variables, new_state
from flowers_jax.steps import make_eval_step, make_train_step

log = logging.getLogger(__name__)

DONE_FILE = "DONE"


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite."""


def class_weights(config: ml_collections.ConfigDict, info: data.DatasetInfo) -> jnp.ndarray:
    """[C] loss weights: ones, or "balanced" n / (C_present * count_c) from the training split's counts."""
    if config.class_weights == "none":
        return jnp.ones(config.num_classes)
    return jnp.asarray(info.class_weights("train"), jnp.float32)


@dataclasses.dataclass(frozen=True)
class PlannedStage:
    """One stage of the run: `steps` = epochs x steps per epoch, counted from the step it starts at
    (where the stage before it ended: its last planned step, or the epoch early stopping ended it)."""

    index: int
    name: str
    config: ml_collections.ConfigDict
    epochs: int
    steps: int


def stage_plan(config: ml_collections.ConfigDict, steps_per_epoch: int) -> list[PlannedStage]:
    """The stages of `config` in run order, with the number of steps each owns."""
    return [
        PlannedStage(i, name, stage, stage.epochs, stage.epochs * steps_per_epoch)
        for i, (name, stage) in enumerate(config_lib.stages(config))
    ]


@dataclasses.dataclass(frozen=True)
class _Run:
    """What stays fixed for a whole run."""

    config: ml_collections.ConfigDict
    workdir: str
    mesh: jax.sharding.Mesh
    steps_per_epoch: int
    plan: list[PlannedStage]
    model: models.Classifier
    shapes: dict
    weights: jax.Array
    ckpts: checkpoint.Checkpoints
    writer: logs.MetricWriter
    eval_step: Callable


@dataclasses.dataclass
class _Epoch:
    """The epoch in progress: its bar, last step and wall-clock start (the first one compiles)."""

    bar: logs.Progress
    end: int
    start: float

    def position(self, step: int, steps_per_epoch: int) -> int:
        return steps_per_epoch - (self.end - step)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains `config` in `workdir` (resuming if it holds a checkpoint); returns the final summary.

    Holds the workdir's lock (`workdir_lock`) while it runs: a second trainer there is refused.
    """
    # Workdir I/O goes through tf.io.gfile: on a pod the workdir is a gs:// path.
    tf.io.gfile.makedirs(workdir)
    done_path = os.path.join(workdir, DONE_FILE)
    if tf.io.gfile.exists(done_path):
        return _finished(workdir, done_path)
    with workdir_lock.hold(workdir):
        if tf.io.gfile.exists(done_path):  # the run that held the lock finished meanwhile
            return _finished(workdir, done_path)
        return _train(config, workdir, done_path)


def _train(config: ml_collections.ConfigDict, workdir: str, done_path: str) -> dict[str, Any]:
    """The driver: one loop over global steps."""
    run, step, progress, state = _setup(config, workdir)
    train_iter = data.train_iterator(config, mesh=run.mesh, start_step=step)
    train_step = epoch = None
    pending, last_good = [], step  # metrics not yet fetched; the step of the last save
    # The prefetch thread must stop before the interpreter does: a thread left inside tf.data at
    # exit aborts the process ("FATAL: exception not rethrown") after a successful run.
    try:
        while not _run_finished(run, progress):
            if train_step is None or progress.stage_finished:
                train_step, state = _enter_stage(run, step, progress, state)
            if epoch is None:
                epoch = _open_epoch(run, step, progress)
            state, step_metrics = train_step(state, next(train_iter))
            step += 1
            pending.append((step, step_metrics))
            epoch_end, save = step == epoch.end, _save_now(config, step, epoch)
            if epoch_end or save or step % config.log_every_steps == 0:
                _flush(pending, run.writer, epoch.bar, epoch.position(step, run.steps_per_epoch), last_good)
            if save:
                run.ckpts.save("latest", step, state, progress.to_json())
                last_good = step
            if epoch_end:
                _end_epoch(run, step, state, progress, epoch)
                epoch, last_good = None, step
    finally:
        train_iter.close()
    return _finish(run, step, progress, done_path)


def _finished(workdir: str, done_path: str) -> dict[str, Any]:
    log.warning("%s: run already finished (DONE exists); nothing to do", workdir)
    with tf.io.gfile.GFile(done_path) as f:
        return json.load(f)


def _setup(config: ml_collections.ConfigDict, workdir: str) -> tuple[_Run, int, RunProgress, TrainState | None]:
    """Mesh, input, model, stage plan and checkpoints; (run, step, progress, state) resumed from the
    newest readable checkpoint (state None in a fresh workdir: `_enter_stage` makes it)."""
    mesh = distributed.make_mesh()
    repl, sharded = distributed.replicated(mesh), distributed.batch_sharded(mesh)
    info = data.dataset_info(config)
    steps_per_epoch = info.steps_per_epoch(config.batch_size)  # >= 1: the stream repeats to fill a batch
    model = build_model(config)
    ckpts = checkpoint.Checkpoints(workdir, max_to_keep=config.checkpoint.max_to_keep)

    def abstract_for(meta: dict) -> TrainState:
        checkpoint.check_compatible(meta, config, workdir)
        return checkpoint.abstract_with_sharding(abstract_state(config, model, meta["stage_index"]), repl)

    found = ckpts.restore_latest(abstract_for)
    if found:
        step, meta, state = found
        progress = RunProgress.from_json(meta)
        log.info("resuming from %s at step %d (stage %d)", workdir, step, progress.stage_index)
    else:
        step, progress, state = 0, RunProgress.fresh(config), None
    eval_step = make_eval_step(model, use_ema=config.ema_decay > 0)
    run = _Run(
        config=config,
        workdir=workdir,
        mesh=mesh,
        steps_per_epoch=steps_per_epoch,
        plan=stage_plan(config, steps_per_epoch),
        model=model,
        shapes=models.variable_shapes(model),
        weights=class_weights(config, info),
        ckpts=ckpts,
        writer=logs.MetricWriter(workdir, resume_step=step if found else None),
        eval_step=jax.jit(eval_step, in_shardings=(repl, sharded), out_shardings=repl),
    )
    return run, step, progress, state


def _run_finished(run: _Run, progress: RunProgress) -> bool:
    return progress.stage_finished and progress.stage_index + 1 == len(run.plan)


def _enter_stage(run: _Run, step: int, progress: RunProgress, state: TrainState | None) -> tuple[Callable, TrainState]:
    """The compiled step of the stage the run is in at `step`, and the state to train on.

    After a finished stage (also a resume exactly at its end) the next one starts here: fresh
    optimizer state for its parameter groups, a "stage" row in metrics.jsonl. A fresh run starts
    from the initial (pretrained) variables; a resumed one trains on the restored state as is.
    """
    config, repl = run.config, distributed.replicated(run.mesh)
    advancing = progress.stage_finished
    if advancing:
        progress.start_stage(progress.stage_index + 1, step)
    planned = run.plan[progress.stage_index]
    groups = optim.param_groups(run.shapes["params"], planned.config, models.get_arch(config.model))
    tx = optim.make_optimizer(config, planned.config, groups, steps=planned.steps, steps_per_epoch=run.steps_per_epoch)
    if jax.process_index() == 0:
        print(
            f"stage {planned.index + 1}/{len(run.plan)} {planned.name!r}: {planned.epochs} epochs x "
            f"{run.steps_per_epoch} steps, BatchNorm {planned.config.bn}\n{groups.table}",
            flush=True,
        )
    if state is None:
        variables = initial_variables(config, run.model)
        state = jax.device_put(new_state(variables, tx, seed=config.seed, ema=config.ema_decay > 0), repl)
    elif advancing:
        # Adam's moments take only the shapes of what tx.init is given; L2-SP's anchor takes the
        # values, and they are the pretrained weights, not where the last stage left them: reloaded.
        source = initial_variables(config, run.model)["params"] if optim.decays_to_pretrained(config) else state.params
        state = state.replace(opt_state=jax.jit(tx.init, out_shardings=repl)(source))
        run.writer.write(step, "stage", {"stage": planned.name, "stage_index": planned.index})
    step_fn = make_train_step(
        run.model,
        tx,
        update_batch_stats=planned.config.bn == "train",
        label_smoothing=config.label_smoothing,
        class_weights=run.weights,
        ema_decay=config.ema_decay,
        mixup_alpha=config.mixup_alpha,
        cutmix_alpha=config.cutmix_alpha,
    )
    sharded = distributed.batch_sharded(run.mesh)
    return jax.jit(step_fn, in_shardings=(repl, sharded), out_shardings=(repl, repl), donate_argnums=0), state


def _open_epoch(run: _Run, step: int, progress: RunProgress) -> _Epoch:
    """The epoch that `step` + 1 belongs to (a resumed run may open it in its middle)."""
    planned, spe = run.plan[progress.stage_index], run.steps_per_epoch
    epoch_in_stage = (step - progress.stage_start_step) // spe
    end = progress.stage_start_step + (epoch_in_stage + 1) * spe
    desc = f"{planned.name} epoch {epoch_in_stage + 1}/{planned.epochs}"
    bar = logs.Progress(spe, desc, batch_size=run.config.batch_size, initial=spe - (end - step))
    return _Epoch(bar=bar, end=end, start=time.perf_counter())


def _save_now(config: ml_collections.ConfigDict, step: int, epoch: _Epoch) -> bool:
    """A "latest" save every checkpoint.every_steps, except at an epoch's end (saved after its eval)."""
    return step % config.checkpoint.every_steps == 0 and step != epoch.end


def _flush(pending: list, writer: logs.MetricWriter, progress: logs.Progress, step_in_epoch: int, last_good: int):
    """Fetches the metrics of the steps since the last flush; stops on any non-finite value
    (loss, update or parameter norm), so that no diverged state is ever saved."""
    if not pending:
        return
    steps, values = zip(*pending, strict=True)
    values = jax.device_get(list(values))
    for s, v in zip(steps, values, strict=True):
        bad = {k: float(x) for k, x in v.items() if not np.isfinite(x)}
        if bad:
            kept = f"The last good checkpoint (step {last_good}) is kept. " if last_good else "No checkpoint yet. "
            raise TrainingDivergedError(
                f"non-finite {bad} at step {s}; stopping. {kept}"
                "Lower the learning rate, enable config.optimizer.grad_clip_norm, or check the input data."
            )
    mean = {k: float(np.mean([v[k] for v in values])) for k in values[0]}
    writer.write(steps[-1], "train", mean)
    progress.update(step_in_epoch, loss=mean["loss"], acc=mean["accuracy"])
    pending.clear()


def _end_epoch(run: _Run, step: int, state: TrainState, progress: RunProgress, epoch: _Epoch) -> None:
    """The epoch's evaluation: val metrics, the best checkpoint, early stopping, a "latest" save."""
    config, planned = run.config, run.plan[progress.stage_index]
    jax.block_until_ready(state.step)
    epoch.bar.close()
    train_seconds = time.perf_counter() - epoch.start
    val_start = time.perf_counter()
    val = evaluate(run.eval_step, state, config, run.mesh, config.data.val_split)
    timing = {"train_seconds": train_seconds, "val_seconds": time.perf_counter() - val_start}
    number = step // run.steps_per_epoch  # stages start at epoch boundaries
    run.writer.write(step, "val", val | {"epoch": number, "stage": planned.name} | timing)
    if jax.process_index() == 0:
        print(
            f"  epoch {number} (step {step}): val accuracy {val['accuracy']:.4f}, "
            f"macro-F1 {val['macro_f1']:.4f} (train {timing['train_seconds']:.0f} s, "
            f"val {timing['val_seconds']:.0f} s)",
            flush=True,
        )
    if progress.record_best(step, val):
        run.ckpts.save("best", step, state, progress.to_json())
    last_epoch = step - progress.stage_start_step == planned.steps
    stop = config.early_stopping
    stop_early = progress.record_stage_epoch(val, min_delta=stop.min_delta, patience=stop.patience)
    progress.stage_finished = stop_early or last_epoch
    run.ckpts.save("latest", step, state, progress.to_json())
    if stop_early:
        log.info(
            "stage %r: no macro-F1 gain for %d epochs; ending the stage early",
            planned.name,
            config.early_stopping.patience,
        )
        run.writer.write(step, "early_stop", {"stage": planned.name})


def evaluate(eval_step, state: TrainState, config: ml_collections.ConfigDict, mesh, split: str) -> dict[str, float]:
    """Accuracy, macro-F1 (and more, see `metrics.from_confusion`) over one pass of `split`."""
    cm = np.zeros((config.num_classes, config.num_classes), np.int64)
    for batch in data.eval_iterator(config, split, mesh=mesh):
        cm += np.asarray(jax.device_get(eval_step(state, {k: batch[k] for k in ("image", "label", "mask")})))
    return metrics.from_confusion(cm)


def _finish(run: _Run, step: int, progress: RunProgress, done_path: str) -> dict[str, Any]:
    """Waits for the saves in flight, writes the curves and DONE; returns the run's summary."""
    run.ckpts.wait()
    run.ckpts.close()
    run.writer.close()
    summary = {
        "step": step,
        "best_step": progress.best_step,
        "best_val_macro_f1": progress.best_val_macro_f1,
        "best_val": progress.best_val,
    }
    if jax.process_index() == 0:
        logs.plot_curves(run.workdir)
        with tf.io.gfile.GFile(done_path, "w") as f:
            json.dump(summary, f, indent=2)
    return summary
