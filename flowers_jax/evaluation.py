"""`--mode eval` and `--mode predict`: a checkpoint against a split, with reports on disk.

eval    -> <workdir>/eval/<checkpoint>/<split>/: metrics.json, per_class.{csv,md},
           confusion_matrix.png, confused_pairs.{csv,md}, reliability.png, guard.json
predict -> <workdir>/predict/<checkpoint>/<split>/: submission.csv (id,label),
           probabilities.npz (ids, probs), guard.json
"""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf
from jax.experimental import multihost_utils

from flowers_jax import data, distributed, guard, inference, reports, train
from flowers_jax.state import build_model


class EvalError(ValueError):
    """An evaluation request that cannot be served."""


def tta_views(images: jax.Array, tta: str) -> list[jax.Array]:
    """Test-time augmentation views of [B, S, S, 3]: the image, its mirror ("flip"), and
    four corner and one centre crop of 87.5% resized back to S ("crops")."""
    views = [images]
    modes = {m.strip() for m in tta.split(",") if m.strip()}
    if unknown := modes - {"flip", "crops"}:
        raise EvalError(f"config.eval.tta: unknown mode(s) {sorted(unknown)}; use flip and/or crops")
    if "crops" in modes:
        size = images.shape[1]
        c = int(round(size * 0.875))
        for y, x in ((0, 0), (0, size - c), (size - c, 0), (size - c, size - c), ((size - c) // 2, (size - c) // 2)):
            crop = images[:, y : y + c, x : x + c]
            views.append(jax.image.resize(crop, images.shape, "bilinear"))
    if "flip" in modes:
        views += [v[:, :, ::-1] for v in views]
    return views


def _checkpoint_name(which: str) -> str:
    return which if which in ("best", "latest") else f"step_{int(which)}"


def _split_name(split: str) -> str:
    return (
        split if split in ("train", "val", "test") else os.path.basename(split.rstrip("/*")).replace("*", "") or "files"
    )


def _gather(x: np.ndarray) -> np.ndarray:
    """Concatenates a host-local array over processes (identity on one host)."""
    if jax.process_count() == 1:
        return x
    return np.concatenate(list(multihost_utils.process_allgather(x)), axis=0)


def _encode_ids(ids: np.ndarray, width: int = 128) -> np.ndarray:
    out = np.zeros((len(ids), width), np.uint8)
    for i, s in enumerate(ids):
        b = s if isinstance(s, bytes) else str(s).encode()
        out[i, : len(b[:width])] = np.frombuffer(b[:width], np.uint8)
    return out


def predict_split(
    config: ml_collections.ConfigDict, variables: dict, split: str
) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """Probabilities [N, C], labels [N] (None when the split has none) and ids of one pass."""
    mesh = distributed.make_mesh()
    repl, sharded = distributed.replicated(mesh), distributed.batch_sharded(mesh)
    model = build_model(config)
    tta = config.eval.tta

    def probs_fn(variables, images):
        views = tta_views(images, tta)
        return jnp.mean(jnp.stack([jax.nn.softmax(model.apply(variables, v)) for v in views]), axis=0)

    probs_fn = jax.jit(probs_fn, in_shardings=(repl, sharded), out_shardings=sharded)
    variables = jax.device_put(variables, repl)
    probs, labels, masks, ids = [], [], [], []
    for batch in data.eval_iterator(config, split, mesh=mesh):
        p = probs_fn(variables, batch["image"])
        probs.append(np.asarray(multihost_utils.process_allgather(p, tiled=True)))
        masks.append(np.asarray(multihost_utils.process_allgather(batch["mask"], tiled=True)))
        if "label" in batch:
            labels.append(np.asarray(multihost_utils.process_allgather(batch["label"], tiled=True)))
        ids.append(_gather(_encode_ids(np.asarray(batch["id"]))))
    keep = np.concatenate(masks) > 0
    probs = np.concatenate(probs)[keep]
    ids_bytes = np.concatenate(ids)[keep]
    id_strings = [bytes(row).rstrip(b"\0").decode() for row in ids_bytes]
    return probs, (np.concatenate(labels)[keep] if labels else None), id_strings


def _load(config: ml_collections.ConfigDict, workdir: str, which: str):
    if not workdir or not tf.io.gfile.isdir(workdir):
        raise EvalError(f"workdir {workdir!r} does not exist; pass the --workdir of a training run")
    trained_config, variables, info = inference.load_for_inference(workdir, which)
    meta = {"model": trained_config.model, "num_classes": trained_config.num_classes}
    try:
        train.check_compatible(meta, config, f"{workdir} ({which})")
    except inference.checkpoint.CheckpointError as e:
        raise EvalError(str(e)) from None
    return variables, info


def _guard(config, probs, info: data.DatasetInfo, out_dir) -> guard.GuardReport:
    train_split = info.splits.get("train")
    counts = train_split.class_counts if train_split is not None else None
    prior = np.asarray(counts, np.float64) if counts is not None and np.sum(counts) > 0 else None
    report = guard.check_predictions(
        probs,
        list(info.class_names),
        prior=prior,
        max_share_ratio=config.eval.guard_max_share_ratio,
        min_histogram_entropy=config.eval.guard_min_histogram_entropy,
    )
    guard.announce(report)
    if jax.process_index() == 0:
        with tf.io.gfile.GFile(os.path.join(out_dir, "guard.json"), "w") as f:
            json.dump(report.to_dict(), f, indent=2)
    return report


def run_eval(
    config: ml_collections.ConfigDict, workdir: str, which: str = "best", split: str = "val"
) -> dict[str, Any]:
    """Evaluates checkpoint `which` on labelled `split`; writes the reports; returns the metrics."""
    variables, info = _load(config, workdir, which)
    probs, labels, _ = predict_split(config, variables, split)
    if labels is None:
        raise EvalError(f"split {split!r} has no labels, so it cannot be evaluated; use --mode predict for it")
    data_info = data.dataset_info(config)
    class_names = data_info.class_names
    out = reports.ensure_dir(os.path.join(workdir, "eval", _checkpoint_name(which), _split_name(split)))
    summary = reports.summary_metrics(labels, probs) | {
        "checkpoint_step": info["step"],
        "split": split,
        "tta": config.eval.tta,
    }
    report = _guard(config, probs, data_info, out)
    summary["prediction_collapse"] = report.collapsed
    if jax.process_index() == 0:
        with tf.io.gfile.GFile(os.path.join(out, "metrics.json"), "w") as f:
            json.dump(summary, f, indent=2)
        reports.write_table(reports.per_class_rows(labels, probs, class_names), os.path.join(out, "per_class"))
        cm = reports.skm.confusion_matrix(labels, probs.argmax(-1), labels=np.arange(config.num_classes))
        reports.plot_confusion(cm, class_names, os.path.join(out, "confusion_matrix.png"))
        reports.write_table(reports.confused_pairs(cm, class_names), os.path.join(out, "confused_pairs"))
        reports.plot_reliability(labels, probs, os.path.join(out, "reliability.png"))
        print(
            f"{split} @ {which} (step {info['step']}): accuracy {summary['accuracy']:.4f}, top-5 "
            f"{summary['top5_accuracy']:.4f}, macro-F1 {summary['macro_f1']:.4f}, weighted-F1 "
            f"{summary['weighted_f1']:.4f}, ECE {summary['ece']:.4f} ({summary['examples']} examples)\n"
            f"reports in {out}",
            flush=True,
        )
    return summary


def run_predict(config: ml_collections.ConfigDict, workdir: str, which: str = "best", split: str = "test") -> str:
    """Predicts `split` (labels not needed); writes submission.csv and probabilities.npz; returns the folder."""
    variables, info = _load(config, workdir, which)
    probs, _, ids = predict_split(config, variables, split)
    out = reports.ensure_dir(os.path.join(workdir, "predict", _checkpoint_name(which), _split_name(split)))
    _guard(config, probs, data.dataset_info(config), out)
    if len(set(ids)) != len(ids):
        raise EvalError(f"split {split!r} repeats ids; a submission needs each id once")
    if jax.process_index() == 0:
        preds = probs.argmax(-1)
        with tf.io.gfile.GFile(os.path.join(out, "submission.csv"), "w") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "label"])
            writer.writerows(zip(ids, preds.tolist(), strict=True))
        buffer = io.BytesIO()  # np.savez needs a seekable file; a gs:// GFile is not
        np.savez_compressed(buffer, ids=np.asarray(ids), probs=probs.astype(np.float32))
        with tf.io.gfile.GFile(os.path.join(out, "probabilities.npz"), "wb") as f:
            f.write(buffer.getvalue())
        print(f"predicted {len(ids)} examples of {split!r} @ {which} (step {info['step']}) -> {out}", flush=True)
    return out
