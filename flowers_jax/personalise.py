"""Teaching a trained model new species from a few photos, without training: the arithmetic the web
page's "Add a species" runs, here to measure it (benchmarks/personalise.py) and to test the page.

    mean = added_mean(shot_embeddings)                              # [D] from ~10 photos
    z = added_logits(logits, embeddings, stats, means, scale=s, margin=m)   # [N, C + A]
    probs = softmax(z / T)                                           # what the page shows

An added species is a Gaussian with the trained classes' shared covariance (the calibration's
EmbeddingStats), so "is this photo the new species or one of the trained ones?" is the linear
discriminant between its mean and the nearest trained class mean (Fisher's LDA):

    g_k(e) = m_k^T P e - m_k^T P m_k / 2          (k: trained classes and added species)
    z_a(e) = max_k z_k(e) + scale * (g_a(e) - max_{k trained} g_k(e) - margin)

so the added species beats the model's best trained class exactly when its discriminant beats the
best trained one by `margin`, and the trained head alone still ranks the trained classes (their
logits are untouched). `margin` trades added-species recall against trained-class accuracy; `scale`
turns discriminant differences into logits. Both are chosen on validation photos of species the
model never saw (benchmarks/personalise.py) and travel in metadata.json's trust.add_species.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from flowers_jax.abstain import EmbeddingStats


def added_mean(shot_embeddings: np.ndarray) -> np.ndarray:
    """The mean [D] of one species' shot embeddings [n >= 1, D] (float32, as the page stores it)."""
    shots = np.asarray(shot_embeddings, np.float64)
    if shots.ndim != 2 or len(shots) == 0:
        raise ValueError(f"need at least one shot embedding [n, D], got shape {shots.shape}")
    return shots.mean(0).astype(np.float32)


def discriminants(embeddings: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """g_k(e) = m_k^T P e - m_k^T P m_k / 2 of embeddings [N, D] for means [K, D] -> [N, K], float64."""
    p = np.asarray(precision, np.float64)
    m = np.asarray(means, np.float64)
    pm = m @ p  # P is symmetric
    return np.asarray(embeddings, np.float64) @ pm.T - 0.5 * (pm * m).sum(-1)[None]


def added_logits(
    logits: np.ndarray,
    embeddings: np.ndarray,
    stats: EmbeddingStats,
    added_means: np.ndarray,
    *,
    scale: float,
    margin: float,
) -> np.ndarray:
    """The model's logits [N, C] extended by one column per added species (means [A, D]) -> [N, C + A]."""
    z = np.asarray(logits, np.float64)
    if len(added_means) == 0:
        return z
    trained = discriminants(embeddings, stats.means[stats.counts > 0], stats.precision).max(-1, keepdims=True)
    added = discriminants(embeddings, added_means, stats.precision)
    return np.concatenate([z, z.max(-1, keepdims=True) + scale * (added - trained - margin)], axis=-1)


def with_added(stats: EmbeddingStats, added_means: np.ndarray, shots: np.ndarray) -> EmbeddingStats:
    """`stats` with the added species (means [A, D], shot counts [A]) as more classes, so that the
    open-set scores count a photo of one as known (its mean joins the class means; the covariance
    stays the trained classes')."""
    means = np.asarray(added_means, np.float32).reshape(-1, stats.means.shape[-1])
    unit = means / np.maximum(np.linalg.norm(means, axis=-1, keepdims=True), 1e-12)
    return dataclasses.replace(
        stats,
        means=np.concatenate([stats.means, means]),
        unit_means=np.concatenate([stats.unit_means, unit.astype(np.float32)]),
        counts=np.concatenate([stats.counts, np.asarray(shots, np.float32).reshape(-1)]),
    )
