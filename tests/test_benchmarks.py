"""The benchmarks' own pieces: our real train step as they time it, and the Keras recipe's model."""

import jax
import numpy as np

from benchmarks import common, keras_recipe


def test_benchmark_step_is_the_training_step_and_freezes_what_the_stage_says():
    images, labels = common.random_batch(4, 32)
    batch = {"image": images, "label": labels}
    for train, bn in (("all", "train"), ("head", "frozen")):
        step, state = common.train_step_and_state("mobilenet_v2_035", size=32, train=train, bn=bn)
        new, metrics = jax.jit(step)(state, batch)
        assert np.isfinite(float(metrics["loss"]))
        before, after = state.params["backbone"], new.params["backbone"]
        same = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), before, after))
        assert (not any(same)) if train == "all" else all(same)
        stats_same = jax.tree.leaves(jax.tree.map(np.array_equal, state.batch_stats, new.batch_stats))
        assert all(stats_same) == (bn == "frozen")


def test_keras_recipe_head_then_last_20_layers_without_batchnorm():
    import keras

    model, base = keras_recipe.build("efficientnet_lite0", 104, image_size=64, seed=0)
    assert [w.path for w in model.trainable_weights] == ["dense/kernel", "dense/bias"]  # phase 1: head only
    keras_recipe.unfreeze_last(base, 20)
    last = base.layers[-20:]
    assert all(layer.trainable != isinstance(layer, keras.layers.BatchNormalization) for layer in last)
    assert not any(layer.trainable for layer in base.layers[:-20])
    trainable = {w.path.split("/")[0] for w in base.trainable_weights}
    assert trainable and all(base.get_layer(n) in last for n in trainable)
    assert not any("bn" in n for n in trainable)


def test_val_chooses_the_test_size_and_records_it(monkeypatch, tmp_path):
    """evaluation.choose_test_size (--mode choose_size; benchmarks/oxford102.py calls it): each candidate
    size is evaluated on val from the training-size records; the best val wins, a tie goes to the smaller
    size, test is never read for the choice, and W/test_size.json records it for the exporter, the page-fed
    eval and eval/predict/calibrate."""
    from configs import oxford102 as recipe
    from flowers_jax import chosen_size, evaluation

    seen = []

    def fake_eval(config, workdir, which, split, **kw):
        seen.append((config.data.image_size, config.data.tfrecord_size, which, split))
        accuracy = {224: 0.90, 256: 0.93, 288: 0.93, 320: 0.91}[config.data.image_size]
        return {"accuracy": accuracy, "checkpoint_step": 806}

    monkeypatch.setattr(evaluation, "run_eval", fake_eval)
    config = recipe.get_config()
    config.data.tfrecord_size, config.data.image_size = 224, 256  # photos stored at 224, trained at 256
    size, val = evaluation.choose_test_size(config, str(tmp_path), sizes=[224, 256, 288, 320])
    assert size == 256 and val == {224: 0.90, 256: 0.93, 288: 0.93, 320: 0.91}
    assert seen == [(s, 224, "best", "val") for s in (224, 256, 288, 320)]
    assert (config.data.image_size, config.data.tfrecord_size) == (256, 224)  # the run's config is untouched
    recorded = chosen_size.load(str(tmp_path))
    assert (recorded["image_size"], recorded["checkpoint"]["step"], recorded["chosen_on"]) == (256, 806, "val")


