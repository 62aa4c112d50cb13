"""Oxford-102 fine-tune of EfficientNet-Lite0 (or --model lite1 / lite2): our staged recipe against
the earlier Keras recipe, on the same model.

One run, this machine, the same converted photos and the same ported ImageNet weights:
  1. converts ../shared/data/oxford102 at the recipe's stored size, 224 (skipped when the TFRecords
     are there);
  2. ours: the model's config (lite0: configs/oxford102.py, lite1: configs/oxford102_lite1.py, lite2:
     configs/oxford102_lite2.py) through `train_and_evaluate` (train split; val picks the best
     checkpoint and stops stages early); then val picks the test-time image size among
     --test-sizes (the 224 photos scaled up: a model trained on random-resized crops sees flowers
     larger than a whole 224 photo shows them, FixRes, Touvron et al. 2019), and the best
     checkpoint is reported on the 2,040 test photos at 224 and at that size;
  3. the Keras recipe (benchmarks/keras_recipe.py) in a subprocess on the Keras twin of the same
     model with the same ported weights, reading the same stored records, at the model's native size
     (Lite0 224, Lite1 240, Lite2 260);
  4. prints both with wall seconds per epoch, the Keras recipe's full configuration beside its
     result, writes <workdir>/results.json, and copies the curves and confusion matrix to --figures.

  python benchmarks/oxford102.py [--model lite0|lite1|lite2] [--photos ../shared/data/oxford102]
      [--tfrecords /tmp/oxford102_tfrec] [--workdir workdirs/oxford102, workdirs/oxford102_<model>]
      [--epochs-head 8 --epochs-fine 25] [--test-sizes S,S+32,S+64] [--figures docs/results]

Each model has its own workdir (lite0: workdirs/oxford102, as before --model existed; the others
workdirs/oxford102_lite1, _lite2) and its own figure names (oxford102_*.png, oxford102_lite2_*.png).

Both recipes get the same epoch budget per phase: --epochs-head for the head on the frozen
backbone, --epochs-fine for the blocks / the last 20 layers (each recipe may stop it early).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

from benchmarks import machine
from flowers_jax import hugepages

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# --model -> (its config in configs/, the name printed)
MODELS = {
    "lite0": ("oxford102", "EfficientNet-Lite0"),
    "lite1": ("oxford102_lite1", "EfficientNet-Lite1"),
    "lite2": ("oxford102_lite2", "EfficientNet-Lite2"),
}


def recipe_config(model: str):
    """Our recipe for --model `model`: its config from configs/."""
    return importlib.import_module(f"configs.{MODELS[model][0]}").get_config()


def output_name(model: str) -> str:
    """The name of `model`'s workdir and figures: oxford102 for Lite0 (as before --model), else oxford102_<model>."""
    return "oxford102" if model == "lite0" else f"oxford102_{model}"


def with_budget(config, tfrecords: str, epochs_head: int, epochs_fine: int):
    """A copy of a recipe `config` reading `tfrecords`, with its head and fine-tuning stages' epochs set."""
    from flowers_jax import config as config_lib

    config = config.copy_and_resolve_references()
    config.data.data_dir = tfrecords
    (_, head), (_, fine) = config_lib.stages(config)
    head.epochs, fine.epochs = epochs_head, epochs_fine
    return config


def recipe_epochs(config) -> tuple[int, ...]:
    """(head, fine-tuning) epochs of a recipe `config`: its stages', in run order."""
    from flowers_jax import config as config_lib

    return tuple(stage.epochs for _, stage in config_lib.stages(config))


KERAS_EPOCHS = (8, 25)  # the notebook recipe's phases (each early-stopped), whatever our recipe's length


def budgets(args: argparse.Namespace, config) -> tuple[list[int], list[int]]:
    """([head, fine] epochs for ours, the same for the Keras recipe): --epochs-head/--epochs-fine
    where given (both get them), else each recipe's own."""
    given = (args.epochs_head, args.epochs_fine)
    ours = [g if g is not None else r for g, r in zip(given, recipe_epochs(config), strict=True)]
    return ours, [g if g is not None else k for g, k in zip(given, KERAS_EPOCHS, strict=True)]


