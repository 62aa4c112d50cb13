"""A guard against prediction collapse.

The Keras EfficientNet write-up this project replaces predicted one class for its
whole test set and nobody noticed until the leaderboard. Here every eval and
predict run checks the distribution of its predictions and says so loudly.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

log = logging.getLogger(__name__)


@dataclasses.dataclass
class GuardReport:
    """dominant_class/share: the most predicted class and its share of predictions;
    expected_share: its share under the reference prior; histogram_entropy: entropy
    of the prediction histogram / log(C) (1 = spread evenly, 0 = one class);
    mean_predictive_entropy: mean per-example entropy of probabilities / log(C)."""

    collapsed: bool
    reasons: list[str]
    dominant_class: int
    dominant_name: str
    share: float
    expected_share: float
    histogram_entropy: float
    mean_predictive_entropy: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _normalised_entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    p = np.clip(p, 1e-12, 1.0)
    return -(p * np.log(p)).sum(axis=axis) / np.log(p.shape[axis])


def check_predictions(
    probs: np.ndarray,
    class_names: list[str],
    *,
    prior: np.ndarray | None = None,
    max_share_ratio: float = 5.0,
    min_histogram_entropy: float = 0.5,
) -> GuardReport:
    """Checks predictions [N, C] for collapse onto few classes.

    Fires when the most predicted class takes more than `max_share_ratio` times its
    expected share (from `prior`, e.g. training class frequencies; uniform if None)
    and at least a fifth of all predictions, or when the prediction histogram's
    normalised entropy falls below `min_histogram_entropy`.
    """
    num_classes = probs.shape[-1]
    preds = probs.argmax(-1)
    hist = np.bincount(preds, minlength=num_classes) / max(len(preds), 1)
    prior = np.full(num_classes, 1.0 / num_classes) if prior is None else np.asarray(prior, np.float64) / np.sum(prior)
    dominant = int(hist.argmax())
    h_entropy = float(_normalised_entropy(hist))
    reasons = []
    if hist[dominant] > max(max_share_ratio * prior[dominant], 0.2):
        reasons.append(
            f"class {dominant} ({class_names[dominant]}) takes {hist[dominant]:.1%} of predictions, "
            f"expected about {prior[dominant]:.1%}"
        )
    if h_entropy < min_histogram_entropy:
        reasons.append(f"prediction histogram entropy {h_entropy:.2f} < {min_histogram_entropy} (of 1.0)")
    return GuardReport(
        collapsed=bool(reasons),
        reasons=reasons,
        dominant_class=dominant,
        dominant_name=class_names[dominant],
        share=float(hist[dominant]),
        expected_share=float(prior[dominant]),
        histogram_entropy=h_entropy,
        mean_predictive_entropy=float(_normalised_entropy(probs).mean()),
    )


def announce(report: GuardReport) -> None:
    """Prints a banner when predictions collapsed; a one-line all-clear otherwise."""
    if report.collapsed:
        banner = "!" * 78
        lines = [banner, "PREDICTION COLLAPSE: the model predicts few classes for most inputs."]
        lines += [f"  - {r}" for r in report.reasons]
        lines += ["  Check the input preprocessing (models take RGB in [0, 255]), the checkpoint, and", banner]
        text = "\n".join(lines)
        print(text, flush=True)
        log.warning("%s", text)
    else:
        print(
            f"prediction distribution ok: most predicted class {report.dominant_name!r} at {report.share:.1%}, "
            f"histogram entropy {report.histogram_entropy:.2f}",
            flush=True,
        )
