"""End-to-end training runs: smoke, 1 vs 8 devices, 2 processes, NaN stop, corrupt checkpoints, recipe resume.

Resume after a SIGKILL mid-epoch is tests/test_checkpoint_readers.py's (the run it kills is read beside)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from training_runs import ROOT, TINY, env, main_command, read_meta, run

from flowers_jax import checkpoint, inference, logs, train, workdir_lock


def _train_losses(workdir) -> list[float]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r["loss"] for r in map(json.loads, f) if r["split"] == "train"]


def _final_params(workdir):
    _, variables, info = inference.load_for_inference(str(workdir), "latest")
    return info["step"], variables


def test_smoke_run_leaves_every_artifact(smoke_workdir):
    w = smoke_workdir
    assert os.listdir(w / "checkpoints" / "latest") and os.listdir(w / "checkpoints" / "best")
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(w / "tensorboard"))
    assert (w / "training_curves.png").stat().st_size > 10_000
    records = [json.loads(line) for line in (w / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r["split"] == "val"]
    assert {"accuracy", "macro_f1", "loss"} <= set(records[0]) | set(val[0])
    done = json.loads((w / "DONE").read_text())
    # Learnable synthetic classes: far above chance (1/8) by the end.
    assert done["best_val"]["accuracy"] > 0.5


def test_metric_rows_after_the_resume_step_are_dropped(tmp_path):
    writer = logs.MetricWriter(str(tmp_path))
    for step in range(1, 6):
        writer.write(step, "train", {"loss": float(step)})
    writer.close()
    resumed = logs.MetricWriter(str(tmp_path), resume_step=3)  # the run restarts after its step-3 save
    resumed.write(4, "train", {"loss": 4.0})
    resumed.close()
    assert [r["step"] for r in logs.read_metrics(str(tmp_path))] == [1, 2, 3, 4]


@pytest.fixture(scope="module")
def eight_device_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("eight")
    # 8 fake devices on 2 shared cores: slow under load. Four "latest" steps are kept for the
    # corrupt-checkpoint test.
    run(workdir, *TINY, "--config.checkpoint.max_to_keep=4", devices=8, timeout=600)
    return workdir


def test_one_and_eight_devices_give_the_same_loss_curve(tiny_run, eight_device_run):
    one, eight = np.array(_train_losses(tiny_run)), np.array(_train_losses(eight_device_run))
    assert len(one) == len(eight) == 24
    # Same math, other reduction order. While the backbone is frozen (steps 1-8) the curves agree
    # to float noise. Once BatchNorm trains, its statistics must be global over the 8 shards: a
    # per-device BatchNorm (1 example per device; the last feature maps are 1x1 at 32 px) would change
    # the loss at the very first such step, so steps 9 and 10 (the loss after one global-BatchNorm
    # update) must still agree to 1e-4. After that, training from random init amplifies float noise
    # step by step (measured here and in CI: 5e-6 at steps 9-10, 2e-4 at step 11; here 18% at step
    # 24), so of the later steps only their mean, the course of the run, is compared (1.1% apart).
    np.testing.assert_allclose(one[:8], eight[:8], rtol=1e-5)
    np.testing.assert_allclose(one[8:10], eight[8:10], rtol=1e-4)
    np.testing.assert_allclose(one[10:].mean(), eight[10:].mean(), rtol=0.1)


def test_checkpoint_from_eight_devices_restores_on_one(eight_device_run):
    assert jax.device_count() == 1
    config, variables, info = inference.load_for_inference(str(eight_device_run), "best")
    leaves = jax.tree.leaves(variables)
    assert all(len(x.sharding.device_set) == 1 for x in leaves)
    assert info["step"] > 0 and config.num_classes == 4


@pytest.mark.slow
def test_two_processes_train_and_checkpoint_once(tmp_path):
    """The multi-host path, on localhost: two JAX processes started by the same launcher front end
    that runs a pod (launch/train.sh), joined by jax.distributed with CPU collectives."""
    workdir = tmp_path / "two"
    cmd = [
        "bash",
        str(ROOT / "launch" / "train.sh"),
        "--target",
        "local",
        "-n",
        "2",
        "--python",
        sys.executable,
        "--config",
        str(ROOT / "configs" / "smoke.py"),
        "--workdir",
        str(workdir),
        "--",
        *TINY,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    assert "process 0 of 2" in output and "process 1 of 2" in output
    # One checkpoint series, written jointly by both processes, that restores here.
    assert sorted(os.listdir(workdir / "checkpoints")) == ["best", "latest"]
    step, _ = _final_params(workdir)
    assert step == 24 and (workdir / "DONE").exists()
    assert len(_train_losses(workdir)) == 24  # metrics written by process 0 only


@pytest.mark.slow
def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    # The head stage (steps 1-8, saved at 3, 6 and 8) trains normally; the second stage's absurd
    # learning rate overflows the parameters within its first steps. The loss of the overflowing
    # step is still finite (it is computed before the update), so only the parameter-norm check
    # keeps that state from being saved as "latest".
    workdir = tmp_path / "nan"
    proc = subprocess.run(
        main_command(workdir, *TINY, "--config.stages.all.lr=1e38", "--config.optimizer.grad_clip_norm=0.0"),
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    match = re.search(r"TrainingDivergedError: non-finite .* at step (\d+); stopping\. The last good", proc.stderr)
    assert match, proc.stderr[-3000:]
    diverged_at = int(match.group(1))
    step, _ = read_meta(str(workdir), "latest")
    assert 8 <= step < diverged_at
    _, variables, _ = inference.load_for_inference(str(workdir), "latest")
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(variables))
    assert not (workdir / "LOCK").exists(), "a run that failed must release the workdir's lock"


def test_bad_config_fails_before_compute(tmp_path):
    proc = subprocess.run(
        main_command(tmp_path, "--config.stages.head.bn=sometimes"),
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "config.stages.head.bn" in proc.stderr
    proc = subprocess.run(
        main_command(tmp_path, "--config.modle=x"), cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0 and "--config.modle: no such config key 'modle'; did you mean 'model'?" in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert not os.path.exists(tmp_path / "checkpoints")


def test_checkpoints_accept_a_relative_workdir(tmp_path, monkeypatch):
    """The README runs with --workdir workdirs/smoke: Orbax itself wants absolute paths."""
    monkeypatch.chdir(tmp_path)
    ckpts = checkpoint.Checkpoints("workdirs/rel", async_save=True)
    ckpts.save("latest", 3, {"w": np.arange(4.0, dtype=np.float32)}, {"note": "relative"})
    ckpts.wait()
    ckpts.close()
    assert read_meta("workdirs/rel", "latest") == (3, {"note": "relative"})
    assert (tmp_path / "workdirs" / "rel" / "checkpoints" / "latest" / "3").is_dir()


def test_a_finite_loss_with_overflowed_parameters_still_stops_before_a_save():
    # The loss of a step is computed before its update: an update that overflows the parameters
    # shows only in the norms. Seen in CI: a finite loss at a save step, infinite saved weights.
    pending = [(3, {"loss": np.float32(2.5), "accuracy": np.float32(0.5), "param_norm": np.float32(np.inf)})]
    with pytest.raises(train.TrainingDivergedError, match=r"param_norm.*at step 3.*checkpoint \(step 2\) is kept"):
        train._flush(pending, writer=None, progress=None, step_in_epoch=3, last_good=2)


def test_saved_meta_is_the_value_at_save_time(tmp_path, monkeypatch):
    """Orbax writes the JSON item in a background thread while the loop goes on changing its record:
    the checkpoint must hold the record as it was when save() was called."""
    import asyncio

    from orbax.checkpoint._src.handlers import json_checkpoint_handler as handler

    original = handler.JsonCheckpointHandler._save_fn

    async def late_write(self, item, directory):
        await asyncio.sleep(0.5)  # the background write starts after the loop has moved on
        await original(self, item, directory)

    monkeypatch.setattr(handler.JsonCheckpointHandler, "_save_fn", late_write)
    ckpts = checkpoint.Checkpoints(str(tmp_path), async_save=True)
    meta = {"stage_index": 0, "best_val": {"macro_f1": 0.5}}
    ckpts.save("latest", 3, {"w": np.arange(4.0, dtype=np.float32)}, meta)
    meta["stage_index"] = 1
    meta["best_val"]["macro_f1"] = 0.9
    ckpts.wait()
    ckpts.close()
    assert read_meta(str(tmp_path), "latest") == (3, {"stage_index": 0, "best_val": {"macro_f1": 0.5}})


def _unfinished_copy(trained, workdir):
    """A copy of a finished TINY run with DONE removed: re-running it resumes from its latest step."""
    shutil.copytree(trained, workdir, ignore=shutil.ignore_patterns("eval", "predict"))
    (workdir / "DONE").unlink()
    return workdir


def _write_lock(workdir, pid: int, host: str | None = None, started: str = "2026-12-01T13:00:00+00:00") -> str:
    text = json.dumps({"host": host or socket.gethostname(), "pid": pid, "started": started})
    (workdir / "LOCK").write_text(text)
    return text


def test_a_second_trainer_is_refused_naming_the_holder(eight_device_run, tmp_path):
    workdir = _unfinished_copy(eight_device_run, tmp_path / "w")
    steps_before = sorted(os.listdir(workdir / "checkpoints" / "latest"))
    lock = _write_lock(workdir, os.getpid())  # this test's process: alive, on this host
    proc = subprocess.run(
        main_command(workdir, *TINY), cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode != 0
    expected = (
        f"workdir {workdir} is being trained by pid {os.getpid()} on host {socket.gethostname()} since "
        "2026-12-01T13:00:00+00:00; stop it or choose another --workdir"
    )
    assert expected in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert (workdir / "LOCK").read_text() == lock, "the refused trainer must leave the holder's lock alone"
    assert sorted(os.listdir(workdir / "checkpoints" / "latest")) == steps_before


def test_a_locked_workdir_is_a_message_and_a_non_zero_exit_not_a_traceback(tmp_path):
    """The refusal reaches the user as config errors do: the holder named on stderr, no traceback."""
    workdir = tmp_path / "w"
    workdir.mkdir()
    lock = _write_lock(workdir, os.getpid())  # this test's process: alive, on this host
    proc = subprocess.run(
        main_command(workdir, *TINY), cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode != 0
    assert f"is being trained by pid {os.getpid()}" in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert (workdir / "LOCK").read_text() == lock
    assert not (workdir / "checkpoints").exists()


def test_the_lock_names_its_holder_and_is_released_on_an_exception(tmp_path):
    with pytest.raises(KeyError), workdir_lock.hold(str(tmp_path)):
        holder = json.loads((tmp_path / "LOCK").read_text())
        assert (holder["host"], holder["pid"]) == (socket.gethostname(), os.getpid()) and holder["started"]
        refused = pytest.raises(workdir_lock.WorkdirLockedError, match=f"being trained by pid {os.getpid()}")
        with refused, workdir_lock.hold(str(tmp_path)):
            pass
        raise KeyError("the run fails")
    assert not (tmp_path / "LOCK").exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(eight_device_run, tmp_path):
    workdir = _unfinished_copy(eight_device_run, tmp_path / "w")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_lock(workdir, dead.pid)
    proc = run(workdir, *TINY)
    assert f"taking over the stale lock of pid {dead.pid} on host {socket.gethostname()}" in proc.stderr
    assert (workdir / "DONE").exists() and not (workdir / "LOCK").exists()


def _truncate_a_data_file(step_dir):
    biggest = max((step_dir / "state" / "ocdbt.process_0" / "d").iterdir(), key=lambda p: p.stat().st_size)
    os.truncate(biggest, biggest.stat().st_size // 2)


def _delete_manifests(step_dir):
    for manifest in step_dir.glob("state/**/manifest.ocdbt"):
        manifest.unlink()


def test_resume_falls_back_past_corrupt_newest_checkpoints(eight_device_run, tmp_path):
    """The three newest steps damaged three ways (one resume, to keep the suite short): each is named
    with its error and moved aside, and the run resumes from the newest intact step and finishes."""
    workdir = _unfinished_copy(eight_device_run, tmp_path / "w")
    latest = workdir / "checkpoints" / "latest"
    steps = sorted((int(p.name) for p in latest.iterdir() if p.name.isdigit()), reverse=True)
    assert len(steps) >= 4, steps  # the fixture keeps 4
    _truncate_a_data_file(latest / str(steps[0]))
    (latest / str(steps[1]) / "meta" / "metadata").unlink()
    _delete_manifests(latest / str(steps[2]))
    proc = run(workdir, *TINY)
    intact = steps[3]
    for bad in steps[:3]:
        assert re.search(rf"checkpoint step {bad} .* is unreadable \(.+\); resuming from step {intact}", proc.stderr)
    assert f"resuming from {workdir} at step {intact}" in proc.stderr
    # The bad steps are kept for the user, out of Orbax's way, and named in the output.
    moved = re.findall(r"moved it to (\S+)", proc.stderr)
    assert [os.path.basename(m).rsplit("-", 1)[0] for m in moved] == [f"latest-{s}" for s in steps[:3]]
    assert all(os.path.isdir(m) for m in moved), proc.stderr[-3000:]
    assert json.loads((workdir / "DONE").read_text())["step"] == steps[0] and not (workdir / "LOCK").exists()


def test_run_progress_reads_old_meta_and_keeps_the_first_of_tied_bests():
    from flowers_jax.state import RunProgress

    # A meta dict as checkpoints wrote it before RunProgress: no best_val before the first best.
    old = {"model": "m", "num_classes": 4, "config": "{}", "stage_index": 1, "stage_start_step": 8}
    old |= {"stage_finished": False, "best_val_macro_f1": -1.0, "best_step": None}
    old |= {"stage_best_val_macro_f1": -1.0, "epochs_since_stage_best": 0}
    progress = RunProgress.from_json(old)
    assert progress.stage_index == 1 and progress.best_val is None
    assert progress.record_best(16, {"macro_f1": 0.5}) and not progress.record_best(24, {"macro_f1": 0.5})
    saved = progress.to_json()
    progress.best_val["macro_f1"] = 0.9
    assert saved["best_step"] == 16 and saved["best_val"] == {"macro_f1": 0.5}
    # Early stopping counts the stage's epochs without a gain of more than min_delta.
    assert not progress.record_stage_epoch({"macro_f1": 0.5}, min_delta=0.1, patience=2)
    assert not progress.record_stage_epoch({"macro_f1": 0.55}, min_delta=0.1, patience=2)
    assert progress.record_stage_epoch({"macro_f1": 0.6}, min_delta=0.1, patience=2)


# The recipe fields of issue #15 all on, on a tiny smoke run (EfficientNet-Lite0 from its packaged
# ImageNet weights at 32 px, 8 classes x 4 photos = 2 steps per epoch) of two one-epoch stages:
# "top" moves the last blocks, so "all" shows whether L2-SP still pulls them toward the pretrained
# weights or toward where "top" left them.
RECIPE = [
    "--config.optimizer.decay_to=pretrained",
    "--config.optimizer.weight_decay=0.01",
    "--config.mixup_alpha=0.2",
    "--config.cutmix_alpha=1.0",
    "--config.dropout_rate=0.3",
    "--config.drop_connect_rate=0.3",
    "--config.data.image_size=32",
    "--config.synthetic_data.train_per_class=4",
    "--config.synthetic_data.val_per_class=2",
    "--config.synthetic_data.test_examples=4",
    "--config.stage_order=top,all",
    "--config.stages.top.epochs=1",
    "--config.stages.all.epochs=1",
    "--config.checkpoint.max_to_keep=10",
]


def _restore(workdir, which: str = "latest"):
    from flowers_jax import distributed
    from flowers_jax.state import abstract_state, build_model

    manager, step = checkpoint.find(str(workdir), which)
    meta = checkpoint.restore_meta(manager, step)
    config = ml_collections.ConfigDict(json.loads(meta["config"]))
    abstract = abstract_state(config, build_model(config), meta["stage_index"])
    abstract = checkpoint.abstract_with_sharding(abstract, distributed.replicated(distributed.make_mesh()))
    return config, checkpoint.restore_state(manager, step, abstract)


@pytest.mark.slow
def test_recipe_fields_resume_exactly_and_l2sp_anchors_the_pretrained_weights(tmp_path):
    from flax import traverse_util

    from flowers_jax import optim, pretrained

    straight = tmp_path / "straight"
    run(straight, *RECIPE, timeout=600)
    # Resume at the end of stage 1 (step 2): the resumed run enters stage 2 as the straight one did.
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed, ignore=shutil.ignore_patterns("eval", "predict"))
    (resumed / "DONE").unlink()
    for series in ("latest", "best"):
        for p in (resumed / "checkpoints" / series).iterdir():
            if p.name.isdigit() and int(p.name) > 2:
                shutil.rmtree(p)
    assert "resuming" in run(resumed, *RECIPE, timeout=600).stderr
    (step_a, params_a), (step_b, params_b) = _final_params(straight), _final_params(resumed)
    assert step_a == step_b == 4
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), params_a, params_b)

    config, state = _restore(straight)
    is_anchor = lambda x: isinstance(x, optim.AnchorState)  # noqa: E731
    anchors = {}
    for node in filter(is_anchor, jax.tree.leaves(state.opt_state, is_leaf=is_anchor)):
        for path, leaf in jax.tree_util.tree_leaves_with_path(node.anchor):
            anchors["/".join(str(getattr(k, "key", k)) for k in path)] = np.asarray(leaf)
    loaded = pretrained.load(config.pretrained, config.model, config.num_classes)["params"]
    loaded = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(loaded).items()}
    _, stage1 = _restore(straight, "2")
    moved = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(stage1.params).items()}
    last = "backbone/block7a_project_conv/kernel"  # trained in stage 1, so moved by step 2
    assert last in anchors and not np.array_equal(moved[last], loaded[last])
    assert not any(p.startswith("head/") for p in anchors)  # the new head decays toward zero
    for p, anchor in anchors.items():
        np.testing.assert_array_equal(anchor, loaded[p], err_msg=p)
