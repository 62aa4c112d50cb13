"""`--mode eval` and `--mode predict`: a checkpoint against a split, with reports on disk.

eval      -> <workdir>/eval/<checkpoint>/<split>/: metrics.json, predictions.csv, per_class.{csv,md},
             confusion_matrix.png, confused_pairs.{csv,md}, reliability.png, risk_coverage.png, guard.json
predict   -> <workdir>/predict/<checkpoint>/<split>/: submission.csv (id,label),
             probabilities.npz (ids, probs[, decision]), guard.json
calibrate -> <workdir>/calibration.json (+ calibration_embeddings.npz, calibration_reliability.png):
             temperature, "not sure" and "not one of my flowers" thresholds (flowers_jax/trust.py)

eval and predict use calibration.json when it belongs to the checkpoint and image size evaluated
(config.eval.calibration="off" ignores it), and refuse one that belongs to another.

The image size: config.data.image_size, or with `test_size=True` (the command line, when
--config.data.image_size is not given) the size chosen_size.resolve gives the checkpoint: the one val
chose (W/test_size.json, written by `choose_test_size`), else calibration.json's, else the training
size. The folder and metrics.json name the size; the run prints where it came from.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf
from jax.experimental import multihost_utils

from flowers_jax import (
    abstain,
    calibration,
    checkpoint,
    chosen_size,
    data,
    distributed,
    guard,
    inference,
    reports,
    trust,
)
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
    """The output folder of a split: its name, or for a path/glob a readable name made from the path
    plus a hash of it (two different globs never share a folder)."""
    if split in ("train", "val", "test"):
        return split
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", split.strip("/")).strip("_")[-48:] or "files"
    return f"{readable}-{hashlib.sha256(split.encode()).hexdigest()[:8]}"


def split_dir_name(split: str, config: ml_collections.ConfigDict, trained_image_size: int) -> str:
    """<split>[@<size>px]: the size is named when it is not the one the run trained at, so that
    evaluations of one checkpoint at several sizes do not overwrite each other."""
    name = _split_name(split)
    return name if config.data.image_size == trained_image_size else f"{name}@{config.data.image_size}px"


def _out_dir(workdir: str, kind: str, which: str, split: str, config, info: dict) -> str:
    """<workdir>/<kind>/<checkpoint>/<split>[@<size>px]/ (see split_dir_name)."""
    name = split_dir_name(split, config, info["trained_image_size"])
    return reports.ensure_dir(os.path.join(workdir, kind, _checkpoint_name(which), name))


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


@dataclasses.dataclass
class SplitOutputs:
    """One pass of a model over a split, on the host."""

    logits: np.ndarray  # [V, N, C]: one row per test-time view (V = 1 without TTA)
    labels: np.ndarray | None  # [N], None for an unlabelled split
    ids: list[str]  # [N]
    embeddings: np.ndarray  # [N, D] pooled embeddings of the plain view

    def probs(self, temperature: float = 1.0) -> np.ndarray:
        """[N, C]: the mean over views of softmax(logits / T)."""
        return calibration.softmax(self.logits, temperature).mean(0)


def sharded_forward(config: ml_collections.ConfigDict, variables: dict, mesh: jax.sharding.Mesh):
    """(forward, variables replicated on `mesh`): the jitted eval forward of `config`'s model, a batch
    of images [B, S, S, 3] sharded over `mesh` -> (logits [B, V, C] of the V views of config.eval.tta,
    the plain view's embeddings [B, D]), both sharded like the batch."""
    repl, sharded = distributed.replicated(mesh), distributed.batch_sharded(mesh)
    model = build_model(config)
    tta = config.eval.tta

    def forward(variables, images):
        views = tta_views(images, tta)
        logits, embedding = model.apply(variables, views[0], with_embedding=True)
        return jnp.stack([logits] + [model.apply(variables, v) for v in views[1:]], axis=1), embedding

    forward = jax.jit(forward, in_shardings=(repl, sharded), out_shardings=sharded)
    return forward, jax.device_put(variables, repl)


def predict_split(config: ml_collections.ConfigDict, variables: dict, split: str) -> SplitOutputs:
    """Logits of every view, labels, ids and embeddings of one pass over `split`."""
    mesh = distributed.make_mesh()
    forward, variables = sharded_forward(config, variables, mesh)
    logits, embeddings, labels, masks, ids = [], [], [], [], []
    for batch in data.eval_iterator(config, split, mesh=mesh):
        z, e = forward(variables, batch["image"])
        logits.append(np.asarray(multihost_utils.process_allgather(z, tiled=True)))
        embeddings.append(np.asarray(multihost_utils.process_allgather(e, tiled=True)))
        masks.append(np.asarray(multihost_utils.process_allgather(batch["mask"], tiled=True)))
        if "label" in batch:
            labels.append(np.asarray(multihost_utils.process_allgather(batch["label"], tiled=True)))
        ids.append(_gather(_encode_ids(np.asarray(batch["id"]))))
    keep = np.concatenate(masks) > 0
    ids_bytes = np.concatenate(ids)[keep]
    return SplitOutputs(
        logits=np.moveaxis(np.concatenate(logits)[keep], 1, 0),
        labels=np.concatenate(labels)[keep] if labels else None,
        ids=[bytes(row).rstrip(b"\0").decode() for row in ids_bytes],
        embeddings=np.concatenate(embeddings)[keep],
    )


def _load(config: ml_collections.ConfigDict, workdir: str, which: str):
    if not workdir or not tf.io.gfile.isdir(workdir):
        raise EvalError(f"workdir {workdir!r} does not exist; pass the --workdir of a training run")
    trained_config, variables, info = inference.load_for_inference(workdir, which)
    meta = {"model": trained_config.model, "num_classes": trained_config.num_classes}
    try:
        checkpoint.check_compatible(meta, config, f"{workdir} ({which})")
    except inference.checkpoint.CheckpointError as e:
        raise EvalError(str(e)) from None
    return variables, info | {"trained_image_size": trained_config.data.image_size}


def at_test_size(
    config: ml_collections.ConfigDict, workdir: str, info: dict, *, test_size: bool = True
) -> tuple[ml_collections.ConfigDict, str]:
    """(`config` at the image size to evaluate checkpoint `info` at, where that size came from): with
    `test_size`, chosen_size.resolve's (module docstring), else config.data.image_size; the run's
    records stay the ones it trained on. Prints the size and its source."""
    try:
        size, why = chosen_size.resolve(
            workdir,
            step=info["step"],
            trained_size=info["trained_image_size"],
            explicit=None if test_size else config.data.image_size,
        )
    except chosen_size.ChosenSizeError as e:
        raise EvalError(f"{e} (--config.data.image_size=S)") from None
    config = chosen_size.at_size(config, size, stored=config.data.tfrecord_size or info["trained_image_size"])
    if jax.process_index() == 0:
        print(f"image size {size}px ({why})", flush=True)
    return config, why


def _guard(config, probs, info: data.DatasetInfo | None, out_dir, class_names=None) -> guard.GuardReport:
    """The prediction-collapse check (against the training prior when `info` has one); guard.json."""
    train_split = info.splits.get("train") if info is not None else None
    counts = train_split.class_counts if train_split is not None else None
    prior = np.asarray(counts, np.float64) if counts is not None and np.sum(counts) > 0 else None
    report = guard.check_predictions(
        probs,
        list(class_names if class_names is not None else info.class_names),
        prior=prior,
        max_share_ratio=config.eval.guard_max_share_ratio,
        min_histogram_entropy=config.eval.guard_min_histogram_entropy,
    )
    guard.announce(report)
    if jax.process_index() == 0:
        with tf.io.gfile.GFile(os.path.join(out_dir, "guard.json"), "w") as f:
            json.dump(report.to_dict(), f, indent=2)
    return report


def _calibration(config: ml_collections.ConfigDict, workdir: str, info: dict) -> trust.Calibration | None:
    """The workdir's calibration for this checkpoint and size (None without one), announced."""
    try:
        cal = trust.load_matching(
            workdir, step=info["step"], image_size=config.data.image_size, mode=config.eval.calibration
        )
    except trust.CalibrationError as e:
        raise EvalError(str(e)) from None
    if jax.process_index() == 0:
        if cal is None:
            print("confidence not calibrated (no calibration.json; --mode calibrate fits one)", flush=True)
        else:
            print(f"using {trust.CALIBRATION_FILE}: temperature {cal.temperature:.4f} (fitted on {cal.split})")
    return cal


def run_eval(
    config: ml_collections.ConfigDict, workdir: str, which: str = "best", split: str = "val", *, test_size: bool = False
) -> dict[str, Any]:
    """Evaluates checkpoint `which` on labelled `split` (`test_size`: module docstring); writes the
    reports; returns the metrics."""
    variables, info = _load(config, workdir, which)
    config, size_from = at_test_size(config, workdir, info, test_size=test_size)
    cal = _calibration(config, workdir, info)
    outputs = predict_split(config, variables, split)
    if outputs.labels is None:
        raise EvalError(f"split {split!r} has no labels, so it cannot be evaluated; use --mode predict for it")
    out = _out_dir(workdir, "eval", which, split, config, info)
    source = {"source": TFRECORDS, "image_size_from": size_from}
    return write_eval(config, outputs, cal, out, which=which, split=split, step=info["step"], source=source)


TFRECORDS = "tfrecords"  # metrics.json "source" of an eval of the TFRecord splits (flowers_jax/page_eval.py: "page")


def write_eval(
    config: ml_collections.ConfigDict,
    outputs: SplitOutputs,
    cal: trust.Calibration | None,
    out: str,
    *,
    which: str,
    split: str,
    step: int,
    source: dict[str, Any],
    data_info: data.DatasetInfo | None = None,
    class_names: list[str] | None = None,
    title: str | None = None,
) -> dict[str, Any]:
    """Writes eval's reports of labelled `outputs` into `out` and prints the summary (headed `title`,
    default the split); returns the metrics.

    `source` (where the photos came from, at least {"source": ...}) goes into metrics.json; the class
    names and training prior come from `data_info` (default: the config's dataset), or `class_names`.
    """
    labels = outputs.labels
    probs = outputs.probs(cal.temperature if cal else 1.0)
    if data_info is None and class_names is None:
        data_info = data.dataset_info(config)
    class_names = list(class_names if class_names is not None else data_info.class_names)
    trusted, curves = trust.evaluate(cal, labels, outputs.logits[0], outputs.embeddings)
    summary = reports.summary_metrics(labels, probs) | {
        "checkpoint_step": step,
        "split": split,
        "image_size": config.data.image_size,
        "tta": config.eval.tta,
        **source,
        "intervals": reports.bootstrap_intervals(labels, probs.argmax(-1)),
        **trusted,
    }
    report = _guard(config, probs, data_info, out, class_names)
    summary["prediction_collapse"] = report.collapsed
    if jax.process_index() == 0:
        with tf.io.gfile.GFile(os.path.join(out, "metrics.json"), "w") as f:
            json.dump(summary, f, indent=2)
        reports.write_table(reports.per_class_rows(labels, probs, class_names), os.path.join(out, "per_class"))
        reports.write_predictions(outputs.ids, labels, probs, os.path.join(out, "predictions.csv"))
        cm = reports.skm.confusion_matrix(labels, probs.argmax(-1), labels=np.arange(config.num_classes))
        reports.plot_confusion(cm, class_names, os.path.join(out, "confusion_matrix.png"))
        reports.write_table(reports.confused_pairs(cm, class_names), os.path.join(out, "confused_pairs"))
        panels = {"uncalibrated (T = 1)": outputs.probs()}
        if cal is not None:
            panels[f"calibrated (T = {cal.temperature:.3f})"] = probs
        calibration.plot_reliability(labels, panels, os.path.join(out, "reliability.png"))
        target = cal.selective["target_risk"] if cal else None
        abstain.plot_risk_coverage(curves, os.path.join(out, "risk_coverage.png"), target_risk=target)
        print(_eval_line(title or split, which, step, summary) + f"\nreports in {out}", flush=True)
    return summary


def _eval_line(split: str, which: str, step: int, s: dict) -> str:
    line = (
        f"{split} @ {which} (step {step}): accuracy {s['accuracy']:.4f}, top-5 {s['top5_accuracy']:.4f}, "
        f"macro-F1 {s['macro_f1']:.4f}, weighted-F1 {s['weighted_f1']:.4f}, ECE {s['ece']:.4f}, "
        f"NLL {s['nll']:.4f} ({s['examples']} examples)"
    )
    if "intervals" in s:
        ci = s["intervals"]
        line += (
            f"\n{ci['level']:.0%} intervals ({ci['method']}, {ci['resamples']} resamples of the photos): accuracy "
            f"[{ci['accuracy'][0]:.4f}, {ci['accuracy'][1]:.4f}], macro-F1 [{ci['macro_f1'][0]:.4f}, "
            f"{ci['macro_f1'][1]:.4f}]"
        )
    if "selective" in s:
        sel = s["selective"]
        line += (
            f"\nnot sure below {sel['score']} {sel['threshold']:.4f}: answers {sel['coverage']:.1%} of photos with "
            f"{sel['risk']:.2%} errors (target {sel['target_risk']:.0%}); AURC {sel['aurc']:.4f}; "
            f"flagged 'not one of my flowers': {s['openset']['flagged_not_a_known_flower']:.1%}"
        )
    return line


def run_calibrate(
    config: ml_collections.ConfigDict, workdir: str, which: str = "best", split: str = "val", *, test_size: bool = False
) -> trust.Calibration:
    """Fits calibration.json for checkpoint `which` at config.data.image_size (`test_size`: module
    docstring) on labelled `split`.

    Without test-time augmentation (the exported model and the page have none). The class means of
    the embedding statistics (open-set scores, and the page's "add a species") come from the training
    split's embeddings, read as evaluation reads them. Writes nothing on error.
    """
    config = config.copy_and_resolve_references()
    config.eval.tta = ""
    config.eval.calibration = "off"
    variables, info = _load(config, workdir, which)
    config, _ = at_test_size(config, workdir, info, test_size=test_size)
    outputs = predict_split(config, variables, split)
    try:
        trust.check_fittable(outputs.labels, split)
    except trust.CalibrationError as e:
        raise EvalError(str(e)) from None
    train = predict_split(config, variables, config.data.train_split)
    stats = abstain.fit_embedding_stats(train.embeddings, train.labels, config.num_classes)
    cal = trust.fit(
        outputs.logits[0],
        outputs.labels,
        outputs.embeddings,
        stats,
        trust=config.trust,
        checkpoint={"which": which, "step": info["step"]},
        image_size=config.data.image_size,
        split=split,
    )
    if jax.process_index() == 0:
        path = trust.save(workdir, cal)
        before, after = cal.val["before"], cal.val["after"]
        sel = cal.selective
        calibration.plot_reliability(
            outputs.labels,
            {"before (T = 1)": outputs.probs(), f"after (T = {cal.temperature:.3f})": outputs.probs(cal.temperature)},
            os.path.join(workdir, "calibration_reliability.png"),
        )
        print(
            f"calibrated step {info['step']} at {config.data.image_size}px on {split} ({cal.val['examples']} photos): "
            f"T = {cal.temperature:.4f}; ECE {before['ece']:.4f} -> {after['ece']:.4f}, NLL {before['nll']:.4f} -> "
            f"{after['nll']:.4f}, Brier {before['brier']:.4f} -> {after['brier']:.4f}\n"
            f"not sure: {sel['score']} < {sel['threshold']:.4f} (answers {sel['val']['coverage']:.1%} at "
            f"{sel['val']['risk']:.2%} errors; target {sel['target_risk']:.0%})\n"
            f"not one of my flowers: {cal.openset['score']} < {cal.openset['threshold']:.4f} "
            f"(keeps {cal.openset['known_recall']:.0%} of {split})\nwrote {path}",
            flush=True,
        )
    return cal


def run_predict(
    config: ml_collections.ConfigDict,
    workdir: str,
    which: str = "best",
    split: str = "test",
    *,
    test_size: bool = False,
) -> str:
    """Predicts `split` (labels not needed; `test_size`: module docstring); writes submission.csv and
    probabilities.npz; returns the folder.

    With a calibration, the probabilities are calibrated and the npz also holds each photo's
    decision ("answer", "not_sure", "unknown").
    """
    variables, info = _load(config, workdir, which)
    config, _ = at_test_size(config, workdir, info, test_size=test_size)
    cal = _calibration(config, workdir, info)
    outputs = predict_split(config, variables, split)
    probs, ids = outputs.probs(cal.temperature if cal else 1.0), outputs.ids
    out = _out_dir(workdir, "predict", which, split, config, info)
    _guard(config, probs, data.dataset_info(config), out)
    if len(set(ids)) != len(ids):
        raise EvalError(f"split {split!r} repeats ids; a submission needs each id once")
    if jax.process_index() == 0:
        preds = probs.argmax(-1)
        with tf.io.gfile.GFile(os.path.join(out, "submission.csv"), "w") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "label"])
            writer.writerows(zip(ids, preds.tolist(), strict=True))
        extra = {"decision": cal.decide(outputs.logits[0], outputs.embeddings).astype(str)} if cal else {}
        buffer = io.BytesIO()  # np.savez needs a seekable file; a gs:// GFile is not
        np.savez_compressed(buffer, ids=np.asarray(ids), probs=probs.astype(np.float32), **extra)
        with tf.io.gfile.GFile(os.path.join(out, "probabilities.npz"), "wb") as f:
            f.write(buffer.getvalue())
        print(f"predicted {len(ids)} examples of {split!r} @ {which} (step {info['step']}) -> {out}", flush=True)
    return out


def choose_test_size(
    config: ml_collections.ConfigDict, workdir: str, which: str = "best", *, sizes: list[int], split: str = "val"
) -> tuple[int, dict[int, float]]:
    """Val accuracy of checkpoint `which` at each of `sizes` (the run's records, resized; uncalibrated:
    accuracy does not depend on the temperature), records the best (ties: the smaller) in
    W/test_size.json (chosen_size.record); returns (that size, {size: accuracy})."""
    by_size, step = {}, None
    for size in sizes:
        c = chosen_size.at_size(config, size)
        c.eval.calibration = "off"
        c.eval.tta = ""
        summary = run_eval(c, workdir, which, split)
        by_size[size], step = summary["accuracy"], summary["checkpoint_step"]
    best = max(sizes, key=lambda s: (by_size[s], -s))
    chosen_size.record(workdir, image_size=best, step=step, which=which, split=split, candidates=by_size)
    return best, by_size
