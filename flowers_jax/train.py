"""The training loop: staged fine-tuning with checkpoints, evaluation and resume.

Reads top to bottom: mesh and input; model and state; one section per stage
(optimizer groups, compiled step, epochs of steps, evaluation, checkpoints,
early stopping). Re-running in the same workdir resumes from the latest
checkpoint, data position included; a finished run leaves <workdir>/DONE.
"""

from __future__ import annotations

import json
import logging
import os
import time
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


def evaluate(eval_step, state: TrainState, config: ml_collections.ConfigDict, mesh, split: str) -> dict[str, float]:
    """Accuracy, macro-F1 (and more, see `metrics.from_confusion`) over one pass of `split`."""
    cm = np.zeros((config.num_classes, config.num_classes), np.int64)
    for batch in data.eval_iterator(config, split, mesh=mesh):
        cm += np.asarray(jax.device_get(eval_step(state, {k: batch[k] for k in ("image", "label", "mask")})))
    return metrics.from_confusion(cm)


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


def _finished(workdir: str, done_path: str) -> dict[str, Any]:
    log.warning("%s: run already finished (DONE exists); nothing to do", workdir)
    with tf.io.gfile.GFile(done_path) as f:
        return json.load(f)


def _train(config: ml_collections.ConfigDict, workdir: str, done_path: str) -> dict[str, Any]:

    # ---- Mesh and input -------------------------------------------------------------------------
    mesh = distributed.make_mesh()
    repl, sharded = distributed.replicated(mesh), distributed.batch_sharded(mesh)
    info = data.dataset_info(config)
    steps_per_epoch = info.steps_per_epoch(config.batch_size)  # >= 1: the stream repeats to fill a batch
    weights = class_weights(config, info)

    # ---- Model, state, resume -------------------------------------------------------------------
    model = build_model(config)
    arch = models.get_arch(config.model)
    stages = config_lib.stages(config)
    shapes = models.variable_shapes(model)
    ckpts = checkpoint.Checkpoints(workdir, max_to_keep=config.checkpoint.max_to_keep)

    def abstract_for(meta: dict) -> TrainState:
        checkpoint.check_compatible(meta, config, workdir)
        return checkpoint.abstract_with_sharding(abstract_state(config, model, meta["stage_index"]), repl)

    found = ckpts.restore_latest(abstract_for)
    if found:
        step, saved, restored = found
        meta = RunProgress.from_json(saved)
        log.info("resuming from %s at step %d (stage %d)", workdir, step, meta.stage_index)
    else:
        step, meta, restored = 0, RunProgress.fresh(config), None
    writer = logs.MetricWriter(workdir, resume_step=step if found else None)
    train_iter = data.train_iterator(config, mesh=mesh, start_step=step)
    use_ema = config.ema_decay > 0
    eval_step = jax.jit(make_eval_step(model, use_ema=use_ema), in_shardings=(repl, sharded), out_shardings=repl)
    state: TrainState | None = None

    # The prefetch thread must stop before the interpreter does: a thread left inside tf.data at
    # exit aborts the process ("FATAL: exception not rethrown") after a successful run.
    try:
        for stage_index in range(meta.stage_index, len(stages)):
            name, stage = stages[stage_index]
            # ---- Stage: parameter groups and optimizer ----------------------------------------------
            groups = optim.param_groups(shapes["params"], stage, arch)
            stage_steps = stage.epochs * steps_per_epoch
            tx = optim.make_optimizer(config, stage, groups, steps=stage_steps, steps_per_epoch=steps_per_epoch)
            if jax.process_index() == 0:
                print(
                    f"stage {stage_index + 1}/{len(stages)} {name!r}: {stage.epochs} epochs x {steps_per_epoch} steps, "
                    f"BatchNorm {stage.bn}\n{groups.table}",
                    flush=True,
                )
            if state is None and restored is not None:
                state = restored
            elif state is None:
                state = jax.device_put(
                    new_state(initial_variables(config, model), tx, seed=config.seed, ema=use_ema), repl
                )
            else:  # a new stage: fresh optimizer state for its groups
                state = state.replace(opt_state=jax.jit(tx.init, out_shardings=repl)(state.params))
                meta.stage_index, meta.stage_start_step, meta.stage_finished = stage_index, step, False
                meta.stage_best_val_macro_f1, meta.epochs_since_stage_best = -1.0, 0
                writer.write(step, "stage", {"stage": name, "stage_index": stage_index})
            if meta.stage_finished:
                continue  # resumed exactly at the end of this stage

            # ---- Stage: compiled step -----------------------------------------------------------
            train_step = jax.jit(
                make_train_step(
                    model,
                    tx,
                    update_batch_stats=stage.bn == "train",
                    label_smoothing=config.label_smoothing,
                    class_weights=weights,
                    ema_decay=config.ema_decay,
                ),
                in_shardings=(repl, sharded),
                out_shardings=(repl, repl),
                donate_argnums=0,
            )

            # ---- Stage: epochs ------------------------------------------------------------------
            first_epoch = (step - meta.stage_start_step) // steps_per_epoch
            for epoch_in_stage in range(first_epoch, stage.epochs):
                epoch_end = meta.stage_start_step + (epoch_in_stage + 1) * steps_per_epoch
                epoch = epoch_end // steps_per_epoch
                progress = logs.Progress(
                    steps_per_epoch,
                    f"{name} epoch {epoch_in_stage + 1}/{stage.epochs}",
                    batch_size=config.batch_size,
                    initial=steps_per_epoch - (epoch_end - step),
                )
                pending, last_good = [], step
                epoch_start = time.perf_counter()  # wall time of the epoch's steps (the first compiles)
                while step < epoch_end:
                    state, step_metrics = train_step(state, next(train_iter))
                    step += 1
                    pending.append((step, step_metrics))
                    if step % config.log_every_steps == 0 or step == epoch_end:
                        _flush(pending, writer, progress, steps_per_epoch - (epoch_end - step), last_good)
                    if step % config.checkpoint.every_steps == 0 and step != epoch_end:
                        _flush(pending, writer, progress, steps_per_epoch - (epoch_end - step), last_good)
                        ckpts.save("latest", step, state, meta.to_json())
                        last_good = step
                jax.block_until_ready(state.step)
                progress.close()
                train_seconds = time.perf_counter() - epoch_start

                # ---- Evaluation, best checkpoint, early stopping --------------------------------
                val_start = time.perf_counter()
                val = evaluate(eval_step, state, config, mesh, config.data.val_split)
                timing = {"train_seconds": train_seconds, "val_seconds": time.perf_counter() - val_start}
                writer.write(step, "val", val | {"epoch": epoch, "stage": name} | timing)
                if jax.process_index() == 0:
                    print(
                        f"  epoch {epoch} (step {step}): val accuracy {val['accuracy']:.4f}, "
                        f"macro-F1 {val['macro_f1']:.4f} (train {timing['train_seconds']:.0f} s, "
                        f"val {timing['val_seconds']:.0f} s)",
                        flush=True,
                    )
                if val["macro_f1"] > meta.best_val_macro_f1:
                    meta.best_val_macro_f1, meta.best_step, meta.best_val = val["macro_f1"], step, val
                    ckpts.save("best", step, state, meta.to_json())
                if val["macro_f1"] > meta.stage_best_val_macro_f1 + config.early_stopping.min_delta:
                    meta.stage_best_val_macro_f1, meta.epochs_since_stage_best = val["macro_f1"], 0
                else:
                    meta.epochs_since_stage_best += 1
                patience = config.early_stopping.patience
                stop_early = patience > 0 and meta.epochs_since_stage_best >= patience
                meta.stage_finished = stop_early or epoch_in_stage + 1 == stage.epochs
                ckpts.save("latest", step, state, meta.to_json())
                if stop_early:
                    log.info("stage %r: no macro-F1 gain for %d epochs; ending the stage early", name, patience)
                    writer.write(step, "early_stop", {"stage": name})
                    break
    finally:
        train_iter.close()

    # ---- Done ---------------------------------------------------------------------------------
    ckpts.wait()
    ckpts.close()
    writer.close()
    summary = {
        "step": step,
        "best_step": meta.best_step,
        "best_val_macro_f1": meta.best_val_macro_f1,
        "best_val": meta.best_val,
    }
    if jax.process_index() == 0:
        logs.plot_curves(workdir)
        with tf.io.gfile.GFile(done_path, "w") as f:
            json.dump(summary, f, indent=2)
    return summary
