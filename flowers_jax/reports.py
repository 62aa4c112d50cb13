"""Evaluation reports: scikit-learn metrics, per-class tables, confusion matrix (calibration figures
come from flowers_jax/calibration.py).

Inputs are host arrays: probabilities [N, C] and integer labels [N].
"""

from __future__ import annotations

import csv
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from sklearn import metrics as skm

from flowers_jax import calibration
from flowers_jax.logs import save_figure


def summary_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Accuracy, top-5, macro/weighted precision, recall and F1, and the calibration figures
    (ECE, adaptive ECE, NLL, Brier, mean confidence) of probs [N, C] against labels [N].

    Macro averages run over the classes present in labels or predictions
    (scikit-learn's default), as the training loop's validation macro-F1 does.
    """
    preds = probs.argmax(-1)
    num_classes = probs.shape[-1]
    out = {
        "examples": int(len(labels)),
        "accuracy": float(skm.accuracy_score(labels, preds)),
        "top5_accuracy": top_k_accuracy(labels, probs, min(5, num_classes)),
    }
    for average in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(labels, preds, average=average, zero_division=0)
        out |= {f"{average}_precision": float(p), f"{average}_recall": float(r), f"{average}_f1": float(f)}
    return out | calibration.calibration_metrics(labels, probs)


def top_k_accuracy(labels: np.ndarray, probs: np.ndarray, k: int) -> float:
    """Share of labels [N] among the k highest of probs [N, C]. Hand-written: scikit-learn's
    top_k_accuracy_score treats a 2-column score as a binary problem and refuses it."""
    top = np.argsort(-np.asarray(probs), axis=-1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == np.asarray(labels)[:, None], axis=-1)))


def per_class_rows(labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str]) -> list[dict]:
    """One row per class: precision, recall, F1, support, predicted count."""
    num_classes = probs.shape[-1]
    preds = probs.argmax(-1)
    p, r, f, s = skm.precision_recall_fscore_support(
        labels, preds, labels=np.arange(num_classes), average=None, zero_division=0
    )
    predicted = np.bincount(preds, minlength=num_classes)
    return [
        {
            "class": i,
            "name": class_names[i],
            "precision": round(float(p[i]), 4),
            "recall": round(float(r[i]), 4),
            "f1": round(float(f[i]), 4),
            "support": int(s[i]),
            "predicted": int(predicted[i]),
        }
        for i in range(num_classes)
    ]


def write_table(rows: list[dict], path_stem: str) -> None:
    """Writes rows as <stem>.csv and <stem>.md."""
    if not rows:
        return
    keys = list(rows[0])
    with tf.io.gfile.GFile(path_stem + ".csv", "w") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    with tf.io.gfile.GFile(path_stem + ".md", "w") as f:
        f.write("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n")
        for row in rows:
            f.write("| " + " | ".join(str(row[k]) for k in keys) + " |\n")


def confused_pairs(cm: np.ndarray, class_names: Sequence[str], top: int = 20) -> list[dict]:
    """The `top` largest off-diagonal cells: true class mistaken for predicted class."""
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None)[::-1][:top]
    rows = []
    for flat in order:
        t, p = np.unravel_index(flat, off.shape)
        if off[t, p] == 0:
            break
        rows.append(
            {
                "true": class_names[t],
                "predicted": class_names[p],
                "count": int(off[t, p]),
                "share_of_true_class": round(float(off[t, p] / max(cm[t].sum(), 1)), 4),
            }
        )
    return rows


def plot_confusion(cm: np.ndarray, class_names: Sequence[str], path: str) -> None:
    """Row-normalised confusion matrix, readable at 104 classes (large canvas, small labels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(class_names)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = max(6.0, 0.2 * n + 3)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks(range(n), labels=class_names, rotation=90, fontsize=max(4, min(9, 400 // n)))
    ax.set_yticks(range(n), labels=class_names, fontsize=max(4, min(9, 400 // n)))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (rows normalised to recall)")
    fig.colorbar(im, fraction=0.03, pad=0.02)
    fig.tight_layout()
    save_figure(fig, path)


def ensure_dir(path: str) -> str:
    tf.io.gfile.makedirs(path)
    return path
