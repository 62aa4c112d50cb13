"""W/test_size.json (flowers_jax/chosen_size.py): the size val chose is the exporter's default input
size, and metadata.json states the measured accuracy of that checkpoint at that size."""

from __future__ import annotations

import json
import pathlib
import shutil

import pytest

from flowers_jax import chosen_size, trust
from flowers_jax.export import metadata


def calibration_at(image_size: int, step: int) -> trust.Calibration:
    return trust.Calibration(
        temperature=1.5,
        image_size=image_size,
        checkpoint={"which": "best", "step": step},
        split="val",
        val={"before": {}, "after": {}},
        selective={"score": "msp", "threshold": 0.5, "target_risk": 0.02, "val": {"coverage": 0.5, "risk": 0.0}},
        openset={"score": "msp", "threshold": 0.1, "known_recall": 0.95},
    )


def test_test_size_resolves_explicit_then_recorded_then_calibration_then_training(tmp_path):
    w = str(tmp_path)
    size, why = chosen_size.resolve(w, step=7, trained_size=256)
    assert size == 256 and "training size" in why
    trust.save(w, calibration_at(320, 7))
    assert chosen_size.resolve(w, step=7, trained_size=256)[0] == 320
    assert chosen_size.resolve(w, step=7, trained_size=256, calibration=False)[0] == 256
    chosen_size.record(w, image_size=288, step=7, candidates={256: 0.9, 288: 0.92})
    size, why = chosen_size.resolve(w, step=7, trained_size=256)
    assert size == 288 and "test_size.json (chosen on val)" in why
    assert chosen_size.resolve(w, step=7, trained_size=256, explicit=224) == (224, "given")
    assert chosen_size.load(w)["candidates"] == {"256": 0.9, "288": 0.92}
    with pytest.raises(chosen_size.ChosenSizeError, match="for step 7, not step 8"):
        chosen_size.resolve(w, step=8, trained_size=256)


def _metrics(workdir: pathlib.Path, folder: str, **fields) -> None:
    m = {"accuracy": 0.9, "top5_accuracy": 0.98, "macro_f1": 0.88, "examples": 20, "checkpoint_step": 7}
    m |= {"split": "test", "image_size": 288, "tta": "", "intervals": {"accuracy": [0.8, 0.95]}} | fields
    (workdir / "eval" / "best" / folder).mkdir(parents=True)
    (workdir / "eval" / "best" / folder / "metrics.json").write_text(json.dumps(m))


def test_the_export_states_the_figure_of_its_checkpoint_and_size(tmp_path):
    assert metadata.accuracy_for(str(tmp_path), step=7, image_size=288)["status"] == "not measured"
    _metrics(tmp_path, "val@288px", split="val", accuracy=0.95)
    _metrics(tmp_path, "test@288px", accuracy=0.91)  # written before eval recorded its source: TFRecords
    _metrics(tmp_path, "test@320px", image_size=320, accuracy=0.99)  # another size
    _metrics(tmp_path, "test-tta@288px", tta="flip", accuracy=0.99)  # the page has no TTA
    _metrics(tmp_path, "old-step", checkpoint_step=3, accuracy=0.99)
    acc = metadata.accuracy_for(str(tmp_path), step=7, image_size=288)
    assert acc["status"] == "measured" and acc["source"] == "tfrecords" and acc["top1"] == 0.91
    assert [a["file"] for a in acc["also"]] == ["eval/best/val@288px/metrics.json"]
    _metrics(tmp_path, "page-oxford-test@288px", source="page", photos="/photos", runtime="flax", accuracy=0.905)
    acc = metadata.accuracy_for(str(tmp_path), step=7, image_size=288)
    assert (
        acc["source"] == "page" and acc["top1"] == 0.905 and acc["file"].endswith("page-oxford-test@288px/metrics.json")
    )
    assert "as the web page feeds them" in acc["source_means"] and len(acc["also"]) == 2
    assert "not measured" in metadata.accuracy_for(str(tmp_path), step=7, image_size=256)["status"]
    built = metadata.build(
        model_name="m",
        class_names=["a"],
        image_size=288,
        checkpoint_info={},
        val_metrics=None,
        licences={},
        files={},
        float16=False,
        embedding_dim=4,
    )
    assert built["accuracy"]["status"] == "not measured"


