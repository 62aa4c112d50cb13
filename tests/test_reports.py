"""Report arithmetic against scikit-learn: macro-F1 and the bootstrap intervals eval writes."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from flowers_jax import reports


@pytest.mark.parametrize("seed", range(4))
def test_macro_f1_matches_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 12, 300)
    p = np.where(rng.random(300) < 0.7, y, rng.integers(0, 15, 300))  # predictions of absent classes too
    if seed == 3:
        y[y == 5] = 4  # a class that is only predicted
    assert reports.macro_f1(y, p) == pytest.approx(skm.f1_score(y, p, average="macro", zero_division=0), abs=1e-12)


def test_bootstrap_intervals_cover_the_estimate_at_the_binomial_width():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 102, 2040)
    p = np.where(rng.random(2040) < 0.92, y, (y + 1) % 102)
    ci = reports.bootstrap_intervals(y, p)
    acc = np.mean(y == p)
    lo, hi = ci["accuracy"]
    assert lo < acc < hi
    # the normal approximation of a binomial proportion: +-1.96 sqrt(p (1 - p) / n)
    assert (hi - lo) / 2 == pytest.approx(1.96 * np.sqrt(acc * (1 - acc) / len(y)), rel=0.15)
    f1 = reports.macro_f1(y, p)
    assert ci["macro_f1"][0] < f1 < ci["macro_f1"][1]
    assert reports.bootstrap_intervals(y, p) == ci  # seeded
    assert reports.bootstrap_intervals(y, p, seed=1) != ci


def test_paired_difference_is_narrower_than_two_intervals_for_models_right_on_the_same_photos():
    rng = np.random.default_rng(0)
    a = rng.random(1020) < 0.95
    b = a.copy()
    flip = rng.choice(1020, 12, replace=False)  # B differs from A on 12 photos: 9 it gets wrong, 3 right
    b[flip[:9]], b[flip[9:]] = False, True
    out = reports.paired_difference(a, b)
    assert out["difference"] == pytest.approx(a.mean() - b.mean())
    assert (out["only_a_right"], out["only_b_right"]) == (int(np.sum(a & ~b)), int(np.sum(b & ~a)))
    low, high = out["interval"]
    assert low < out["difference"] < high
    unpaired = 1.96 * np.sqrt(2 * 0.95 * 0.05 / 1020)  # half-width for two models' independent errors
    assert (high - low) / 2 < unpaired / 2  # 12 photos apart: not even half of it
    assert reports.paired_difference(a, b) == out  # seeded
    with pytest.raises(ValueError, match="same photos"):
        reports.paired_difference(a, b[:-1])


def test_predictions_csv_round_trips_which_photos_are_right(tmp_path):
    probs = np.array([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4]])
    reports.write_predictions(["a.jpg", "b,c.jpg", "d"], np.array([0, 0, 0]), probs, str(tmp_path / "p.csv"))
    assert reports.read_predictions(str(tmp_path / "p.csv")) == {"a.jpg": True, "b,c.jpg": False, "d": True}
    assert (tmp_path / "p.csv").read_text().splitlines()[:2] == ["id,label,predicted,probability", "a.jpg,0,0,0.700000"]
