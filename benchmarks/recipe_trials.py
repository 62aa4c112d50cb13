"""The recipe's candidate changes, each trained and read on val in one place: one table to choose from.

  python benchmarks/recipe_trials.py [--model lite0|lite1|lite2] [--tfrecords /tmp/oxford102_tfrec]
      [--workdir workdirs/trials_<model>] [--trials baseline,l2sp,...] [--epochs-head 8 --epochs-fine 25]
      [--test NAME]

Each trial is the model's recipe (benchmarks/oxford102.py --model: its config in configs/) with the
changes TRIALS names (some relative to the recipe's own values), trained into <workdir>/<name> (a
rerun resumes an unfinished trial and skips a finished one; a folder trained with other settings is
refused), then read on val only: at the training size, the best checkpoint's top-1 and macro-F1
(macro-F1 chose the checkpoint) and its calibration at T = 1 (ECE, NLL), since mixup and label
smoothing move it; and its top-1 at the test-time size val chooses for it among the training size,
+32 and +64 (FixRes, as every run's model is used: the figure to choose a trial by, since a trial that
trains at another size is otherwise read at another size than the baseline).

Every trial gets the same epoch budget (--epochs-*), the baseline included, so a
short screening budget still compares like with like; fine_epochs_x1.5, whose change is the schedule's
length, gets the budget's fine-tuning epochs times 1.5. `--test NAME` reads the test split, once, at val's
size, for the trial this table chose; nothing else here reads test. Prints the table and writes
<workdir>/trials.json.

`--record FILE` (e.g. docs/results/recipe_trials_lite0.json) keeps the figures across runs: each trial's
val figures are merged into FILE as soon as it finishes, with its date, commit and machine, and the table
shows every trial FILE holds. A full-budget table is hours of CPU (each trial is a whole training), more
than one sitting, so it can be filled a few trials at a time; FILE refuses another model, epoch budget or
an edited trial's figures, which would not compare.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from collections.abc import Callable

import ml_collections

from benchmarks import machine
from flowers_jax import hugepages

# name -> the config fields it changes (flattened keys, as --config.KEY=VALUE spells them), or a function
# of the model's recipe config at the run's epoch budget giving them (changes relative to its own values).
Changes = dict[str, object]
TRIALS: dict[str, Changes | Callable[[ml_collections.ConfigDict], Changes]] = {
    "baseline": {},
    "l2sp": {"optimizer.decay_to": "pretrained", "optimizer.weight_decay": 0.01},
    "mixup_cutmix": {"mixup_alpha": 0.2, "cutmix_alpha": 1.0},
    "dropout_0.4": {"dropout_rate": 0.4},
    "drop_connect_0.3": {"drop_connect_rate": 0.3},
    "ema_0.998": {"ema_decay": 0.998},
    "no_label_smoothing": {"label_smoothing": 0.0},
    "fine_lr_x2": lambda c: {f"stages.{_fine(c)}.lr": 2 * c.stages[_fine(c)].lr},
    "train_size_plus_32": lambda c: {"data.image_size": c.data.image_size + 32},
    # The schedule's length: the one trial given more epochs than the budget, so its figures say what
    # the budget leaves on the table.
    "fine_epochs_x1.5": lambda c: {f"stages.{_fine(c)}.epochs": round(1.5 * c.stages[_fine(c)].epochs)},
}


def _fine(config: ml_collections.ConfigDict) -> str:
    """The name of the recipe's second (fine-tuning) stage."""
    from flowers_jax import config as config_lib

    return config_lib.stages(config)[1][0]


def trial_changes(base: ml_collections.ConfigDict, name: str) -> Changes:
    """The fields trial `name` changes in `base` (a recipe at its epoch budget), with their values."""
    changes = TRIALS[name]
    return dict(changes(base) if callable(changes) else changes)


def trial_config(base: ml_collections.ConfigDict, name: str, tfrecords: str, epochs: tuple[int, int]):
    """A copy of `base` with trial `name`'s changes, the records and the epoch budget (head, fine)."""
    from benchmarks.oxford102 import with_budget

    config = with_budget(base, tfrecords, *epochs)
    config.lock()  # a misspelt key is an error, not a new field
    try:
        config.update_from_flattened_dict(trial_changes(config, name))
    except (KeyError, TypeError) as e:
        raise ValueError(f"trial {name!r}: {e}") from None
    return config


