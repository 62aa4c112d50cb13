"""The two honest answers besides a species: "not sure" (selective prediction) and "not one of my
flowers" (open-set rejection), each a score per photo and a threshold chosen on validation.

    s = confidence_score("msp", logits, temperature=T)       # higher = more sure, [N]
    curve = risk_coverage(s, correct)                         # the risk-coverage curve, AURC
    tau = threshold_for_risk(s, correct, target_risk=0.02)    # answer when s >= tau

    o = openset_score("energy", logits, embeddings, class_means)   # higher = more like a known flower
    t = threshold_for_known_recall(o_val_flowers, 0.96)            # flag when o < t
    openset_report(o_known, o_unknown)                             # AUROC, FPR at 95% TPR

Every score is computed from what the exported graph outputs (logits, embeddings), so the web page
computes the same numbers (export/web/app.js mirrors these formulas).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import special
from sklearn import metrics as skm

from flowers_jax.calibration import softmax

# Confidence scores for "not sure", all from the logits [N, C]:
#   msp        max softmax(z / T): the calibrated top-1 probability the page shows;
#   margin     top-1 minus top-2 of softmax(z / T);
#   max_logit  max z (temperature-free).
CONFIDENCE_SCORES = ("msp", "margin", "max_logit")
# Open-set ("is this one of my flowers?") scores; higher = more like a known class:
#   msp, max_logit as above; energy = T * logsumexp(z / T) (Liu et al. 2020, negative free energy);
#   cosine     max over classes of the cosine similarity between the pooled embedding and that
#              class's mean training embedding (needs embeddings and class means).
OPENSET_SCORES = ("msp", "max_logit", "energy", "cosine")


def confidence_score(name: str, logits: np.ndarray, *, temperature: float = 1.0) -> np.ndarray:
    """Per-photo confidence [N] of logits [N, C] (see CONFIDENCE_SCORES)."""
    if name == "max_logit":
        return np.asarray(logits, np.float64).max(-1)
    probs = softmax(logits, temperature)
    if name == "msp":
        return probs.max(-1)
    if name == "margin":
        top2 = np.sort(probs, axis=-1)[:, -2:]
        return top2[:, 1] - top2[:, 0]
    raise ValueError(f"unknown confidence score {name!r}; use one of {CONFIDENCE_SCORES}")


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def class_means(embeddings: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Unit-length mean of the unit-length embeddings [N, D] of each class -> [C, D] (zeros for a
    class without photos, which then matches nothing)."""
    sums = np.zeros((num_classes, embeddings.shape[-1]))
    np.add.at(sums, labels, _unit(embeddings))
    return _unit(sums) * (np.bincount(labels, minlength=num_classes) > 0)[:, None]


def openset_score(
    name: str,
    logits: np.ndarray,
    embeddings: np.ndarray | None = None,
    means: np.ndarray | None = None,
    *,
    temperature: float = 1.0,
) -> np.ndarray:
    """Per-photo "known flower" score [N] (see OPENSET_SCORES); `cosine` needs embeddings [N, D]
    and class means [C, D] from `class_means`."""
    if name in ("msp", "max_logit"):
        return confidence_score(name, logits, temperature=temperature)
    if name == "energy":
        return temperature * special.logsumexp(np.asarray(logits, np.float64) / temperature, axis=-1)
    if name == "cosine":
        if embeddings is None or means is None:
            raise ValueError("the cosine open-set score needs embeddings and class means")
        return (_unit(embeddings) @ np.asarray(means, np.float64).T).max(-1)
    raise ValueError(f"unknown open-set score {name!r}; use one of {OPENSET_SCORES}")


