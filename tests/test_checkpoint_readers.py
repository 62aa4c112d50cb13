"""Readers of a workdir (eval, predict, export, calibrate) never touch what the trainer writes, and
read what it keeps even while it is writing and deleting steps."""

from __future__ import annotations

import itertools
import re
import signal
import subprocess
import threading
import time

import jax
import numpy as np
import pytest
from training_runs import ROOT, TINY, env, main_command, run

from flowers_jax import checkpoint, logs


def test_lookup_leaves_a_save_in_flight_alone(tmp_path):
    saver = checkpoint.Checkpoints(str(tmp_path), async_save=False)
    saver.save("latest", 3, {"w": np.arange(4.0)}, {"note": "step 3"})
    saver.wait()
    # What an async save of step 4 looks like while it is being written.
    in_flight = tmp_path / "checkpoints" / "latest" / "4.orbax-checkpoint-tmp-1700000000"
    (in_flight / "state").mkdir(parents=True)
    manager, step = checkpoint.find(str(tmp_path), "latest")
    assert step == 3 and checkpoint.restore_meta(manager, step) == {"note": "step 3"}
    assert in_flight.is_dir(), "a read-only look-up deleted the trainer's save in flight"
    saver.close()
    # Nor does a look-up create folders.
    (tmp_path / "checkpoints" / "best").rmdir()
    with pytest.raises(checkpoint.CheckpointError, match="no best checkpoint yet"):
        checkpoint.find(str(tmp_path), "best")
    assert not (tmp_path / "checkpoints" / "best").exists()


def test_a_reader_looks_again_when_the_trainer_deleted_what_it_was_reading(tmp_path):
    """A trainer saving every step can delete (max_to_keep) every "latest" step a reader knew of, and
    replace the "best" it found, before the reader gets to them: the reader looks again."""
    import jax

    saver = checkpoint.Checkpoints(str(tmp_path), max_to_keep=2, async_save=False)

    def save(which, step):
        saver.save(which, step, {"w": np.full(4, float(step), np.float32)}, {"step": step})

    for step in (3, 4):
        save("latest", step)
    save("best", 3)
    latest, best = checkpoint.find(str(tmp_path), "latest"), checkpoint.find(str(tmp_path), "best")
    for step in (5, 6):  # deletes latest 3 and 4, and best 3
        save("latest", step)
    save("best", 6)
    saver.close()
    abstract = lambda meta: {"w": jax.ShapeDtypeStruct((4,), np.float32)}  # noqa: E731
    step, (meta, state), unreadable = checkpoint._restore_for_reader(latest[0], "latest", latest[1], abstract)
    assert (step, meta, float(state["w"][0])) == (6, {"step": 6}, 6.0) and [s for s, _ in unreadable] == [4, 3]
    step, (meta, _), unreadable = checkpoint._restore_for_reader(best[0], "best", best[1], abstract)
    assert (step, meta) == (6, {"step": 6}) and [s for s, _ in unreadable] == [3]


def test_a_step_that_vanishes_while_the_series_is_listed_is_listed_again(tmp_path, monkeypatch):
    """Orbax lists a series' step folders, then reads each one's metadata; a trainer deleting an old
    step in between (max_to_keep) made that a bare FileNotFoundError in a reader (seen beside a
    training that saves every step). The look-up and the reader's second look list the series again."""
    import orbax.checkpoint as ocp

    saver = checkpoint.Checkpoints(str(tmp_path), async_save=False)
    saver.save("latest", 3, {"w": np.arange(4.0)}, {"step": 3})
    saver.close()
    listings = []
    real = ocp.CheckpointManager._load_checkpoint_infos

    def listing_beside_a_trainer(manager, *args, **kwargs):
        listings.append(manager.directory)
        if len(listings) % 2:  # every other listing finds a step deleted under it
            raise FileNotFoundError(2, "No such file or directory", str(tmp_path / "checkpoints" / "latest" / "2"))
        return real(manager, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "_load_checkpoint_infos", listing_beside_a_trainer)
    manager, step = checkpoint.find(str(tmp_path), "latest")
    assert step == 3 and len(listings) == 2
    abstract = lambda meta: {"w": jax.ShapeDtypeStruct((4,), np.float64)}  # noqa: E731
    looks = iter([ValueError("unreadable at the first look"), None])

    def first_look_fails(meta):
        if error := next(looks):
            raise error
        return abstract(meta)

    listings.clear()
    with pytest.raises(checkpoint.UnreadableError, match="step 3: ValueError"):
        checkpoint._restore_for_reader(manager, "latest", step, first_look_fails)  # looks again: reload
    assert len(listings) == 2  # the reload's listing, and its retry