def test_oxford_benchmark_model_picks_config_workdir_and_the_keras_twin():
    """No --model is Lite0 as before (configs/oxford102.py, workdirs/oxford102); --model liteN runs that
    model's config, its own workdir, and the Keras recipe on the same model from the same stored records."""
    import pytest

    from benchmarks import oxford102
    from configs import oxford102 as recipe
    from flowers_jax.data import layout

    args = oxford102.parse_args([])
    assert (args.model, args.workdir) == ("lite0", "workdirs/oxford102")
    assert oxford102.recipe_config("lite0").to_dict() == recipe.get_config().to_dict()
    assert oxford102.parse_args(["--model", "lite2", "--workdir", "W"]).workdir == "W"
    stored = layout.tfrecord_size(recipe.get_config())
    sizes = {"lite0": recipe.get_config().data.image_size, "lite1": 272, "lite2": 288}
    for model, size in sizes.items():
        config = oxford102.recipe_config(model)
        assert (config.model, config.pretrained) == (f"efficientnet_{model}", f"torch:efficientnet_{model}")
        assert (config.data.image_size, layout.tfrecord_size(config)) == (size, stored)
        assert oxford102.parse_args(["--model", model]).workdir == f"workdirs/{oxford102.output_name(model)}"
        cmd = oxford102.keras_command(config, "/data", "out.json", 8, 25)
        assert cmd[cmd.index("--model") + 1] == f"efficientnet_{model}"
        assert cmd[cmd.index("--tfrecord-size") + 1] == str(stored)  # the photos ours reads
        assert "--image-size" not in cmd  # the Keras recipe's input: the model's native size
    assert oxford102.output_name("lite2") == "oxford102_lite2"
    # Each recipe's own length unless a budget is given: ours the config's, Keras the notebook's.
    lite0 = recipe.get_config()
    assert oxford102.budgets(args, lite0) == ([8, lite0.stages.all.epochs], [8, 25])
    assert oxford102.budgets(oxford102.parse_args(["--epochs-fine", "3"]), lite0) == ([8, 3], [8, 3])
    assert oxford102.recipe_epochs(oxford102.recipe_config("lite2")) == (8, 25)  # its Results run's length
    with pytest.raises(SystemExit):
        oxford102.parse_args(["--model", "b0"])


def _flat(config) -> dict:
    from flax import traverse_util

    return {".".join(k): v for k, v in traverse_util.flatten_dict(config.to_dict()).items()}


def test_every_recipe_trial_changes_every_model_s_recipe_and_a_misspelt_one_is_refused():
    import pytest

    from benchmarks import oxford102, recipe_trials

    budget = {"data.data_dir": "/records", "stages.head.epochs": 2, "stages.all.epochs": 3}
    for model in oxford102.MODELS:
        base = oxford102.recipe_config(model)
        before = _flat(base)
        budgeted = oxford102.with_budget(base, "/records", 2, 3)
        for name in recipe_trials.TRIALS:
            changes = recipe_trials.trial_changes(budgeted, name)
            got = _flat(recipe_trials.trial_config(base, name, "/records", (2, 3)))
            assert {k: got[k] for k in budget | changes} == budget | changes, name
            assert all(got[k] == v for k, v in before.items() if k not in budget | changes), name
            # Each trial really changes the budgeted recipe (a size it already trains at would compare nothing).
            assert name == "baseline" or any(_flat(budgeted)[k] != v for k, v in changes.items()), (model, name)
        assert _flat(base) == before  # one base serves every trial
    lite2 = oxford102.recipe_config("lite2")
    assert recipe_trials.trial_changes(lite2, "train_size_plus_32") == {"data.image_size": 320}
    assert recipe_trials.trial_changes(lite2, "fine_lr_x2") == {"stages.all.lr": 2 * lite2.stages.all.lr}
    # The schedule trial's epochs follow the budget it runs at, not the recipe's own.
    assert recipe_trials.trial_changes(oxford102.with_budget(lite2, "/r", 8, 25), "fine_epochs_x1.5") == {
        "stages.all.epochs": 38
    }
    assert _flat(recipe_trials.trial_config(lite2, "fine_epochs_x1.5", "/r", (2, 4)))["stages.all.epochs"] == 6
    spaced = lite2.copy_and_resolve_references()
    spaced.stage_order = "head, all"  # the config accepts it: the stages are read the way training reads them
    assert _flat(oxford102.with_budget(spaced, "/r", 1, 2))["stages.all.epochs"] == 2
    assert recipe_trials.trial_changes(spaced, "fine_lr_x2") == {"stages.all.lr": 2 * lite2.stages.all.lr}
    with pytest.raises(ValueError, match="trial 'typo'.*lrr"), pytest.MonkeyPatch.context() as m:
        m.setitem(recipe_trials.TRIALS, "typo", {"stages.all.lrr": 1.0})
        recipe_trials.trial_config(oxford102.recipe_config("lite0"), "typo", "/r", (1, 1))
    for argv in (["--trials", "baseline,nosuch"], ["--trials", "baseline", "--test", "l2sp"]):
        with pytest.raises(SystemExit):
            recipe_trials.parse_args(argv)