def convert(photos: str, tfrecords: str, size: int) -> None:
    if os.path.isdir(os.path.join(tfrecords, f"tfrecords-jpeg-{size}x{size}")):
        print(f"using the TFRecords in {tfrecords}", flush=True)
        return
    cmd = [sys.executable, "-m", "flowers_jax.data.convert", "oxford102", "--input", photos, "--output", tfrecords]
    subprocess.run(cmd + ["--sizes", str(size)], check=True)


def run_ours(
    config,
    tfrecords: str,
    workdir: str,
    epochs_head: int,
    epochs_fine: int,
    test_sizes: list[int] | None,
    photos: str,
) -> dict:
    from flowers_jax import chosen_size, evaluation, logs, page_eval, train

    config = with_budget(config, tfrecords, epochs_head, epochs_fine)
    start = time.perf_counter()
    train.train_and_evaluate(config, workdir)
    train_wall = time.perf_counter() - start
    test_at_train_size = evaluation.run_eval(config, workdir, "best", "test")
    train_size = config.data.image_size
    # Val chooses the test-time size and W/test_size.json records it (the exporter and the page-fed eval read it).
    sizes = test_sizes or chosen_size.candidates(train_size)
    size, val_by_size = evaluation.choose_test_size(config, workdir, "best", sizes=sizes)
    # The test photos' original JPEGs fed as the web page feeds them, at that size: what a person gets.
    page_test = page_eval.run_page_eval(config, workdir, photos, "best", "test")
    # Last, so that <workdir>/eval/best/test holds the reports (confusion matrix) of the figure reported.
    test = evaluation.run_eval(chosen_size.at_size(config, size), workdir, "best", "test")
    epochs = [r for r in logs.read_metrics(workdir) if r["split"] == "val" and "train_seconds" in r]
    return {
        "config": json.loads(config.to_json()),
        "epochs": [
            {k: r[k] for k in ("stage", "epoch", "accuracy", "macro_f1", "train_seconds", "val_seconds")}
            for r in epochs
        ],
        "wall_seconds": train_wall,
        "test_size": size,
        "val_accuracy_by_test_size": val_by_size,
        "test_at_train_size": test_at_train_size,
        "test": test,
        "page_fed_test": page_test,
    }


def keras_command(config, tfrecords: str, out: str, epochs_head: int, epochs_fine: int) -> list[str]:
    """The Keras recipe on the twin of `config`'s model, reading the records our run reads (the network
    input left at keras_recipe's default, the model's native size)."""
    from flowers_jax.data import layout

    cmd = [sys.executable, os.path.join(HERE, "keras_recipe.py"), "--data-dir", tfrecords, "--out", out]
    cmd += ["--model", config.model, "--tfrecord-size", str(layout.tfrecord_size(config))]
    return cmd + ["--epochs-head", str(epochs_head), "--epochs-fine", str(epochs_fine)]


def run_keras(config, tfrecords: str, workdir: str, epochs_head: int, epochs_fine: int) -> dict:
    out = os.path.join(workdir, "keras_recipe.json")
    cmd = keras_command(config, tfrecords, out, epochs_head, epochs_fine)
    from benchmarks import common

    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=common.keras_env())
    with open(out) as f:
        result = json.load(f)
    result["wall_seconds"] = time.perf_counter() - start
    return result