# What a reader may be told before the trainer's first save is complete.
_NOT_YET = re.compile(r"does not exist|no checkpoints/ folder|has the run saved one yet")


class _Readers(threading.Thread):
    """What eval, predict, export and calibrate do first, in a loop: look up a checkpoint of the
    workdir and restore it (`checkpoint.load_for_inference`), "latest" and "best" in turn."""

    def __init__(self, workdir):
        super().__init__(daemon=True)
        self.workdir, self.stop = str(workdir), threading.Event()
        self.restored: list[tuple[str, int]] = []
        self.errors: list[str] = []

    def run(self):
        for which in itertools.cycle(("latest", "best")):
            if self.stop.is_set():
                return
            try:
                _, _, info = checkpoint.load_for_inference(self.workdir, which)
                self.restored.append((which, info["step"]))
            except checkpoint.CheckpointError as e:
                if not _NOT_YET.search(str(e)):
                    self.errors.append(f"{which}: {e}")
            except Exception as e:  # anything else is a reader that failed
                self.errors.append(f"{which}: {type(e).__name__}: {e}")
            time.sleep(0.05)


def _steps(series) -> list[int]:
    return sorted(int(p.name) for p in series.iterdir() if p.name.isdigit()) if series.is_dir() else []


def test_readers_beside_a_training_that_saves_every_step(tiny_run, tmp_path):
    """Readers restore checkpoints in a loop while a training saves every step, is SIGKILLed mid-epoch
    in its second stage and resumed: the training finishes, no read failed, every kept checkpoint
    restores, and the run ends exactly where the uninterrupted one did, its metric rows neither lost
    nor written twice (this is also the suite's resume-after-preemption test). (Orbax's cleanup of
    temporary folders in a reader's look-up deleted the trainer's save in flight: "Save failed", "No
    ArrayMetadata".)"""
    workdir = tmp_path / "w"
    args = [a for a in TINY if not a.startswith("--config.checkpoint.every_steps=")]
    args.append("--config.checkpoint.every_steps=1")
    readers = _Readers(workdir)
    readers.start()
    try:
        with open(tmp_path / "killed.log", "w") as log_file:
            cmd = main_command(workdir, *args)
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=log_file)
            deadline = time.time() + 600  # a loaded machine; it stops at step 12
            while (
                proc.poll() is None
                and time.time() < deadline
                and max(_steps(workdir / "checkpoints" / "latest"), default=0) < 12
            ):
                time.sleep(0.1)
            failed = proc.poll()
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert failed is None, (
            f"the training ended before it was killed:\n{(tmp_path / 'killed.log').read_text()[-3000:]}"
        )
        resumed = run(workdir, *args)
    finally:
        readers.stop.set()
        readers.join(timeout=120)
    assert "resuming" in resumed.stderr
    assert not readers.errors, "\n".join(readers.errors[:5])
    assert {w for w, _ in readers.restored} == {"latest", "best"}, readers.restored

    series = workdir / "checkpoints"
    assert not list(series.glob("*/*.orbax-checkpoint-tmp*")), "a save was left unfinished"
    kept = _steps(series / "latest")
    assert kept[-1] == 24 and len(kept) == 2, kept  # max_to_keep
    for step in kept:
        assert checkpoint.load_for_inference(str(workdir), str(step))[2]["step"] == step
    _, _, info = checkpoint.load_for_inference(str(workdir), "best")
    assert info["step"] == _steps(series / "best")[-1]
    # Exact: the same parameters and metric rows as the run that was neither read nor killed.
    _, reference, _ = checkpoint.load_for_inference(str(tiny_run), "latest")
    _, final, _ = checkpoint.load_for_inference(str(workdir), "latest")
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), reference, final)
    rows = sorted((r["step"], r["split"]) for r in logs.read_metrics(str(workdir)))
    assert rows == sorted((r["step"], r["split"]) for r in logs.read_metrics(str(tiny_run)))