@dataclasses.dataclass
class RiskCoverage:
    """The risk-coverage curve of a score: answering the k most confident photos, k = 1..N."""

    coverage: np.ndarray  # [N] k / N
    risk: np.ndarray  # [N] errors among the k answered / k
    thresholds: np.ndarray  # [N] the k-th highest score
    aurc: float  # area under the curve (mean risk over k); lower is better

    def at(self, threshold: float, scores: np.ndarray, correct: np.ndarray) -> dict[str, float]:
        """Coverage and risk when answering the photos whose score is >= threshold."""
        answered = np.asarray(scores) >= threshold
        n = int(answered.sum())
        return {
            "coverage": float(answered.mean()),
            "risk": float(1.0 - np.asarray(correct)[answered].mean()) if n else 0.0,
            "answered": n,
        }


def risk_coverage(scores: np.ndarray, correct: np.ndarray) -> RiskCoverage:
    """The curve of scores [N] (higher = more confident) against correct [N] bool.

    Ties are broken by order (stable sort), which only matters for scores that repeat.
    """
    scores = np.asarray(scores, np.float64)
    order = np.argsort(-scores, kind="stable")
    errors = np.cumsum(~np.asarray(correct, bool)[order])
    k = np.arange(1, len(scores) + 1)
    risk = errors / k
    return RiskCoverage(coverage=k / len(scores), risk=risk, thresholds=scores[order], aurc=float(risk.mean()))


def threshold_for_risk(scores: np.ndarray, correct: np.ndarray, target_risk: float) -> float:
    """The lowest threshold whose answered photos (score >= threshold) have at most `target_risk`
    errors, i.e. the largest coverage that meets the target; +inf when no threshold does."""
    curve = risk_coverage(scores, correct)
    s = curve.thresholds
    # Only the last photo of a run of equal scores is a threshold one can set: a threshold
    # answers all photos tied with it.
    ends = np.r_[s[:-1] > s[1:], True]
    ok = np.flatnonzero(ends & (curve.risk <= target_risk))
    return float(s[ok[-1]]) if len(ok) else float("inf")


def threshold_for_known_recall(known_scores: np.ndarray, recall: float) -> float:
    """The threshold that keeps `recall` of known photos (flags the lowest 1 - recall of them)."""
    return float(np.quantile(np.asarray(known_scores, np.float64), 1.0 - recall, method="lower"))


def openset_report(known: np.ndarray, unknown: np.ndarray, threshold: float | None = None) -> dict[str, float]:
    """AUROC of known-vs-unknown (known = positive), FPR at 95% TPR (the share of unknowns accepted
    when 95% of knowns are), and with a threshold the share of each group flagged (score < threshold)."""
    known, unknown = np.asarray(known, np.float64), np.asarray(unknown, np.float64)
    y = np.r_[np.ones(len(known)), np.zeros(len(unknown))]
    s = np.r_[known, unknown]
    fpr, tpr, _ = skm.roc_curve(y, s)
    out = {
        "auroc": float(skm.roc_auc_score(y, s)),
        "fpr_at_95_tpr": float(fpr[np.searchsorted(tpr, 0.95, side="left")]),
        "known": int(len(known)),
        "unknown": int(len(unknown)),
    }
    if threshold is not None:
        out |= {
            "known_flagged": float(np.mean(known < threshold)),
            "unknown_flagged": float(np.mean(unknown < threshold)),
        }
    return out


def plot_risk_coverage(curves: dict[str, RiskCoverage], path: str, *, target_risk: float | None = None) -> None:
    """Risk against coverage, one line per {label: curve}, with the target risk as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from flowers_jax.logs import save_figure

    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for label, c in curves.items():
        ax.plot(c.coverage, c.risk, label=f"{label} (AURC {c.aurc:.4f})")
    if target_risk is not None:
        ax.axhline(target_risk, color="r", ls="--", lw=1, label=f"target risk {target_risk:.0%}")
    ax.set(xlabel="coverage (share of photos answered)", ylabel="risk (errors among answered)", xlim=(0, 1))
    ax.set_ylim(0, max(0.05, max(float(c.risk[-1]) for c in curves.values()) * 1.2))
    ax.legend(fontsize=8)
    ax.set_title("risk-coverage: answer only when the score is above a threshold", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
