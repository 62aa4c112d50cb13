"""`W/test_size.json`: the image size val chose for test time, for one checkpoint.

A model trained on random-resized crops sees flowers larger than a whole photo at the training
size shows them, so a larger test-time size often scores better (FixRes, Touvron et al. 2019).
Which size is chosen on val, once, and written here by whoever chooses it (`--mode choose_size`,
i.e. evaluation.choose_test_size, or `record` for a choice made elsewhere); every later step reads it
instead of having the size typed again:

- the exporter (`flowers_jax/export/cli.py`): the exported input size when --image-size is not given;
- the page-fed eval (`flowers_jax/page_eval.py`): the size it feeds the photos at;
- `--mode eval`, `predict` and `calibrate` when --config.data.image_size is not given
  (evaluation.at_test_size).

`resolve` says which size applies and why: an explicit size; else this file (refused when it
belongs to another checkpoint step); else W/calibration.json's size (calibrate fits at the size
the page will use); else the training size. A calibration fitted at another size than the one
resolved is refused by `trust.load_matching`, as before.

    {"image_size": 288, "checkpoint": {"which": "best", "step": 1234}, "chosen_on": "val",
     "metric": "accuracy", "candidates": {"256": 0.901, "288": 0.914, "320": 0.910}, "rule": "..."}
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections
import tensorflow as tf

TEST_SIZE_FILE = "test_size.json"
RULE = "highest val accuracy of the checkpoint at each candidate size (uncalibrated, no TTA); ties: the smaller"


class ChosenSizeError(ValueError):
    """A recorded test size that does not belong to the checkpoint asked about."""


def candidates(trained_size: int) -> list[int]:
    """The test-time sizes val chooses among by default: the training size S, S + 32 and S + 64."""
    return [trained_size + d for d in (0, 32, 64)]


def record(
    workdir: str,
    *,
    image_size: int,
    step: int,
    which: str = "best",
    split: str = "val",
    metric: str = "accuracy",
    candidates: dict[int, float] | None = None,
    rule: str = RULE,
) -> str:
    """Writes W/test_size.json; returns its path."""
    path = os.path.join(workdir, TEST_SIZE_FILE)
    body = {
        "image_size": int(image_size),
        "checkpoint": {"which": which, "step": int(step)},
        "chosen_on": split,
        "metric": metric,
        "candidates": {str(k): float(v) for k, v in (candidates or {}).items()},
        "rule": rule,
    }
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(body, f, indent=2)
    return path


def load(workdir: str) -> dict[str, Any] | None:
    """W/test_size.json, or None when the workdir has none."""
    path = os.path.join(workdir, TEST_SIZE_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def resolve(
    workdir: str, *, step: int, trained_size: int, explicit: int | None = None, calibration: bool = True
) -> tuple[int, str]:
    """(the test-time size for checkpoint `step`, where it came from); see the module docstring.
    `calibration=False` leaves W/calibration.json out of it (an export that ignores the calibration).

    Raises:
      ChosenSizeError: W/test_size.json records a choice for another step (and no explicit size).
    """
    if explicit:
        return int(explicit), "given"
    chosen = load(workdir)
    if chosen is not None:
        if chosen["checkpoint"]["step"] != step:
            raise ChosenSizeError(
                f"{os.path.join(workdir, TEST_SIZE_FILE)} records {chosen['image_size']}px chosen on "
                f"{chosen['chosen_on']} for step {chosen['checkpoint']['step']}, not step {step}: choose the size "
                "for this checkpoint again (--mode choose_size), or give the size explicitly"
            )
        return int(chosen["image_size"]), f"{TEST_SIZE_FILE} (chosen on {chosen['chosen_on']})"
    from flowers_jax import trust

    cal = trust.load(workdir) if calibration else None
    if cal is not None:
        return int(cal.image_size), f"{trust.CALIBRATION_FILE} (the size it was fitted at)"
    return int(trained_size), "the training size (no test_size.json or calibration.json)"


def at_size(config: ml_collections.ConfigDict, size: int, *, stored: int | None = None) -> ml_collections.ConfigDict:
    """A copy of `config` that shows the model `size` x `size` images resized from the run's records
    (the records stay those the run was trained on: `stored` px, default the config's)."""
    from flowers_jax.data import layout

    c = config.copy_and_resolve_references()
    c.data.tfrecord_size = stored or layout.tfrecord_size(config)
    c.data.image_size = size
    return c
