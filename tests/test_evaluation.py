"""Evaluation and prediction from checkpoints: metrics, reports, submission, collapse guard, errors."""

from __future__ import annotations

import csv
import json
import re
import subprocess

import jax
import ml_collections
import numpy as np
import pytest
from sklearn import metrics as skm
from training_runs import ROOT, env, main_command

from flowers_jax import guard, metrics, reports


@pytest.fixture(scope="module")
def fixture_predictions():
    """12 classes, 3 of them never in the labels, 2 never predicted; 203 examples."""
    rng = np.random.default_rng(0)
    labels = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8], size=203)
    logits = rng.normal(size=(203, 12)) + 3.0 * np.eye(12)[labels] * (rng.uniform(size=(203, 1)) < 0.7)
    logits[:, 10:] -= 100.0  # classes 10 and 11 are never predicted
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return labels, probs


def test_metrics_equal_scikit_learn(fixture_predictions):
    labels, probs = fixture_predictions
    preds = probs.argmax(-1)
    cm = np.asarray(jax.jit(metrics.confusion_matrix)(labels, probs, np.ones(len(labels))))
    ours = metrics.from_confusion(cm)  # what training's validation reports
    report = reports.summary_metrics(labels, probs)  # what --mode eval reports
    for r in (ours, report):
        assert r["accuracy"] == pytest.approx(skm.accuracy_score(labels, preds), abs=1e-12)
        assert r["macro_f1"] == pytest.approx(skm.f1_score(labels, preds, average="macro"), abs=1e-12)
        assert r["weighted_f1"] == pytest.approx(skm.f1_score(labels, preds, average="weighted"), abs=1e-12)
    assert ours["macro_precision"] == pytest.approx(
        skm.precision_score(labels, preds, average="macro", zero_division=0)
    )
    assert report["top5_accuracy"] == pytest.approx(skm.top_k_accuracy_score(labels, probs, k=5, labels=range(12)))
    # Padding rows (mask 0) count nowhere.
    padded = np.asarray(
        metrics.confusion_matrix(np.r_[labels, [3, 3]], np.r_[probs, probs[:2]], np.r_[np.ones(203), [0, 0]])
    )
    np.testing.assert_array_equal(padded, cm)


def test_guard_fires_on_collapse_and_stays_quiet_when_healthy(fixture_predictions, capsys):
    _, probs = fixture_predictions
    names = [f"c{i}" for i in range(12)]
    healthy = guard.check_predictions(probs, names)
    assert not healthy.collapsed
    collapsed_probs = probs.copy()
    collapsed_probs[:, 4] += 10.0
    report = guard.check_predictions(collapsed_probs, names)
    assert report.collapsed and report.dominant_class == 4 and report.share == 1.0
    guard.announce(report)
    assert "PREDICTION COLLAPSE" in capsys.readouterr().out


def _main(workdir, *args):
    return subprocess.run(
        main_command(workdir, *args), cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300
    )


def test_eval_mode_writes_every_report(smoke_workdir):
    proc = _main(smoke_workdir, "--mode=eval")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = smoke_workdir / "eval" / "best" / "val"
    for name in (
        "metrics.json",
        "predictions.csv",
        "per_class.csv",
        "per_class.md",
        "confusion_matrix.png",
        "confused_pairs.csv",
        "confused_pairs.md",
        "reliability.png",
        "risk_coverage.png",
        "guard.json",
    ):
        assert (out / name).exists(), name
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["examples"] == 8 * 13 and "macro_f1" in summary and "ece" in summary
    assert "macro-F1" in proc.stdout and "prediction distribution ok" in proc.stdout
    rows = list(csv.DictReader((out / "per_class.csv").read_text().splitlines()))
    assert len(rows) == 8 and sum(int(r["support"]) for r in rows) == 104
    right = reports.read_predictions(str(out / "predictions.csv"))  # one row a val photo
    assert len(right) == 104 and sum(right.values()) == round(summary["accuracy"] * 104)


