"""Calibration of a classifier's confidence: one temperature fitted on validation logits, and the
figures that say how well the confidence means what it says.

    T = fit_temperature(val_logits, val_labels)          # minimises NLL of softmax(logits / T)
    calibration_metrics(test_labels, softmax(test_logits, T))   # ECE, adaptive ECE, NLL, Brier

Inputs are host arrays: logits [N, C] float, labels [N] int.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize, special

# log T is searched in [-4, 4] (T from 0.018 to 55): any honest network's T lies far inside; a fit
# that ends at a bound is hiding something else (constant logits, labels that do not match).
LOG_T_BOUND = 4.0
ECE_BINS = 15


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / T) over the last axis, in float64. [N, C] -> [N, C]."""
    return special.softmax(np.asarray(logits, np.float64) / temperature, axis=-1)


def nll(labels: np.ndarray, logits: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of `labels` [N] under softmax(logits [N, C] / T)."""
    z = np.asarray(logits, np.float64) / temperature
    log_p = z - special.logsumexp(z, axis=-1, keepdims=True)
    return float(-np.mean(log_p[np.arange(len(labels)), labels]))


def nll_of_probs(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-likelihood of `labels` [N] under probabilities [N, C] (floored at 1e-12)."""
    p = np.asarray(probs, np.float64)[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.maximum(p, 1e-12))))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 that minimises the NLL of softmax(logits / T) on (logits [N, C], labels [N]).

    A bounded 1-D search over log T (Brent's method): the NLL is convex in 1/T, so the
    minimum is unique and a scalar search finds it to ~1e-6 in a few dozen evaluations.
    """
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels, np.int64)
    result = optimize.minimize_scalar(
        lambda log_t: nll(labels, logits, float(np.exp(log_t))),
        bounds=(-LOG_T_BOUND, LOG_T_BOUND),
        method="bounded",
        options={"xatol": 1e-7},
    )
    return float(np.exp(result.x))


def ece(labels: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS, *, adaptive: bool = False):
    """Expected calibration error of the top-1 confidence; also (bin confidence, bin accuracy, count).

    Equal-width bins over [0, 1], or with `adaptive` equal-mass bins (each holds ~N/bins photos:
    the adaptive ECE of Nixon et al. 2019, which empty high-confidence bins cannot flatter).
    Hand-written: scikit-learn's calibration_curve is for binary problems only.
    """
    confidence = np.asarray(probs).max(-1)
    correct = (np.asarray(probs).argmax(-1) == labels).astype(np.float64)
    if adaptive:
        order = np.argsort(confidence, kind="stable")
        which = np.empty(len(order), np.int64)
        which[order] = np.arange(len(order)) * bins // max(len(order), 1)
    else:
        edges = np.linspace(0.0, 1.0, bins + 1)
        which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    conf = np.bincount(which, weights=confidence, minlength=bins) / np.maximum(count, 1)
    acc = np.bincount(which, weights=correct, minlength=bins) / np.maximum(count, 1)
    error = float(np.sum(np.abs(acc - conf) * count) / max(len(labels), 1))
    return error, conf, acc, count


def brier(labels: np.ndarray, probs: np.ndarray) -> float:
    """Multi-class Brier score: mean over photos of sum_c (p_c - [c == label])^2 (0 is perfect, 2 worst)."""
    onehot = np.eye(probs.shape[-1])[labels]
    return float(np.mean(np.sum((np.asarray(probs, np.float64) - onehot) ** 2, axis=-1)))


def calibration_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """ECE (15 equal-width bins), adaptive ECE (15 equal-mass bins), NLL, Brier and mean top-1
    confidence of probabilities [N, C] against labels [N]."""
    return {
        "ece": ece(labels, probs)[0],
        "adaptive_ece": ece(labels, probs, adaptive=True)[0],
        "nll": nll_of_probs(labels, probs),
        "brier": brier(labels, probs),
        "mean_confidence": float(np.asarray(probs).max(-1).mean()),
    }


def plot_reliability(labels: np.ndarray, panels: dict[str, np.ndarray], path: str, bins: int = ECE_BINS) -> None:
    """Reliability diagrams side by side, one per {title: probs [N, C]} (e.g. before / after T)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from flowers_jax.logs import save_figure

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.4), squeeze=False)
    centers = (np.arange(bins) + 0.5) / bins
    for ax, (title, probs) in zip(axes[0], panels.items(), strict=True):
        error, conf, acc, count = ece(labels, probs, bins)
        filled = count > 0
        ax.bar(centers[filled], acc[filled], width=1 / bins, edgecolor="k", alpha=0.7, label="accuracy")
        ax.plot(conf[filled], acc[filled], "o", ms=3, color="k", label="(mean confidence, accuracy)")
        ax.plot([0, 1], [0, 1], "r--", label="perfect calibration")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top-1 probability)", ylabel="accuracy")
        ax.set_title(f"{title}\nECE {error:.3f}, mean confidence {probs.max(-1).mean():.2f}", fontsize=10)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    save_figure(fig, path)