def _row(name: str, test: dict, epoch_seconds: list[float], epochs: int) -> str:
    ci = test.get("intervals")  # 95% bootstrap intervals (absent from a Keras report written before they were added)
    spans = [f"[{ci[k][0]:.4f}, {ci[k][1]:.4f}]" if ci else "" for k in ("accuracy", "macro_f1")]
    return (
        f"{name:<28}{test['accuracy']:>8.4f} {spans[0]:<18}{test['top5_accuracy']:>8.4f}{test['macro_f1']:>10.4f} "
        f"{spans[1]:<18}{epochs:>8d}{float(np.median(epoch_seconds)):>12.1f}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="lite0", help="which recipe config and twin")
    parser.add_argument("--photos", default=os.path.join(ROOT, "..", "shared", "data", "oxford102"))
    parser.add_argument("--tfrecords", default="/tmp/oxford102_tfrec")
    parser.add_argument("--workdir", default="", help="default workdirs/oxford102 (lite0), workdirs/oxford102_<model>")
    budget = "default: the recipe config's for ours, 8 / 25 for the Keras recipe; given, both get it"
    parser.add_argument("--epochs-head", type=int, default=None, help=f"head-stage epochs ({budget})")
    parser.add_argument("--epochs-fine", type=int, default=None, help=f"fine-tuning epochs ({budget})")
    parser.add_argument("--test-sizes", default="", help="test-time sizes val chooses from; default S,S+32,S+64")
    parser.add_argument("--figures", default=os.path.join(ROOT, "docs", "results"), help="'' to skip copying")
    parser.add_argument("--skip-keras", action="store_true")
    args = parser.parse_args(argv)
    args.workdir = args.workdir or os.path.join("workdirs", output_name(args.model))
    return args


def main() -> None:
    args = parse_args()
    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)

    from flowers_jax.data import layout

    config = recipe_config(args.model)
    convert(args.photos, args.tfrecords, layout.tfrecord_size(config))  # the size the recipe reads its records at
    test_sizes = [int(s) for s in args.test_sizes.split(",")] if args.test_sizes else None
    epochs, keras_epochs = budgets(args, config)
    ours = run_ours(config, args.tfrecords, os.path.join(workdir, "flax"), *epochs, test_sizes, args.photos)
    keras = None if args.skip_keras else run_keras(config, args.tfrecords, workdir, *keras_epochs)

    import jax

    data = ours["config"]["data"]
    print(
        f"\nOxford-102, {MODELS[args.model][1]}, records at {data['tfrecord_size'] or data['image_size']} px, ours "
        f"trained at {data['image_size']}, {time.strftime('%Y-%m-%d')}, {jax.device_count()} x "
        f"{jax.devices()[0].device_kind}, {machine.describe()}; test = {ours['test']['examples']} photos"
    )
    print(
        f"{'recipe':<28}{'top-1':>8} {'95% interval':<18}{'top-5':>8}{'macro-F1':>10} {'95% interval':<18}"
        f"{'epochs':>8}{'s/epoch':>12}"
    )
    ours_seconds = [e["train_seconds"] + e["val_seconds"] for e in ours["epochs"]]
    print(_row(f"ours, test at {data['image_size']}", ours["test_at_train_size"], ours_seconds, len(ours["epochs"])))
    print(_row(f"ours, test at {ours['test_size']} (val's)", ours["test"], ours_seconds, len(ours["epochs"])))
    print(_row("  same, page-fed photos", ours["page_fed_test"], ours_seconds, len(ours["epochs"])))
    if keras:
        keras_seconds = [s for p in keras["phases"] for s in p["epoch_seconds"]]
        print(_row("Keras recipe (model.fit)", keras["test"], keras_seconds, len(keras_seconds)))
        print("Keras recipe configuration:")
        for k, v in keras["recipe"].items():
            print(f"  {k}: {v}")
    print(
        "ours: val accuracy by test-time size "
        + ", ".join(f"{k}: {v:.4f}" for k, v in ours["val_accuracy_by_test_size"].items())
        + f" -> {ours['test_size']}"
    )
    print("s/epoch: median wall seconds of an epoch, its training and its validation pass (the first compiles)")
    with open(os.path.join(workdir, "results.json"), "w") as f:
        results = {"model": config.model, "ours": ours, "keras": keras, "date": time.strftime("%Y-%m-%d")}
        results["machine"] = machine.cpu()
        json.dump(results, f, indent=2)

    if args.figures:
        os.makedirs(args.figures, exist_ok=True)
        flax_dir = os.path.join(workdir, "flax")
        from flowers_jax import evaluation
        from flowers_jax.chosen_size import at_size

        trained_size = ours["config"]["data"]["image_size"]
        test_dir = evaluation.split_dir_name("test", at_size(config, ours["test_size"]), trained_size)
        name = output_name(args.model)
        for src, dst in (
            (os.path.join(flax_dir, "training_curves.png"), f"{name}_training_curves.png"),
            (os.path.join(flax_dir, "eval", "best", test_dir, "confusion_matrix.png"), f"{name}_confusion_matrix.png"),
        ):
            shutil.copyfile(src, os.path.join(args.figures, dst))
        print(f"figures in {args.figures}")


if __name__ == "__main__":
    hugepages.restart_with_huge_pages()  # as `python -m flowers_jax.main` runs
    main()