def _uncalibrated(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` reading probabilities at T = 1 even where the workdir holds a calibration.json."""
    config = config.copy_and_resolve_references()
    config.eval.calibration = "off"
    return config


def refuse_other_settings(config: ml_collections.ConfigDict, workdir: str) -> None:
    """A trial's folder that holds a run of other settings (another budget, an edited trial) is
    refused, naming the fields: training would resume or reuse it as if it were this trial."""
    from flax import traverse_util

    from flowers_jax import checkpoint

    try:
        manager, step = checkpoint.find(workdir, "latest")
    except checkpoint.CheckpointError:
        return  # nothing trained there yet
    saved = traverse_util.flatten_dict(json.loads(checkpoint.restore_meta(manager, step)["config"]), sep=".")
    wanted = traverse_util.flatten_dict(json.loads(config.to_json()), sep=".")
    differ = sorted(k for k in saved.keys() | wanted.keys() if k != "data.data_dir" and saved.get(k) != wanted.get(k))
    if differ:
        shown = ", ".join(f"{k}: {saved.get(k)!r} there, {wanted.get(k)!r} here" for k in differ[:6])
        raise SystemExit(f"{workdir} holds a run of other settings ({shown}); use another --workdir or remove it")


def run_trial(config, workdir: str) -> dict:
    """Trains (or resumes, or finds finished) `config` in `workdir`; returns its val figures: at the
    training size, and at the test-time size val chooses for it (as every run's model is used), since
    a trial that changes the training size is otherwise read at another size than the baseline."""
    from flowers_jax import chosen_size, evaluation, logs, train

    start = time.perf_counter()
    train.train_and_evaluate(config, workdir)
    config = _uncalibrated(config)
    val = evaluation.run_eval(config, workdir, "best", "val")
    size, by_size = evaluation.choose_test_size(
        config, workdir, "best", sizes=chosen_size.candidates(config.data.image_size)
    )
    epochs = [r for r in logs.read_metrics(workdir) if r["split"] == "val" and "train_seconds" in r]
    keep = ("accuracy", "macro_f1", "ece", "nll", "checkpoint_step", "intervals")
    return {
        "val": {k: val[k] for k in keep},
        "val_at_test_size": {"image_size": size, "accuracy": by_size[size], "candidates": by_size},
        "epochs": len(epochs),
        "seconds_this_call": time.perf_counter() - start,
    }


def _eval_file(config: ml_collections.ConfigDict, workdir: str, split: str, size: int, filename: str) -> str:
    """`filename` in the eval folder of the trial's best checkpoint on `split` at test-time `size`."""
    from flowers_jax import chosen_size, evaluation

    name = evaluation.split_dir_name(split, chosen_size.at_size(config, size), config.data.image_size)
    return os.path.join(workdir, "eval", "best", name, filename)


def val_correct(config: ml_collections.ConfigDict, workdir: str, size: int) -> dict[str, bool]:
    """{photo id: right?} of the trial in `workdir` on val at test-time `size` (its eval's predictions.csv)."""
    from flowers_jax import reports

    path = _eval_file(config, workdir, "val", size, "predictions.csv")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: rerun the trial in {workdir} (finished trials are only re-read)")
    return reports.read_predictions(path)


def paired_vs_baseline(trial: dict[str, bool], baseline: dict[str, bool]) -> dict:
    """The trial's val top-1 minus the baseline's on the same photos, with its paired interval."""
    from flowers_jax import reports

    if trial.keys() != baseline.keys():
        raise SystemExit(
            f"the trial and the baseline were read on different val photos ({len(trial)} and {len(baseline)}, "
            f"{len(trial.keys() ^ baseline.keys())} in one only): were they trained on the same --tfrecords?"
        )
    ids = sorted(baseline)
    return reports.paired_difference([trial[i] for i in ids], [baseline[i] for i in ids])


TEST_KEYS = ("accuracy", "macro_f1", "intervals", "image_size", "checkpoint_step")


def earlier_test(config: ml_collections.ConfigDict, workdir: str, result: dict) -> dict | None:
    """The test figures of the trial's checkpoint at its val-chosen size where a run read them before
    (the baseline's folder is the Results run's, whose test was read there), else None: shown, never
    read again."""
    if "val_at_test_size" not in result:
        return None  # a result from before the test-size figure
    path = _eval_file(config, workdir, "test", result["val_at_test_size"]["image_size"], "metrics.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        test = json.load(f)
    if test.get("checkpoint_step") != result["val"].get("checkpoint_step") or "intervals" not in test:
        return None  # another checkpoint's, or older than the intervals
    return {k: test[k] for k in TEST_KEYS} | {"read": "earlier"}


def _baseline_correct(args, base, epochs, result: dict | None) -> dict[str, bool] | None:
    """The baseline's val_correct, from its folder (this sitting's or an earlier one's); None, said,
    where there is none to compare with."""
    if not result or "val_at_test_size" not in result:
        print("no paired comparison with the baseline: no baseline measured at its test size", flush=True)
        return None
    config = trial_config(base, "baseline", args.tfrecords, epochs)
    try:
        return val_correct(config, os.path.join(args.workdir, "baseline"), result["val_at_test_size"]["image_size"])
    except FileNotFoundError as e:
        print(f"no paired comparison with the baseline: {e}", flush=True)
        return None


def table(results: dict[str, dict]) -> str:
    """The markdown table of `results` (name -> run_trial's dict with its "changes"), each top-1 beside
    the baseline's (blank where a result lacks a figure: a record measured before it existed)."""

    def top1(result: dict, key: str) -> float | None:
        return result.get(key, {}).get("accuracy")

    def vs_baseline(result: dict, key: str) -> str:
        here, there = top1(result, key), top1(results.get("baseline", {}), key)
        if None in (here, there):
            return ""
        text = f"{100 * (here - there):+.2f} pts"
        if key == "val_at_test_size" and "val_paired_vs_baseline" in result:
            low, high = result["val_paired_vs_baseline"]["interval"]
            text += f" [{100 * low:+.2f}, {100 * high:+.2f}]"
        return text

    rows = [
        "| trial | changes | val top-1 | vs baseline | val top-1 at val's test size | vs baseline [paired 95%] "
        "| val macro-F1 "
        "| val ECE (T = 1) | val NLL (T = 1) | epochs | test top-1 at val's size [95%] | measured |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        v, sized = r["val"], r.get("val_at_test_size")
        spelled = ", ".join(f"`{k}={x}`" for k, x in r["changes"].items()) or "(the recipe)"
        at_size = f"{sized['accuracy']:.4f} at {sized['image_size']}" if sized else ""
        rows.append(
            f"| {name} | {spelled} | {v['accuracy']:.4f} | {vs_baseline(r, 'val')} | {at_size} | "
            f"{vs_baseline(r, 'val_at_test_size')} | {v['macro_f1']:.4f} | {v['ece']:.4f} | {v['nll']:.4f} | "
            f"{r['epochs']} | {_test(r)} | {_measured(r)} |"
        )
    return "\n".join(rows)


def _test(result: dict) -> str:
    """'0.9402 at 288 [0.9299, 0.9500]' where test was read for the trial, else 'not read'."""
    if "test" not in result:
        return "not read"
    t = result["test"]
    low, high = t["intervals"]["accuracy"]
    return f"{t['accuracy']:.4f} at {t['image_size']} [{low:.4f}, {high:.4f}]"


def _measured(result: dict) -> str:
    """'2026-12-07, `abc1234`, 2 CPU cores (...)' from a result's provenance ('' where it has none)."""
    where = result.get("provenance")
    return f"{where['date']}, `{where['commit']}`, {machine.describe(where['machine'])}" if where else ""


def provenance() -> dict:
    """When, at which commit (with "+changes" for a tree that differs from it) and on what it was measured."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", root, *args], capture_output=True, text=True)

    try:
        head = git("rev-parse", "--short", "HEAD")
        commit = head.stdout.strip() if head.returncode == 0 else "unknown"
        if commit != "unknown" and git("diff", "--quiet", "HEAD", "--", ".").returncode != 0:
            commit += "+changes"
    except OSError:  # no git
        commit = "unknown"
    return {"date": time.strftime("%Y-%m-%d"), "commit": commit, "machine": machine.cpu()}


def load_record(path: str, model: str, epochs: tuple[int, int], changes: dict[str, Changes]) -> dict[str, dict]:
    """The trials `path` holds (name -> result), {} when it does not exist. A record of another model or
    budget, or of a trial whose changes differ from `changes` (TRIALS was edited since), is refused."""
    if not path or not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            record = json.load(f)
        held, trials = (record["model"], list(record["epochs"])), record["trials"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"--record {path}: not a trials record ({e}); move it aside or name another file") from None
    if held != (model, list(epochs)):
        raise SystemExit(
            f"--record {path} holds {held[0]} trials at {held[1]} epochs (head, fine), not {model} at "
            f"{list(epochs)}: their figures would not compare; name another file"
        )
    for name, result in trials.items():
        if name in changes and result.get("changes") != changes[name]:
            raise SystemExit(
                f"--record {path}: trial {name!r} was measured with {result.get('changes')}, TRIALS now says "
                f"{changes[name]}; rerun it with --trials {name} into a new record, or remove it from {path}"
            )
    return trials


def save_record(path: str, model: str, epochs: tuple[int, int], trials: dict[str, dict]) -> None:
    """Writes the record whole, through a temporary file: a run stopped mid-write leaves the old one."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({"model": model, "epochs": list(epochs), "trials": trials}, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from benchmarks import oxford102

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(oxford102.MODELS), default="lite0")
    parser.add_argument("--tfrecords", default="/tmp/oxford102_tfrec")
    parser.add_argument("--workdir", default="", help="default workdirs/trials_<model>")
    parser.add_argument("--trials", default=",".join(TRIALS), help=f"comma-separated, of: {', '.join(TRIALS)}")
    parser.add_argument("--epochs-head", type=int, default=8)
    parser.add_argument("--epochs-fine", type=int, default=25)
    parser.add_argument("--test", default="", help="read test once for this trial (the one val chose)")
    parser.add_argument("--record", default="", help="a JSON file that keeps every trial's val figures across runs")
    args = parser.parse_args(argv)
    args.workdir = args.workdir or os.path.join("workdirs", f"trials_{args.model}")
    args.trials = [t for t in args.trials.split(",") if t]
    unknown = [t for t in args.trials + ([args.test] if args.test else []) if t not in TRIALS]
    if unknown:
        parser.error(f"unknown trial(s) {', '.join(unknown)}; the trials are: {', '.join(TRIALS)}")
    if args.test and args.test not in args.trials:
        parser.error(f"--test {args.test}: that trial must be run (and tabled) too: add it to --trials")
    return args


def main() -> None:
    args = parse_args()
    from benchmarks import oxford102
    from flowers_jax import chosen_size, evaluation

    base = oxford102.recipe_config(args.model)
    epochs = (args.epochs_head, args.epochs_fine)
    budgeted = oxford102.with_budget(base, args.tfrecords, *epochs)
    changes = {n: trial_changes(budgeted, n) for n in args.trials}
    configs = {n: trial_config(base, n, args.tfrecords, epochs) for n in args.trials}  # all checked first
    for name, config in configs.items():
        refuse_other_settings(config, os.path.join(args.workdir, name))
    recorded = load_record(args.record, base.model, epochs, changes)
    results = {}
    for name, config in configs.items():
        print(f"\n=== trial {name}: {changes[name] or 'the recipe'}", flush=True)
        results[name] = run_trial(config, os.path.join(args.workdir, name)) | {
            "changes": changes[name],
            "provenance": provenance(),
        }
        if earlier := earlier_test(config, os.path.join(args.workdir, name), results[name]):
            results[name]["test"] = earlier
        if args.record:  # kept as soon as it is measured: a stopped session loses only the trial under way
            recorded[name] = results[name]
            save_record(args.record, base.model, epochs, recorded)
    if results:  # each trial against the baseline on the same val photos, both at val's test size
        baseline = _baseline_correct(args, base, epochs, (results | recorded).get("baseline"))
        for name in [n for n in results if n != "baseline"] if baseline else []:
            size = results[name]["val_at_test_size"]["image_size"]
            trial = val_correct(configs[name], os.path.join(args.workdir, name), size)
            results[name]["val_paired_vs_baseline"] = paired_vs_baseline(trial, baseline)
        if args.record and baseline:
            recorded |= results
            save_record(args.record, base.model, epochs, recorded)
    if args.test and "test" in results[args.test]:  # once per checkpoint and size: shown, not read again
        print(f"test was read for {args.test} before (top-1 {results[args.test]['test']['accuracy']:.4f}); not again")
    elif args.test:  # as benchmarks/oxford102.py: test is read once, at the size val chose (run_trial)
        config, workdir = _uncalibrated(configs[args.test]), os.path.join(args.workdir, args.test)
        size = results[args.test]["val_at_test_size"]["image_size"]
        test = evaluation.run_eval(chosen_size.at_size(config, size), workdir, "best", "test")
        results[args.test]["test"] = {k: test[k] for k in TEST_KEYS} | {"read": "this run"}
        print(f"test, read once for {args.test} at {size} px (val's choice): top-1 {test['accuracy']:.4f}")
        if args.record:
            recorded[args.test] = results[args.test]
            save_record(args.record, base.model, epochs, recorded)
    shown = {n: (results | recorded)[n] for n in TRIALS if n in results or n in recorded}
    name = oxford102.MODELS[args.model][1]
    print(f"\n{name}, {epochs[0]} head + {epochs[1]} fine epochs, {machine.describe()}; test read once, if at all:")
    print(table(shown))
    os.makedirs(args.workdir, exist_ok=True)
    with open(os.path.join(args.workdir, "trials.json"), "w") as f:
        json.dump(
            {"model": base.model, "epochs": epochs, "trials": results, "machine": machine.cpu()},
            f,
            indent=2,
        )


if __name__ == "__main__":
    hugepages.restart_with_huge_pages()  # as `python -m flowers_jax.main` runs
    main()