def test_predict_mode_writes_each_test_id_exactly_once(smoke_workdir):
    import tensorflow as tf

    proc = _main(smoke_workdir, "--mode=predict", "--checkpoint=latest", "--config.eval.tta=flip,crops")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = smoke_workdir / "predict" / "latest" / "test"
    rows = list(csv.DictReader((out / "submission.csv").read_text().splitlines()))
    files = tf.io.gfile.glob(str(smoke_workdir / "data" / "*" / "test" / "*.tfrec"))
    features = {"id": tf.io.FixedLenFeature([], tf.string)}
    ids = [tf.io.parse_single_example(r, features)["id"].numpy().decode() for r in tf.data.TFRecordDataset(files)]
    assert len(ids) == 20  # the smoke set's 20 test examples: not a multiple of the batch of 16
    assert sorted(r["id"] for r in rows) == sorted(ids)
    assert all(0 <= int(r["label"]) < 8 for r in rows)
    npz = np.load(out / "probabilities.npz")
    assert npz["probs"].shape == (20, 8) and list(npz["ids"]) == [r["id"] for r in rows]
    assert (out / "guard.json").exists()


def test_guard_on_a_model_forced_to_one_class(smoke_workdir):
    from flowers_jax import data, inference
    from flowers_jax.data import fixtures
    from flowers_jax.evaluation import predict_split

    config, variables, _ = inference.load_for_inference(str(smoke_workdir), "best")
    fixtures.use_workdir_data(config, str(smoke_workdir))
    bias = variables["params"]["head"]["predictions"]["bias"]
    variables["params"]["head"]["predictions"]["bias"] = bias.at[3].add(1e4)
    probs = predict_split(config, variables, "val").probs()
    report = guard.check_predictions(probs, data.dataset_info(config).class_names)
    assert report.collapsed and report.dominant_class == 3


def test_mismatched_checkpoint_and_missing_workdir_are_clear_errors(smoke_workdir, tmp_path):
    proc = _main(smoke_workdir, "--mode=eval", "--config.model=mobilenet_v2_035")
    assert proc.returncode != 0 and "model='efficientnet_lite0'" in proc.stderr and "mobilenet_v2_035" in proc.stderr
    proc = _main(smoke_workdir, "--mode=eval", "--config.num_classes=5")
    assert proc.returncode != 0 and "num_classes=8" in proc.stderr
    proc = _main(tmp_path / "nowhere", "--mode=eval")
    assert proc.returncode != 0 and "does not exist" in proc.stderr
    proc = _main(smoke_workdir, "--mode=eval", "--split=test")
    assert proc.returncode != 0 and "no labels" in proc.stderr and "--mode predict" in proc.stderr


@pytest.fixture
def calibrated_workdir(calibrate_run, tmp_path):
    """A copy of the session's calibrated smoke workdir (conftest.py) for a test's own eval/predict."""
    import shutil

    calibrated, proc = calibrate_run
    assert "calibrated step" in proc.stdout and "not sure:" in proc.stdout
    workdir = tmp_path / "w"
    shutil.copytree(calibrated, workdir, ignore=shutil.ignore_patterns("eval", "predict", "export*"))
    return workdir


def test_calibrate_then_eval_and_predict_use_it(calibrated_workdir):
    cal = json.loads((calibrated_workdir / "calibration.json").read_text())
    assert cal["image_size"] == 64 and cal["split"] == "val" and cal["val"]["examples"] == 104
    assert cal["val"]["after"]["nll"] <= cal["val"]["before"]["nll"] + 1e-9
    assert (calibrated_workdir / "calibration_reliability.png").stat().st_size > 10_000
    assert (calibrated_workdir / "calibration_embeddings.npz").exists()  # the embedding scores' statistics

    proc = _main(calibrated_workdir, "--mode=eval")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"temperature {cal['temperature']:.4f}" in proc.stdout and "not sure below" in proc.stdout
    summary = json.loads((calibrated_workdir / "eval" / "best" / "val" / "metrics.json").read_text())
    assert summary["calibration"]["temperature"] == cal["temperature"]
    ci = summary["intervals"]  # seeded bootstrap over the photos, printed too
    assert ci["accuracy"][0] <= summary["accuracy"] <= ci["accuracy"][1] and ci["accuracy"][0] < ci["accuracy"][1]
    assert ci["macro_f1"][0] <= summary["macro_f1"] <= ci["macro_f1"][1] and "95% intervals" in proc.stdout
    assert summary["calibrated"]["nll"] == pytest.approx(cal["val"]["after"]["nll"], rel=1e-4)
    assert summary["nll"] == pytest.approx(cal["val"]["after"]["nll"], rel=1e-4)  # the headline is calibrated
    assert summary["selective"]["coverage"] == pytest.approx(cal["selective"]["val"]["coverage"])
    assert sum(summary["decisions"].values()) == 104

    proc = _main(calibrated_workdir, "--mode=predict")
    assert proc.returncode == 0, proc.stderr[-3000:]
    npz = np.load(calibrated_workdir / "predict" / "best" / "test" / "probabilities.npz")
    assert set(npz["decision"]) <= {"answer", "not_sure", "unknown"} and len(npz["decision"]) == 20


