"""Adding a species from a few photos (flowers_jax/personalise.py): the page's arithmetic by hand."""

from __future__ import annotations

import numpy as np
import pytest

from flowers_jax import abstain, personalise


def _gaussians(seed=0, c=4, d=6, n=15):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(c + 1, d)) * 8  # the last one is the species to add
    labels = np.repeat(np.arange(c + 1), n)
    x = centres[labels] + rng.normal(size=(len(labels), d))
    return x, labels, c


def test_added_logits_by_hand():
    x, labels, c = _gaussians()
    stats = abstain.fit_embedding_stats(x[labels < c], labels[labels < c], c)
    logits = np.random.default_rng(1).normal(size=(len(x), c))
    mean = personalise.added_mean(x[labels == c][:10])
    np.testing.assert_allclose(mean, x[labels == c][:10].mean(0), rtol=1e-6)
    z = personalise.added_logits(logits, x, stats, mean[None], scale=0.5, margin=2.0)
    assert z.shape == (len(x), c + 1)
    np.testing.assert_array_equal(z[:, :c], logits)  # the trained classes' logits are untouched
    p = stats.precision.astype(np.float64)

    def g(m, e):
        m = np.asarray(m, np.float64)
        return m @ p @ e - 0.5 * m @ p @ m

    for i in (0, 20, len(x) - 1):
        best_trained = max(g(m, x[i]) for m in stats.means)
        expected = logits[i].max() + 0.5 * (g(mean, x[i]) - best_trained - 2.0)
        assert z[i, c] == pytest.approx(expected, rel=1e-9)
    # The added species wins exactly where its discriminant beats the best trained one by the margin.
    gaps = personalise.discriminants(x, mean[None], stats.precision)[:, 0] - personalise.discriminants(
        x, stats.means, stats.precision
    ).max(1)
    np.testing.assert_array_equal(z.argmax(1) == c, gaps > 2.0)
    assert np.mean(z[labels == c][10:].argmax(1) == c) == 1.0  # its other photos: all found
    assert np.mean(z[labels < c].argmax(1) == logits[labels < c].argmax(1)) >= 0.95  # trained: kept
    np.testing.assert_array_equal(
        personalise.added_logits(logits, x, stats, np.zeros((0, 6)), scale=1, margin=0), logits
    )


def test_added_species_is_known_to_the_open_set_score():
    x, labels, c = _gaussians(seed=2)
    stats = abstain.fit_embedding_stats(x[labels < c], labels[labels < c], c)
    new = x[labels == c]
    before = abstain.openset_score("relative_mahalanobis", np.zeros((len(new), c)), new, stats)
    extended = personalise.with_added(stats, personalise.added_mean(new[:10])[None], [10])
    assert extended.means.shape == (c + 1, x.shape[1]) and np.allclose(np.linalg.norm(extended.unit_means, axis=1), 1)
    after = abstain.openset_score("relative_mahalanobis", np.zeros((len(new), c + 1)), new, extended)
    known = abstain.openset_score("relative_mahalanobis", np.zeros((15, c)), x[labels == 0], stats)
    assert after.min() > before.max() and after.mean() > known.mean() - 3 * known.std()


def test_added_mean_refuses_no_shots():
    with pytest.raises(ValueError, match="at least one shot"):
        personalise.added_mean(np.zeros((0, 6)))
