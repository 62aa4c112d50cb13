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


def bootstrap_intervals(
    labels: np.ndarray, preds: np.ndarray, *, resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> dict[str, object]:
    """Percentile-bootstrap intervals over photos (scipy.stats.bootstrap, paired resampling of
    labels [N] and predictions [N], seeded) for top-1 accuracy and macro-F1."""
    statistics = {"accuracy": lambda y, p: np.mean(y == p), "macro_f1": macro_f1}
    out: dict[str, object] = {"level": level, "resamples": resamples, "seed": seed, "method": "percentile bootstrap"}
    for name, fn in statistics.items():
        out[name] = _paired_bootstrap((np.asarray(labels), np.asarray(preds)), fn, resamples, level, seed)
    return out


def _paired_bootstrap(samples: tuple, statistic, resamples: int, level: float, seed: int) -> list[float]:
    """[low, high]: scipy.stats.bootstrap's seeded percentile interval of statistic(*samples), the
    samples resampled together (the same photos in each)."""
    from scipy import stats

    ci = stats.bootstrap(
        samples,
        statistic,
        paired=True,
        vectorized=False,
        n_resamples=resamples,
        confidence_level=level,
        method="percentile",
        rng=np.random.default_rng(seed),
    ).confidence_interval
    return [float(ci.low), float(ci.high)]


def paired_difference(
    correct_a: np.ndarray, correct_b: np.ndarray, *, resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> dict[str, object]:
    """Top-1 of model A minus model B on the same photos (correct_a, correct_b: [N] bools, photo i in
    both), with a percentile-bootstrap interval that resamples photos, not each model apart: two
    models right and wrong on mostly the same photos differ far less by chance than two independent
    intervals suggest. Also the discordant counts (photos only one of them gets right)."""
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_difference needs two [N] arrays of the same photos, got {a.shape} and {b.shape}")
    return {
        "difference": float(a.mean() - b.mean()),
        "interval": _paired_bootstrap((a, b), lambda x, y: np.mean(x) - np.mean(y), resamples, level, seed),
        "only_a_right": int(np.sum(a & ~b)),
        "only_b_right": int(np.sum(b & ~a)),
        "examples": int(a.size),
        "level": level,
        "resamples": resamples,
        "seed": seed,
        "method": "paired percentile bootstrap",
    }


def write_predictions(ids: Sequence[str], labels: np.ndarray, probs: np.ndarray, path: str) -> None:
    """predictions.csv: one row a photo (id, label, predicted, probability of the prediction), in
    `ids` order: which photos a model gets wrong, and two models compared photo by photo."""
    preds = probs.argmax(-1)
    with tf.io.gfile.GFile(path, "w") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "label", "predicted", "probability"])
        for i, y, p, q in zip(ids, labels, preds, probs.max(-1), strict=True):
            writer.writerow([i, int(y), int(p), f"{q:.6f}"])


def read_predictions(path: str) -> dict[str, bool]:
    """{id: whether predicted == label} of a predictions.csv (write_predictions)."""
    with tf.io.gfile.GFile(path) as f:
        return {r["id"]: r["label"] == r["predicted"] for r in csv.DictReader(f)}


def macro_f1(labels: np.ndarray, preds: np.ndarray) -> float:
    """scikit-learn's f1_score(average="macro", zero_division=0) (classes present in labels or
    predictions), from one bincount: the bootstrap calls it a thousand times, where
    scikit-learn's input checks cost more than the arithmetic."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    c = int(max(labels.max(), preds.max())) + 1
    cm = np.bincount(labels * c + preds, minlength=c * c).reshape(c, c)
    tp, support, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
    present = (support + predicted) > 0
    return float(np.mean(2 * tp[present] / (support + predicted)[present]))


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
