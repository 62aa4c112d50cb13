"""Entry point: `python -m flowers_jax.main --config configs/X.py --workdir W [--mode M]`.

Kept short on purpose (as flax's examples/imagenet): it parses flags, starts
jax.distributed when the run spans several processes, checks the config, and
hands it to the mode. `--config.key=value` overrides any config field.
"""

from __future__ import annotations

import logging
import os

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Run configuration file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the run keeps checkpoints, metrics and logs.")
_MODE = flags.DEFINE_enum(
    "mode",
    "train",
    ["train", "choose_size", "eval", "predict", "calibrate", "describe"],
    "train (resumes if the workdir has checkpoints), choose_size (val accuracy at each of --sizes; the best -> "
    "W/test_size.json, which eval, predict, calibrate and the exporter then use), eval (reports on a labelled "
    "split), predict (submission for an unlabelled split), calibrate (temperature and abstention thresholds on val "
    "-> W/calibration.json), describe (the model and its pretrained load, no data).",
)
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "eval/predict/calibrate: best, latest, or a step number.")
_SPLIT = flags.DEFINE_string(
    "split",
    None,
    "eval/predict/calibrate: val, test, train, or a path/glob of .tfrec files (default: val for eval and "
    "calibrate, test for predict).",
)
_SIZES = flags.DEFINE_list(
    "sizes", None, "choose_size: the candidate test-time sizes (default: the training size S, S+32 and S+64)."
)
_PHOTOS = flags.DEFINE_string(
    "photos",
    None,
    "eval: score the original photos of --split in this folder (Oxford-102 layout or class folders) fed as the "
    "web page feeds them (flowers_jax/page_eval.py), at the size val chose; reports in W/eval/<checkpoint>/page-*.",
)
_ONNX = flags.DEFINE_string("onnx", None, "with --photos: score with this export folder's model.onnx, not Flax.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"], "jax.distributed: auto = when a coordinator is given or on a TPU pod."
)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0, for multi-process runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # Imports after flag parsing: a typo in a flag fails in a second, not after TF/JAX start.
    from flowers_jax import config as config_lib
    from flowers_jax import distributed

    logging.getLogger("flowers_jax").setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax's per-save INFO lines drown the progress
    distributed.initialize(
        _DISTRIBUTED.value,
        coordinator_address=_COORDINATOR.value,
        num_processes=_NUM_PROCESSES.value,
        process_id=_PROCESS_ID.value,
    )
    config = _CONFIG.value
    try:
        config_lib.validate(config)
    except config_lib.ConfigError as e:
        raise app.UsageError(str(e)) from None

    if _MODE.value == "describe":
        from flowers_jax import describe

        describe.run(config, _WORKDIR.value)
        return
    if not _WORKDIR.value:
        raise app.UsageError(f"--workdir is required for --mode {_MODE.value}")
    if config.get("synthetic_data"):  # smoke runs keep their own dataset in the workdir
        _use_synthetic_data(config, _WORKDIR.value, write=_MODE.value == "train")
    if _MODE.value == "train":
        from flowers_jax import train

        # Refusals that the user fixes (another trainer holds the workdir, no checkpoint step can be
        # read, a checkpoint of another model) are messages, as config errors are, not tracebacks.
        try:
            train.train_and_evaluate(config, _WORKDIR.value)
        except (train.workdir_lock.WorkdirLockedError, train.checkpoint.CheckpointError) as e:
            raise app.UsageError(str(e)) from None
        return

    _evaluate(config)


def _evaluate(config) -> None:
    """The modes that read a checkpoint: choose_size, eval (TFRecords or --photos), calibrate, predict."""
    from flowers_jax import chosen_size, evaluation

    workdir, which, split = (
        _WORKDIR.value,
        _CHECKPOINT.value,
        _SPLIT.value or ("test" if _MODE.value == "predict" else "val"),
    )
    if (_PHOTOS.value or _ONNX.value) and _MODE.value != "eval":
        raise app.UsageError("--photos and --onnx go with --mode eval")
    if _ONNX.value and not _PHOTOS.value:
        raise app.UsageError("--onnx needs --photos (the page-fed eval)")
    # Without --config.data.image_size, eval, predict and calibrate use the size val chose for this
    # checkpoint (W/test_size.json, from --mode choose_size), else the calibration's, else the training size.
    size = config_flags.get_override_values(flags.FLAGS["config"]).get("data.image_size")
    try:
        if _MODE.value == "choose_size":
            sizes = [int(x) for x in _SIZES.value] if _SIZES.value else chosen_size.candidates(config.data.image_size)
            evaluation.choose_test_size(config, workdir, which, sizes=sizes, split=split)
        elif _MODE.value == "eval" and _PHOTOS.value:
            from flowers_jax import page_eval

            page_eval.run_page_eval(config, workdir, _PHOTOS.value, which, split, image_size=size, onnx=_ONNX.value)
        else:
            run = {
                "eval": evaluation.run_eval,
                "calibrate": evaluation.run_calibrate,
                "predict": evaluation.run_predict,
            }
            run[_MODE.value](config, workdir, which, split, test_size=not size)
    except (evaluation.EvalError, evaluation.inference.checkpoint.CheckpointError) as e:
        raise app.UsageError(str(e)) from None


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, where an unknown `--config.KEY` stops with one line naming it: ml_collections
    raises a bare AttributeError from inside the parser, a 40-line traceback before "Did you mean"."""
    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError) as e:
        import re

        text = str(e.args[0] if e.args else e)
        key = m.group() if (m := re.search(r"\w+", text)) else "?"
        hint = re.search(r'Did you mean "([^"]+)"', text)
        flag = next((a.split("=", 1)[0] for a in argv[1:] if a.split("=", 1)[0].endswith(f".{key}")), "--config")
        said = f"{flag}: no such config key {key!r}" + (f"; did you mean {hint.group(1)!r}?" if hint else "")
        raise SystemExit(f"FATAL Flags parsing error: {said}") from None


def _use_synthetic_data(config, workdir: str, *, write: bool) -> None:
    """Points the config at <workdir>/data; when training, first writes the small learnable set there (once)."""
    import jax

    from flowers_jax.data import fixtures

    data_dir = fixtures.use_workdir_data(config, workdir)
    if not write:
        return
    if jax.process_index() == 0 and not os.path.exists(os.path.join(data_dir, "dataset.json")):
        s = config.synthetic_data
        fixtures.write_synthetic_dataset(
            data_dir,
            num_classes=config.num_classes,
            image_size=config.data.image_size,
            train_per_class=s.train_per_class,
            val_per_class=s.val_per_class,
            test_examples=s.test_examples,
            seed=config.seed,
        )
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("synthetic data written")


if __name__ == "__main__":
    from flowers_jax import hugepages

    hugepages.restart_with_huge_pages()  # XLA:CPU's buffers on huge pages (see hugepages.py)
    flags.mark_flags_as_required(["config"])
    app.run(main, flags_parser=_parse_flags)