def test_calibration_of_another_size_is_refused_and_can_be_turned_off(calibrated_workdir):
    proc = _main(calibrated_workdir, "--mode=eval", "--config.data.image_size=96", "--config.data.tfrecord_size=64")
    assert proc.returncode != 0
    assert "at 64px, not step" in proc.stderr and "--mode calibrate" in proc.stderr
    proc = _main(
        calibrated_workdir,
        "--mode=eval",
        "--config.data.image_size=96",
        "--config.data.tfrecord_size=64",
        "--config.eval.calibration=off",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "confidence not calibrated" in proc.stdout


def test_calibrate_refuses_bad_requests_and_writes_nothing(smoke_workdir, tmp_path):
    import glob

    assert not (smoke_workdir / "calibration.json").exists()
    proc = _main(smoke_workdir, "--mode=calibrate", "--split=test")
    assert proc.returncode != 0 and "has no labels" in proc.stderr
    few = sorted(glob.glob(str(smoke_workdir / "data" / "*" / "val" / "*.tfrec")))[0]
    proc = _main(smoke_workdir, "--mode=calibrate", f"--split={few}")
    assert proc.returncode != 0 and "calibration needs at least 100 labelled photos" in proc.stderr
    proc = _main(smoke_workdir, "--mode=calibrate", "--checkpoint=99999")
    assert proc.returncode != 0 and "99999" in proc.stderr
    proc = _main(smoke_workdir, "--mode=calibrate", "--config.trust.target_risk=2")
    assert proc.returncode != 0 and "config.trust.target_risk" in proc.stderr
    assert not list(smoke_workdir.glob("calibration*"))


def test_describe_prints_model_and_stage_plan():
    """--mode describe: parameter table, load report and each stage's group table, without data."""
    proc = subprocess.run(
        main_command("", "--mode=describe", "--config.model=mobilenet_v2_035", "--config.pretrained="),
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "randomly initialised" in out and "params/backbone" in out and "logits (2, 8), finite: True" in out
    assert "stage 1/2 'head'" in out and "stage 2/2 'top'" in out and "frozen" in out and "peak lr" in out


def test_two_class_metrics():
    """A 2-class model evaluates (scikit-learn's top_k_accuracy_score refuses 2 score columns)."""
    labels = np.array([0, 1, 1, 0, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3], [0.2, 0.8], [0.1, 0.9]])
    report = reports.summary_metrics(labels, probs)
    assert report["accuracy"] == pytest.approx(0.6) and report["top5_accuracy"] == 1.0
    assert reports.top_k_accuracy(labels, probs, 1) == pytest.approx(0.6)


def test_split_folders_of_globs_and_sizes_are_distinct():
    from flowers_jax import evaluation

    a, b = evaluation._split_name("/data/a/val/*.tfrec"), evaluation._split_name("/data/b/val/*.tfrec")
    assert a != b and not a.startswith(".") and "a_val" in a
    assert evaluation._split_name("val") == "val"
    config = ml_collections.ConfigDict({"data": {"image_size": 288}})
    assert evaluation.split_dir_name("val", config, 256) == "val@288px"
    assert evaluation.split_dir_name("val", config, 288) == "val"


def test_latest_falls_back_past_an_unreadable_step_and_bad_checkpoint_values_are_named(smoke_workdir, tmp_path):
    import shutil

    from flowers_jax import checkpoint, inference

    workdir = tmp_path / "w"
    shutil.copytree(smoke_workdir, workdir, ignore=shutil.ignore_patterns("eval", "predict"))
    latest = workdir / "checkpoints" / "latest"
    steps = sorted(int(p.name) for p in latest.iterdir() if p.name.isdigit())
    assert len(steps) >= 2
    shutil.rmtree(latest / str(steps[-1]) / "state")  # e.g. deleted by a trainer's max_to_keep mid-read
    _, _, info = inference.load_for_inference(str(workdir), "latest")
    assert info["step"] == steps[-2]
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(f"no checkpoint at step 99999; have {steps}")):
        inference.load_for_inference(str(workdir), "99999")
    with pytest.raises(checkpoint.CheckpointError, match="must be best, latest or a step number, got 'abc'"):
        inference.load_for_inference(str(workdir), "abc")
