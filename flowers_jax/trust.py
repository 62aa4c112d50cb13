"""`W/calibration.json`: the temperature, the "not sure" threshold and the "not one of my flowers"
threshold of one checkpoint at one image size, fitted on validation photos.

    cal = fit(val_logits, val_labels, val_embeddings, means, config=..., checkpoint=..., image_size=S)
    save(workdir, cal)
    cal = load_matching(workdir, step=..., image_size=S, mode="auto")   # None, or refuses a mismatch
    cal.decide(logits, embeddings)   # per photo: "answer", "not_sure" or "unknown"

Everything a consumer needs to repeat the page's decision is in the file (and in an export's
metadata.json): the score names (formulas in flowers_jax/abstain.py) and their thresholds.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from typing import Any

import ml_collections
import numpy as np
import tensorflow as tf

from flowers_jax import abstain, calibration

CALIBRATION_FILE = "calibration.json"
STATS_FILE = "calibration_embeddings.npz"  # abstain.EmbeddingStats of the training photos
MIN_PHOTOS = 100  # fewer cannot place a 2% risk threshold (two errors would be 2% of them)


class CalibrationError(ValueError):
    """A calibration that cannot be fitted, or one that belongs to another checkpoint or size."""


@dataclasses.dataclass
class Calibration:
    """What calibration.json holds (the embedding statistics live beside it, in STATS_FILE)."""

    temperature: float
    image_size: int
    checkpoint: dict[str, Any]  # {"which", "step"}
    split: str
    val: dict[str, Any]  # {"before": calibration_metrics, "after": ...}
    selective: dict[str, Any]  # {"score", "threshold", "target_risk", "val": {...}, "candidates": {...}}
    openset: dict[str, Any]  # {"score", "threshold", "known_recall", "val": {...}}
    add_species: dict[str, Any] | None = None  # {"margin", "scale"} of flowers_jax/personalise.py
    stats: abstain.EmbeddingStats | None = None

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("stats")
        return d

    def for_export(self) -> dict[str, Any]:
        """The `trust` block of an export's metadata.json: what the page needs to decide as `decide` does."""
        return {
            "calibrated": True,
            "temperature": self.temperature,
            "image_size": self.image_size,
            "checkpoint": self.checkpoint,
            "fitted_on": self.split,
            "val_before": self.val["before"],
            "val_after": self.val["after"],
            "not_sure": {k: self.selective[k] for k in ("score", "threshold", "target_risk")}
            | {"val_coverage": self.selective["val"]["coverage"], "val_risk": self.selective["val"]["risk"]},
            "not_a_known_flower": {k: self.openset[k] for k in ("score", "threshold", "known_recall")},
            "scores": "flowers_jax/abstain.py (" + ", ".join(abstain.OPENSET_SCORES) + "); the page mirrors them",
        } | (
            {"add_species": dict(self.add_species, method="flowers_jax/personalise.py")}
            if self.add_species and self.stats is not None
            else {}
        )

    def decide(self, logits: np.ndarray, embeddings: np.ndarray | None = None) -> np.ndarray:
        """ "unknown" / "not_sure" / "answer" per photo, from logits [N, C] (and embeddings [N, D])."""
        known = abstain.openset_score(
            self.openset["score"], logits, embeddings, self.stats, temperature=self.temperature
        )
        sure = abstain.confidence_score(self.selective["score"], logits, temperature=self.temperature)
        out = np.where(sure >= self.selective["threshold"], "answer", "not_sure").astype(object)
        out[known < self.openset["threshold"]] = "unknown"
        return out


def check_fittable(labels: np.ndarray | None, split: str) -> None:
    """Refuses a split that cannot calibrate: no labels, or fewer than MIN_PHOTOS photos."""
    if labels is None:
        raise CalibrationError(f"split {split!r} has no labels, so no temperature can be fitted on it; use val")
    if len(labels) < MIN_PHOTOS:
        raise CalibrationError(
            f"split {split!r} has {len(labels)} photos; calibration needs at least {MIN_PHOTOS} labelled photos "
            "(a 2% risk threshold cannot be placed on fewer). Use a larger validation split."
        )


def fit(
    logits: np.ndarray,
    labels: np.ndarray,
    embeddings: np.ndarray | None,
    stats: abstain.EmbeddingStats | None,
    *,
    trust: ml_collections.ConfigDict,
    checkpoint: dict[str, Any],
    image_size: int,
    split: str = "val",
) -> Calibration:
    """Fits T, then the "not sure" and open-set thresholds, on one labelled split.

    Args:
      logits: [N, C] of the split at `image_size`, no test-time augmentation (the page has none).
      labels: [N].
      embeddings, stats: [N, D] pooled embeddings and the training photos' abstain.EmbeddingStats
        (for the embedding open-set scores; None when the score needs none).
      trust: config.trust (target_risk, selective_score, openset_score, known_recall).
    """
    check_fittable(labels, split)
    t = calibration.fit_temperature(logits, labels)
    correct = logits.argmax(-1) == labels
    names = abstain.CONFIDENCE_SCORES if trust.selective_score == "auto" else (trust.selective_score,)
    candidates = {}
    for name in names:
        s = abstain.confidence_score(name, logits, temperature=t)
        curve = abstain.risk_coverage(s, correct)
        tau = abstain.threshold_for_risk(s, correct, trust.target_risk)
        candidates[name] = {"aurc": curve.aurc, "threshold": tau, **curve.at(tau, s, correct)}
    best = min(candidates, key=lambda n: candidates[n]["aurc"])
    known = abstain.openset_score(trust.openset_score, logits, embeddings, stats, temperature=t)
    known_t = abstain.threshold_for_known_recall(known, trust.known_recall)
    return Calibration(
        temperature=t,
        image_size=int(image_size),
        checkpoint=dict(checkpoint),
        split=split,
        val={
            "before": calibration.calibration_metrics(labels, calibration.softmax(logits)),
            "after": calibration.calibration_metrics(labels, calibration.softmax(logits, t)),
            "examples": int(len(labels)),
        },
        selective={
            "score": best,
            "threshold": candidates[best]["threshold"],
            "target_risk": float(trust.target_risk),
            "val": candidates[best],
            "candidates": candidates,
            "chosen_by": "lowest AURC on " + split,
        },
        openset={
            "score": trust.openset_score,
            "threshold": known_t,
            "known_recall": float(trust.known_recall),
            "val_known_flagged": float(np.mean(known < known_t)),
        },
        add_species={k: float(v) for k, v in trust.add_species.items()} if "add_species" in trust else None,
        stats=stats,
    )