def _cli_args(workdir, *extra):
    from flowers_jax.export import cli

    return cli.parse_args(["--out", "unused", "--workdir", str(workdir), *extra])


def test_export_defaults_to_the_recorded_size_and_states_its_figure(smoke_workdir, tmp_path):
    from flowers_jax.export import cli

    w = tmp_path / "w"
    shutil.copytree(smoke_workdir, w, ignore=shutil.ignore_patterns("eval", "predict", "export*"))
    todo = cli.from_workdir(_cli_args(w))
    step = todo.checkpoint_info["step"]
    assert todo.image_size == 64 and "training size" in todo.checkpoint_info["image_size_from"]
    assert todo.accuracy["status"] == "not measured" and "--photos" in todo.accuracy["how"]

    chosen_size.record(str(w), image_size=80, step=step)
    _metrics(w, "page-x-val@80px", checkpoint_step=step, image_size=80, split="val", source="page", photos="/p")
    todo = cli.from_workdir(_cli_args(w))
    assert todo.image_size == 80 and todo.checkpoint_info["image_size_from"].startswith("test_size.json")
    assert todo.accuracy["status"] == "measured" and todo.accuracy["source"] == "page"
    trust.save(str(w), calibration_at(64, step))  # fitted at another size than val chose: refused
    with pytest.raises(SystemExit, match="at 64px, not step .* at 80px"):
        cli.from_workdir(_cli_args(w))


def test_choose_size_mode_records_and_eval_predict_calibrate_then_use_it(smoke_workdir, tmp_path):
    """`--mode choose_size` evaluates val at each of --sizes and records the best; eval, predict and
    calibrate without --config.data.image_size then run at the recorded size and say where it came from,
    an explicit size still wins, and a record of another checkpoint step is refused with what to run."""
    import subprocess

    from training_runs import ROOT, env, main_command

    from configs import smoke
    from flowers_jax import evaluation
    from flowers_jax.data import fixtures

    w = tmp_path / "w"
    shutil.copytree(smoke_workdir, w, ignore=shutil.ignore_patterns("eval", "predict", "export*"))
    done = subprocess.run(
        main_command(w, "--mode=choose_size", "--sizes=64,80"), cwd=ROOT, env=env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    chosen = chosen_size.load(str(w))
    assert set(chosen["candidates"]) == {"64", "80"} and chosen["chosen_on"] == "val"
    assert chosen["image_size"] == max((64, 80), key=lambda s: (chosen["candidates"][str(s)], -s))
    step = chosen["checkpoint"]["step"]
    for folder, size in (("val", 64), ("val@80px", 80)):  # each candidate's own eval folder
        assert json.loads((w / "eval" / "best" / folder / "metrics.json").read_text())["image_size"] == size

    chosen_size.record(str(w), image_size=80, step=step)  # whatever val chose, this test pins 80
    done = subprocess.run(main_command(w, "--mode=eval"), cwd=ROOT, env=env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "image size 80px (test_size.json (chosen on val))" in done.stdout
    m = json.loads((w / "eval" / "best" / "val@80px" / "metrics.json").read_text())
    assert m["image_size"] == 80 and m["image_size_from"].startswith("test_size.json")

    config = smoke.get_config()
    fixtures.use_workdir_data(config, str(w))
    cal = evaluation.run_calibrate(config, str(w), test_size=True)
    assert cal.image_size == 80 and trust.load(str(w)).image_size == 80
    out = evaluation.run_predict(config, str(w), test_size=True)
    assert out.endswith("test@80px") and (pathlib.Path(out) / "submission.csv").exists()
    with pytest.raises(evaluation.EvalError, match="at 80px, not step .* at 64px"):  # explicit 64 wins: refused
        evaluation.run_eval(config, str(w), split="val", test_size=False)  # calibration at 80
    chosen_size.record(str(w), image_size=80, step=step + 1)
    with pytest.raises(evaluation.EvalError, match=f"for step {step + 1}, not step {step}.*choose_size"):
        evaluation.run_eval(config, str(w), split="val", test_size=True)
