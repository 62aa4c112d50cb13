"""Calibration, "not sure" and "not one of my flowers": the arithmetic against scikit-learn and by hand."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest
from sklearn import metrics as skm

from flowers_jax import abstain, calibration, trust


def _overconfident(n=600, c=10, scale=4.0, seed=0):
    """Logits whose softmax is too sure: the true logits times `scale`."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    true_logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[labels]
    # Labels drawn from the true model's softmax, so T = scale is the right answer.
    p = calibration.softmax(true_logits)
    labels = np.array([rng.choice(c, p=row) for row in p])
    return true_logits * scale, labels


def test_temperature_matches_scikit_learn_and_recovers_the_scale():
    from sklearn.calibration import _TemperatureScaling  # what CalibratedClassifierCV(method="temperature") fits

    logits, labels = _overconfident(scale=4.0)
    t = calibration.fit_temperature(logits, labels)
    sk = _TemperatureScaling().fit(logits, labels)
    assert t == pytest.approx(1.0 / sk.beta_, rel=1e-4)
    assert 3.0 < t < 5.5  # the generating scale, up to sampling noise
    assert calibration.nll(labels, logits, t) < calibration.nll(labels, logits)
    # Under-confident logits (ours) get T < 1.
    assert calibration.fit_temperature(logits / 16, labels) == pytest.approx(t / 16, rel=1e-3)


def test_ece_adaptive_ece_brier_nll_by_hand():
    labels = np.array([0, 1, 1, 0])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.55, 0.45]])
    # 15 equal-width bins: each photo its own bin.
    expected = (abs(1 - 0.9) + abs(1 - 0.8) + abs(0 - 0.6) + abs(1 - 0.55)) / 4
    assert calibration.ece(labels, probs)[0] == pytest.approx(expected)
    # Two equal-mass bins: {0.55, 0.6} (1 of 2 right) and {0.8, 0.9} (2 of 2 right).
    assert calibration.ece(labels, probs, 2, adaptive=True)[0] == pytest.approx(
        (2 * abs(0.5 - 0.575) + 2 * abs(1 - 0.85)) / 4
    )
    onehot = np.eye(2)[labels]
    assert calibration.brier(labels, probs) == pytest.approx(np.mean(np.sum((probs - onehot) ** 2, 1)))
    assert calibration.nll_of_probs(labels, probs) == pytest.approx(skm.log_loss(labels, probs))
    logits = np.log(probs)
    assert calibration.nll(labels, logits) == pytest.approx(skm.log_loss(labels, probs))


def test_risk_coverage_and_threshold_by_hand():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    correct = np.array([True, True, False, True, True, False])
    curve = abstain.risk_coverage(scores, correct)
    np.testing.assert_allclose(curve.risk, [0, 0, 1 / 3, 1 / 4, 1 / 5, 2 / 6])
    assert curve.aurc == pytest.approx(np.mean([0, 0, 1 / 3, 1 / 4, 1 / 5, 2 / 6]))
    assert abstain.threshold_for_risk(scores, correct, 0.0) == 0.8
    assert abstain.threshold_for_risk(scores, correct, 0.2) == 0.5  # the largest coverage that meets it
    assert abstain.threshold_for_risk(scores, correct, 0.19) == 0.8
    at = curve.at(0.6, scores, correct)
    assert at == {"coverage": pytest.approx(4 / 6), "risk": pytest.approx(0.25), "answered": 4}
    assert abstain.threshold_for_risk(np.array([0.9]), np.array([False]), 0.02) == float("inf")
    # A threshold answers every photo tied with it: 0.7 is shared by a right and a wrong one.
    tied = np.array([0.9, 0.7, 0.7, 0.5])
    assert abstain.threshold_for_risk(tied, np.array([True, True, False, True]), 0.0) == 0.9


def test_openset_scores_and_report():
    rng = np.random.default_rng(1)
    stats = abstain.fit_embedding_stats(rng.normal(size=(30, 8)), np.repeat(np.arange(3), 10), 4)
    means = stats.unit_means
    assert np.allclose(np.linalg.norm(means[:3], axis=1), 1) and not means[3].any()  # class 3 has no photos
    emb = means[[0, 1]] * 5.0
    np.testing.assert_allclose(abstain.openset_score("cosine", np.zeros((2, 4)), emb, stats), [1.0, 1.0])
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(abstain.openset_score("energy", logits), np.log(np.exp(logits).sum(1)))
    np.testing.assert_allclose(abstain.openset_score("max_logit", logits), [2.0, 0.0])
    with pytest.raises(ValueError, match="needs embeddings"):
        abstain.openset_score("cosine", logits)
    known, unknown = rng.normal(2, 1, 500), rng.normal(0, 1, 300)
    r = abstain.openset_report(known, unknown, threshold=abstain.threshold_for_known_recall(known, 0.95))
    y, s = np.r_[np.ones(500), np.zeros(300)], np.r_[known, unknown]
    assert r["auroc"] == pytest.approx(skm.roc_auc_score(y, s))
    assert r["known_flagged"] == pytest.approx(0.05, abs=0.004)
    assert r["unknown_flagged"] == pytest.approx(np.mean(unknown < np.quantile(known, 0.05)), abs=0.01)
    assert r["fpr_at_95_tpr"] == pytest.approx(1 - r["unknown_flagged"], abs=0.02)


def _trust_config(**kw):
    return ml_collections.ConfigDict(
        dict(target_risk=0.05, selective_score="auto", openset_score="energy", known_recall=0.9) | kw
    )