def save(workdir: str, cal: Calibration) -> str:
    path = os.path.join(workdir, CALIBRATION_FILE)
    if cal.stats is not None:
        buffer = io.BytesIO()  # np.savez seeks back into its zip file, which a GFile (gs://) cannot
        np.savez(buffer, **cal.stats.arrays())
        with tf.io.gfile.GFile(os.path.join(workdir, STATS_FILE), "wb") as f:
            f.write(buffer.getvalue())
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(cal.to_json(), f, indent=2)
    return path


def load(workdir: str) -> Calibration | None:
    """The workdir's calibration, or None when it has none."""
    path = os.path.join(workdir, CALIBRATION_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        d = json.load(f)
    stats_path = os.path.join(workdir, STATS_FILE)
    stats = None
    if tf.io.gfile.exists(stats_path):
        with tf.io.gfile.GFile(stats_path, "rb") as f, np.load(io.BytesIO(f.read())) as z:
            if missing := sorted(set(abstain.EmbeddingStats.ARRAYS) - set(z.files)):
                raise CalibrationError(
                    f"{stats_path} lacks {missing} (written by an older flowers_jax); run `--mode calibrate` again"
                )
            stats = abstain.EmbeddingStats(**{k: z[k] for k in abstain.EmbeddingStats.ARRAYS})
    elif d["openset"]["score"] in abstain.EMBEDDING_SCORES:
        raise CalibrationError(
            f"{path} uses the {d['openset']['score']} score but {stats_path} is missing; run `--mode calibrate` again"
        )
    return Calibration(**d, stats=stats)


def load_matching(workdir: str, *, step: int, image_size: int, mode: str = "auto") -> Calibration | None:
    """The calibration to use for checkpoint `step` at `image_size`: None when `mode` is "off" or the
    workdir has none; CalibrationError when it belongs to another step or size (with what to run)."""
    if mode == "off":
        return None
    cal = load(workdir)
    if cal is None:
        return None
    if cal.checkpoint["step"] != step or cal.image_size != image_size:
        raise CalibrationError(
            f"{os.path.join(workdir, CALIBRATION_FILE)} was fitted for step {cal.checkpoint['step']} at "
            f"{cal.image_size}px, not step {step} at {image_size}px. Run `--mode calibrate` with this checkpoint "
            f"and --config.data.image_size={image_size}, or pass --config.eval.calibration=off to use the "
            "uncalibrated model."
        )
    return cal


def evaluate(
    cal: Calibration | None, labels: np.ndarray, logits: np.ndarray, embeddings: np.ndarray
) -> tuple[dict[str, Any], dict[str, abstain.RiskCoverage]]:
    """The trust figures of one labelled split: calibration before/after, and with a calibration the
    coverage and risk at its "not sure" threshold, AURC, and the share flagged "not one of mine".

    Returns (figures for metrics.json, {label: risk-coverage curve} for the plot).
    """
    t = cal.temperature if cal else 1.0
    correct = logits.argmax(-1) == labels
    out: dict[str, Any] = {"uncalibrated": calibration.calibration_metrics(labels, calibration.softmax(logits))}
    curves = {"max probability, T = 1": abstain.risk_coverage(calibration.softmax(logits).max(-1), correct)}
    if cal is None:
        out["calibration"] = "none: confidence not calibrated (run --mode calibrate)"
        return out, curves
    out["calibration"] = {"temperature": t, "fitted_on": cal.split, "checkpoint": cal.checkpoint}
    out["calibrated"] = calibration.calibration_metrics(labels, calibration.softmax(logits, t))
    s = abstain.confidence_score(cal.selective["score"], logits, temperature=t)
    curve = abstain.risk_coverage(s, correct)
    curves[f"{cal.selective['score']}, T = {t:.3f}"] = curve
    out["selective"] = {
        "score": cal.selective["score"],
        "threshold": cal.selective["threshold"],
        "target_risk": cal.selective["target_risk"],
        "aurc": curve.aurc,
        **curve.at(cal.selective["threshold"], s, correct),
    }
    # What this split's own curve allows (a report figure, never a threshold to use): the largest
    # coverage at which its answered photos have at most the target risk.
    best = abstain.threshold_for_risk(s, correct, cal.selective["target_risk"])
    out["selective"]["coverage_at_target_risk_on_this_split"] = curve.at(best, s, correct)["coverage"]
    decisions = cal.decide(logits, embeddings)
    out["openset"] = {
        "score": cal.openset["score"],
        "threshold": cal.openset["threshold"],
        "flagged_not_a_known_flower": float(np.mean(decisions == "unknown")),
    }
    out["decisions"] = {d: int(np.sum(decisions == d)) for d in ("answer", "not_sure", "unknown")}
    return out, curves
