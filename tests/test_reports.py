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
