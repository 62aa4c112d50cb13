"""The two honest answers besides a species: "not sure" (selective prediction) and "not one of my
flowers" (open-set rejection), each a score per photo and a threshold chosen on validation.

    s = confidence_score("msp", logits, temperature=T)       # higher = more sure, [N]
    curve = risk_coverage(s, correct)                         # the risk-coverage curve, AURC
    tau = threshold_for_risk(s, correct, target_risk=0.02)    # answer when s >= tau

    stats = fit_embedding_stats(train_embeddings, train_labels, num_classes)
    o = openset_score("relative_mahalanobis", logits, embeddings, stats)  # higher = more like a known flower
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
#              class's mean training embedding;
#   mahalanobis          minus the smallest squared Mahalanobis distance of the embedding to a class
#                        mean, with one covariance shared by the classes (Lee et al. 2018);
#   relative_mahalanobis that minus the squared distance to one Gaussian of all training photos
#                        (Ren et al. 2021): what is far from every flower class *and* unlike flowers in
#                        general, rather than merely far from the data's centre.
# The last three need the embeddings and EmbeddingStats of the training photos.
OPENSET_SCORES = ("msp", "max_logit", "energy", "cosine", "mahalanobis", "relative_mahalanobis")
EMBEDDING_SCORES = ("cosine", "mahalanobis", "relative_mahalanobis")


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


@dataclasses.dataclass
class EmbeddingStats:
    """What the embedding scores know of the training photos' pooled embeddings (D = embedding width).

    The arrays are float32 and stored (workdir, export) in the order of ARRAYS, so that the page and
    Python compute with the same numbers.
    """

    unit_means: np.ndarray  # [C, D] unit class means of unit embeddings (cosine)
    means: np.ndarray  # [C, D] class means
    counts: np.ndarray  # [C] training photos of each class: a class with none (the Kaggle list has
    # species Oxford lacks) has no mean, and the distance scores skip it
    precision: np.ndarray  # [D, D] inverse of the shared within-class covariance (Ledoit-Wolf shrunk)
    background_mean: np.ndarray  # [D] mean of all training embeddings
    background_precision: np.ndarray  # [D, D] inverse of their (shrunk) covariance

    ARRAYS = ("unit_means", "means", "counts", "precision", "background_mean", "background_precision")

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in self.ARRAYS}


def fit_embedding_stats(embeddings: np.ndarray, labels: np.ndarray, num_classes: int) -> EmbeddingStats:
    """The class Gaussians (one shared covariance) and the background Gaussian of embeddings [N, D].

    With ~10 photos a class and D >= 1000 the sample covariance is singular; Ledoit-Wolf shrinkage
    (scikit-learn) gives a well-conditioned estimate without a tuning parameter.
    """
    from sklearn.covariance import LedoitWolf

    x = np.asarray(embeddings, np.float64)
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=num_classes)
    means = np.zeros((num_classes, x.shape[-1]))
    np.add.at(means, labels, x)
    means /= np.maximum(counts, 1)[:, None]
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    return EmbeddingStats(
        unit_means=f32(class_means(x, labels, num_classes)),
        means=f32(means),
        counts=f32(counts),
        precision=f32(LedoitWolf().fit(x - means[labels]).precision_),
        background_mean=f32(x.mean(0)),
        background_precision=f32(LedoitWolf().fit(x).precision_),
    )


def _squared_mahalanobis(x: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """(x - m)^T P (x - m) of x [N, D] to each mean [K, D] -> [N, K], expanded as
    x^T P x - 2 (P x) . m + m^T P m (P is symmetric), in float64: a D x D product per photo rather
    than one per photo and class, which is what makes it cheap enough for the page to repeat per frame."""
    p = np.asarray(precision, np.float64)
    m = np.asarray(means, np.float64)
    px = x @ p
    return (px * x).sum(-1)[:, None] - 2.0 * px @ m.T + ((m @ p) * m).sum(-1)[None]


def openset_score(
    name: str,
    logits: np.ndarray,
    embeddings: np.ndarray | None = None,
    stats: EmbeddingStats | None = None,
    *,
    temperature: float = 1.0,
) -> np.ndarray:
    """Per-photo "known flower" score [N] (see OPENSET_SCORES); the EMBEDDING_SCORES need
    embeddings [N, D] and the training photos' EmbeddingStats."""
    if name in ("msp", "max_logit"):
        return confidence_score(name, logits, temperature=temperature)
    if name == "energy":
        return temperature * special.logsumexp(np.asarray(logits, np.float64) / temperature, axis=-1)
    if name not in OPENSET_SCORES:
        raise ValueError(f"unknown open-set score {name!r}; use one of {OPENSET_SCORES}")
    if embeddings is None or stats is None:
        raise ValueError(f"the {name} open-set score needs embeddings and the training photos' EmbeddingStats")
    x = np.asarray(embeddings, np.float64)
    if name == "cosine":
        return (_unit(x) @ np.asarray(stats.unit_means, np.float64).T).max(-1)
    nearest = _squared_mahalanobis(x, stats.means[stats.counts > 0], stats.precision).min(-1)
    if name == "mahalanobis":
        return -nearest
    return _squared_mahalanobis(x, stats.background_mean[None], stats.background_precision)[:, 0] - nearest


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