def test_mahalanobis_scores_against_scipy_and_scikit_learn():
    """The class Gaussians share one Ledoit-Wolf covariance of the within-class residuals; the
    background Gaussian is fitted to all photos; distances as scipy computes them."""
    from scipy.spatial import distance
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(3), 12)
    x = rng.normal(size=(36, 5)) + 3.0 * np.eye(5)[labels]
    stats = abstain.fit_embedding_stats(x, labels, 4)  # class 3 has no photos: no mean, never nearest
    means = np.stack([x[labels == c].mean(0) for c in range(3)])
    np.testing.assert_allclose(stats.means[:3], means, rtol=1e-6)
    np.testing.assert_array_equal(stats.counts, [12, 12, 12, 0])
    np.testing.assert_allclose(stats.precision, LedoitWolf().fit(x - means[labels]).precision_, rtol=1e-5)
    np.testing.assert_allclose(stats.background_precision, LedoitWolf().fit(x).precision_, rtol=1e-5)
    q = np.r_[rng.normal(size=(3, 5)) * 2, np.zeros((1, 5))]  # the origin: where class 3's zero row would be
    p, bp = stats.precision.astype(np.float64), stats.background_precision.astype(np.float64)
    nearest = np.array([min(distance.mahalanobis(e, m, p) ** 2 for m in stats.means[:3]) for e in q])
    background = np.array([distance.mahalanobis(e, stats.background_mean, bp) ** 2 for e in q])
    logits = np.zeros((4, 3))
    np.testing.assert_allclose(abstain.openset_score("mahalanobis", logits, q, stats), -nearest, rtol=1e-9)
    np.testing.assert_allclose(
        abstain.openset_score("relative_mahalanobis", logits, q, stats), background - nearest, rtol=1e-9
    )
    # A photo at a class mean is more "known" than one far from every class.
    far = abstain.openset_score("relative_mahalanobis", logits[:2], np.stack([means[0], means[0] + 30]), stats)
    assert far[0] > far[1]
    with pytest.raises(ValueError, match="relative_mahalanobis open-set score needs embeddings"):
        abstain.openset_score("relative_mahalanobis", logits)


def test_fit_save_load_and_decide(tmp_path):
    logits, labels = _overconfident(n=400, scale=0.25)  # under-confident, as our models are
    cal = trust.fit(
        logits, labels, None, None, trust=_trust_config(), checkpoint={"which": "best", "step": 7}, image_size=64
    )
    assert cal.temperature < 0.5 and cal.val["after"]["nll"] < cal.val["before"]["nll"]
    assert cal.selective["score"] in abstain.CONFIDENCE_SCORES and cal.selective["val"]["risk"] <= 0.05
    assert set(cal.selective["candidates"]) == set(abstain.CONFIDENCE_SCORES)
    assert cal.openset["val_known_flagged"] == pytest.approx(0.1, abs=0.01)
    trust.save(str(tmp_path), cal)
    back = trust.load_matching(str(tmp_path), step=7, image_size=64)
    assert back.to_json() == cal.to_json() and back.stats is None
    decisions = back.decide(logits)
    assert set(decisions) <= {"answer", "not_sure", "unknown"}
    answered = decisions == "answer"
    assert np.mean(logits[answered].argmax(1) != labels[answered]) <= 0.05 + 1e-9
    with pytest.raises(trust.CalibrationError, match="step 7 at 64px, not step 8 at 64px.*--mode calibrate"):
        trust.load_matching(str(tmp_path), step=8, image_size=64)
    with pytest.raises(trust.CalibrationError, match="not step 7 at 96px.*image_size=96"):
        trust.load_matching(str(tmp_path), step=7, image_size=96)
    assert trust.load_matching(str(tmp_path), step=8, image_size=64, mode="off") is None
    assert trust.load_matching(str(tmp_path / "none"), step=7, image_size=64) is None


def test_fit_refuses_unlabelled_and_small_splits():
    logits, labels = _overconfident(n=99)
    common = dict(trust=_trust_config(), checkpoint={"which": "best", "step": 1}, image_size=64)
    with pytest.raises(trust.CalibrationError, match="99 photos; calibration needs at least 100"):
        trust.fit(logits, labels, None, None, **common)
    with pytest.raises(trust.CalibrationError, match="has no labels"):
        trust.check_fittable(None, "test")


def test_embedding_stats_saved_beside_the_calibration(tmp_path):
    """The statistics round-trip exactly, the decision uses them, and a calibration whose score
    needs them refuses to load without them (saying what to run)."""
    rng = np.random.default_rng(3)
    logits, labels = _overconfident(n=300, scale=0.5)
    emb = rng.normal(size=(300, 6)) + np.eye(10, 6)[labels] * 4
    stats = abstain.fit_embedding_stats(emb, labels, 10)
    config = _trust_config()
    config.openset_score = "relative_mahalanobis"
    cal = trust.fit(logits, labels, emb, stats, trust=config, checkpoint={"which": "best", "step": 3}, image_size=32)
    trust.save(str(tmp_path), cal)
    back = trust.load(str(tmp_path))
    for name, a in stats.arrays().items():
        np.testing.assert_array_equal(getattr(back.stats, name), a)
    np.testing.assert_array_equal(back.decide(logits, emb), cal.decide(logits, emb))
    assert np.mean(cal.decide(logits, emb) == "unknown") == pytest.approx(1 - config.known_recall, abs=0.01)
    with np.load(tmp_path / trust.STATS_FILE) as z:
        np.savez(tmp_path / trust.STATS_FILE, **{k: z[k] for k in z.files if k != "counts"})
    with pytest.raises(trust.CalibrationError, match=r"lacks \['counts'\].*--mode calibrate"):
        trust.load(str(tmp_path))
    (tmp_path / trust.STATS_FILE).unlink()
    with pytest.raises(trust.CalibrationError, match="relative_mahalanobis score but .* is missing.*--mode calibrate"):
        trust.load(str(tmp_path))