def test_recipe_trials_table_gives_each_trial_beside_the_baseline():
    from benchmarks import recipe_trials

    def result(acc, changes, at_size=None):
        r = {"val": {"accuracy": acc, "macro_f1": acc - 0.01, "ece": 0.3, "nll": 0.9}, "epochs": 33}
        if at_size:
            r["val_at_test_size"] = {"image_size": at_size[0], "accuracy": at_size[1]}
        return r | {"changes": changes}

    l2sp = result(0.9612, recipe_trials.TRIALS["l2sp"], (320, 0.9650))
    text = recipe_trials.table({"baseline": result(0.95, {}, (288, 0.9550)), "l2sp": l2sp})
    lines = text.splitlines()
    assert len(lines) == 4
    assert lines[2].startswith("| baseline | (the recipe) | 0.9500 | +0.00 pts | 0.9550 at 288 | +0.00 pts | 0.9400 |")
    assert "`optimizer.decay_to=pretrained`" in lines[3]
    assert "| 0.9612 | +1.12 pts | 0.9650 at 320 | +1.00 pts | 0.9512 | 0.3000 | 0.9000 | 33 |" in lines[3]
    alone = recipe_trials.table({"l2sp": l2sp}).splitlines()
    assert "| 0.9612 |  | 0.9650 at 320 |  | 0.9512 |" in alone[2]  # no baseline run: no difference to show
    # A trial recorded before the test-size figure existed: that column blank, the rest as measured.
    older = recipe_trials.table({"baseline": result(0.95, {}, (288, 0.9550)), "l2sp": result(0.9612, {})})
    assert "| 0.9612 | +1.12 pts |  |  | 0.9512 |" in older.splitlines()[3]


def test_recipe_trials_refuse_a_folder_trained_with_other_settings(smoke_workdir):
    import json

    import ml_collections
    import pytest

    from benchmarks import recipe_trials
    from flowers_jax import checkpoint

    manager, step = checkpoint.find(str(smoke_workdir), "latest")
    saved = ml_collections.ConfigDict(json.loads(checkpoint.restore_meta(manager, step)["config"]))
    recipe_trials.refuse_other_settings(saved, str(smoke_workdir))  # the settings it was trained with
    saved.data.data_dir = "/elsewhere"  # the records moved: still the same run
    recipe_trials.refuse_other_settings(saved, str(smoke_workdir))
    saved.mixup_alpha = 0.2
    with pytest.raises(SystemExit, match=r"other settings \(mixup_alpha: 0\.0 there, 0\.2 here\)"):
        recipe_trials.refuse_other_settings(saved, str(smoke_workdir))


def test_recipe_trials_main_tables_every_trial_and_reads_test_once_for_the_named_one(monkeypatch, tmp_path, capsys):
    import json
    import os
    import sys

    import pytest

    from benchmarks import recipe_trials
    from flowers_jax import evaluation, reports, train

    trained, read = [], []

    def fake_train(config, workdir):
        trained.append((workdir, config.mixup_alpha))
        os.makedirs(workdir, exist_ok=True)  # the real one makes it, or finds it finished

    def fake_eval(config, workdir, which, split):
        size = config.data.image_size
        read.append((workdir, which, split, size, config.eval.calibration))
        acc = {256: 0.90, 288: 0.93, 320: 0.92}[size] + 0.01 * len(trained)  # val prefers 288 for both
        # 100 photos, the first 100 * acc right, as the real eval's predictions.csv says (both trained at 256)
        out = os.path.join(workdir, "eval", which, split if size == 256 else f"{split}@{size}px")
        os.makedirs(out, exist_ok=True)
        right = np.arange(100) < round(100 * acc)
        ids, probs = [f"p{i}" for i in range(100)], np.eye(2)[1 - right]  # right: probability on class 0
        reports.write_predictions(ids, np.zeros(100, int), probs, os.path.join(out, "predictions.csv"))
        figures = {"accuracy": acc, "macro_f1": acc, "ece": 0.1, "nll": 0.3, "checkpoint_step": 7}
        figures |= {"intervals": {"accuracy": [acc - 0.01, acc + 0.01]}, "image_size": size}
        with open(os.path.join(out, "metrics.json"), "w") as f:
            json.dump(figures, f)
        return figures

    monkeypatch.setattr(train, "train_and_evaluate", fake_train)
    monkeypatch.setattr(evaluation, "run_eval", fake_eval)
    argv = ["x", "--workdir", str(tmp_path), "--trials", "baseline,mixup_cutmix", "--test", "mixup_cutmix"]
    monkeypatch.setattr(sys, "argv", argv)
    recipe_trials.main()
    assert trained == [(str(tmp_path / "baseline"), 0.0), (str(tmp_path / "mixup_cutmix"), 0.2)]
    # Each trial read on val, uncalibrated, at its training size and at the three it chooses among;
    # test once, at val's size.
    mixup = str(tmp_path / "mixup_cutmix")
    val_reads = [
        (w, "best", "val", size, "off") for w in (str(tmp_path / "baseline"), mixup) for size in (256, 256, 288, 320)
    ]
    assert read == val_reads + [(mixup, "best", "test", 288, "off")]
    out = json.loads((tmp_path / "trials.json").read_text())
    assert out["trials"]["baseline"]["val_at_test_size"]["image_size"] == 288
    assert json.loads((tmp_path / "baseline" / "test_size.json").read_text())["image_size"] == 288
    assert out["trials"]["mixup_cutmix"]["changes"] == {"mixup_alpha": 0.2, "cutmix_alpha": 1.0}
    assert "test" in out["trials"]["mixup_cutmix"] and "test" not in out["trials"]["baseline"]
    # Against the baseline on the same val photos, both at 288: 95 right against 94, one photo apart.
    paired = out["trials"]["mixup_cutmix"]["val_paired_vs_baseline"]
    assert paired["difference"] == pytest.approx(0.01) and (paired["only_a_right"], paired["only_b_right"]) == (1, 0)
    assert "val_paired_vs_baseline" not in out["trials"]["baseline"]
    low, high = paired["interval"]
    assert 0 <= low < 0.01 < high
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| mixup_cutmix |"))
    assert f"| +1.00 pts [{100 * low:+.2f}, {100 * high:+.2f}] |" in row
    assert "| 0.9500 at 288 [" in row  # the fake's test figure, as read
    # Run again, the baseline's test read earlier by another run (the Results run's folder): both test
    # figures are shown, neither read again.
    earlier = tmp_path / "baseline" / "eval" / "best" / "test@288px"
    earlier.mkdir(parents=True)
    figures = {"accuracy": 0.9422, "macro_f1": 0.94, "image_size": 288, "checkpoint_step": 7}
    (earlier / "metrics.json").write_text(json.dumps(figures | {"intervals": {"accuracy": [0.93, 0.95]}}))
    read.clear()
    recipe_trials.main()
    assert [r for r in read if r[2] == "test"] == []
    out = capsys.readouterr().out
    assert "test was read for mixup_cutmix before" in out
    assert "| 0.9422 at 288 [0.9300, 0.9500] |" in next(r for r in out.splitlines() if r.startswith("| baseline |"))
    again = json.loads((tmp_path / "trials.json").read_text())["trials"]
    assert again["baseline"]["test"]["read"] == again["mixup_cutmix"]["test"]["read"] == "earlier"


def test_recipe_trials_record_keeps_trials_across_runs_and_refuses_what_would_not_compare(
    monkeypatch, tmp_path, capsys
):
    import json
    import sys

    import pytest

    from benchmarks import recipe_trials

    def fake_trial(config, workdir):
        acc = {0.0: 0.95, 0.2: 0.96}[config.mixup_alpha]
        return {"val": {"accuracy": acc, "macro_f1": acc, "ece": 0.1, "nll": 0.3}, "epochs": 2}

    monkeypatch.setattr(recipe_trials, "run_trial", fake_trial)
    record = tmp_path / "record.json"

    def run(*extra):
        argv = ["x", "--workdir", str(tmp_path / "w"), "--record", str(record), "--epochs-fine", "3", *extra]
        monkeypatch.setattr(sys, "argv", argv)
        recipe_trials.main()
        return capsys.readouterr().out

    run("--trials", "baseline")
    out = run("--trials", "mixup_cutmix")  # another sitting: the baseline comes from the record
    held = json.loads(record.read_text())
    assert sorted(held["trials"]) == ["baseline", "mixup_cutmix"] and held["epochs"] == [8, 3]
    assert held["trials"]["baseline"]["provenance"]["date"] and "machine" in held["trials"]["baseline"]["provenance"]
    assert "| baseline | (the recipe) | 0.9500 | +0.00 pts |" in out
    assert "| mixup_cutmix |" in out and "| 0.9600 | +1.00 pts |" in out
    with pytest.raises(
        SystemExit, match=r"efficientnet_lite0 trials at \[8, 3\] epochs .* not efficientnet_lite0 at \[8, 4\]"
    ):
        monkeypatch.setattr(
            sys, "argv", ["x", "--workdir", str(tmp_path / "w"), "--record", str(record)] + ["--epochs-fine", "4"]
        )
        recipe_trials.main()
    monkeypatch.setitem(recipe_trials.TRIALS, "mixup_cutmix", {"mixup_alpha": 0.2, "cutmix_alpha": 0.5})  # edited since
    with pytest.raises(SystemExit, match=r"trial 'mixup_cutmix' was measured with .*cutmix_alpha': 1\.0"):
        run("--trials", "mixup_cutmix")
    assert sorted(json.loads(record.read_text())["trials"]) == ["baseline", "mixup_cutmix"]  # nothing lost
    record.write_text("{not json")
    with pytest.raises(SystemExit, match=r"not a trials record"):
        run("--trials", "baseline")


def test_machine_names_the_cpu_and_whether_it_has_avx512(tmp_path):
    from benchmarks import machine

    path = tmp_path / "cpuinfo"
    for flags, avx512, says in (
        ("fpu sse2 avx2 avx512f avx512bw", True, ", AVX-512)"),
        ("fpu avx2", False, ", no AVX-512)"),
    ):
        path.write_text(f"processor\t: 0\nmodel name\t: AMD EPYC 9B14\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
        info = machine.cpu(str(path))
        assert (info["cpu_model"], info["avx512"]) == ("AMD EPYC 9B14", avx512)
        assert machine.describe(info).endswith(f"(AMD EPYC 9B14{says}")
    info = machine.cpu(str(tmp_path / "absent"))  # not Linux: stated as unknown, not guessed
    assert (info["cpu_model"], info["avx512"]) == ("unknown CPU", None)
    assert machine.describe(info).endswith("(unknown CPU)")
