"""Oxford-102 fine-tune of EfficientNet-Lite0: our staged recipe against the earlier Keras recipe.

One run, this machine, the same converted photos and the same ported ImageNet weights:
  1. converts ../shared/data/oxford102 at 224 (skipped when the TFRecords are there);
  2. ours: configs/oxford102.py through `train_and_evaluate` (train split; val picks the best
     checkpoint and stops stages early), then the best checkpoint on the 2,040 test photos;
  3. the Keras recipe (benchmarks/keras_recipe.py) in a subprocess on the Keras twin;
  4. prints both with wall seconds per epoch, the Keras recipe's full configuration beside its
     result, writes <workdir>/results.json, and copies the curves and confusion matrix to --figures.

  python benchmarks/oxford102.py [--photos ../shared/data/oxford102] [--tfrecords /tmp/oxford102_tfrec]
      [--workdir workdirs/oxford102] [--epochs-head 8 --epochs-fine 12] [--figures docs/results]

Both recipes get the same epoch budget per phase: --epochs-head for the head on the frozen
backbone, --epochs-fine for the last blocks / last 20 layers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)  # configs/ is a package at the repository root


def convert(photos: str, tfrecords: str, size: int) -> None:
    if os.path.isdir(os.path.join(tfrecords, f"tfrecords-jpeg-{size}x{size}")):
        print(f"using the TFRecords in {tfrecords}", flush=True)
        return
    cmd = [sys.executable, "-m", "flowers_jax.data.convert", "oxford102", "--input", photos, "--output", tfrecords]
    subprocess.run(cmd + ["--sizes", str(size)], check=True)


def run_ours(tfrecords: str, workdir: str, epochs_head: int, epochs_fine: int) -> dict:
    from configs import oxford102
    from flowers_jax import evaluation, logs, train

    config = oxford102.get_config()
    config.data.data_dir = tfrecords
    config.stages.head.epochs = epochs_head
    config.stages.top.epochs = epochs_fine
    start = time.perf_counter()
    train.train_and_evaluate(config, workdir)
    train_wall = time.perf_counter() - start
    test = evaluation.run_eval(config, workdir, "best", "test")
    epochs = [r for r in logs.read_metrics(workdir) if r["split"] == "val" and "train_seconds" in r]
    return {
        "config": json.loads(config.to_json()),
        "epochs": [
            {k: r[k] for k in ("stage", "epoch", "accuracy", "macro_f1", "train_seconds", "val_seconds")}
            for r in epochs
        ],
        "wall_seconds": train_wall,
        "test": test,
    }


def run_keras(tfrecords: str, workdir: str, epochs_head: int, epochs_fine: int) -> dict:
    out = os.path.join(workdir, "keras_recipe.json")
    cmd = [sys.executable, os.path.join(HERE, "keras_recipe.py"), "--data-dir", tfrecords, "--out", out]
    cmd += ["--epochs-head", str(epochs_head), "--epochs-fine", str(epochs_fine)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"})
    with open(out) as f:
        result = json.load(f)
    result["wall_seconds"] = time.perf_counter() - start
    return result


def _row(name: str, test: dict, epoch_seconds: list[float], epochs: int) -> str:
    return (
        f"{name:<28}{test['accuracy']:>8.4f}{test['top5_accuracy']:>8.4f}{test['macro_f1']:>10.4f}"
        f"{epochs:>8d}{float(np.median(epoch_seconds)):>12.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", default=os.path.join(ROOT, "..", "shared", "data", "oxford102"))
    parser.add_argument("--tfrecords", default="/tmp/oxford102_tfrec")
    parser.add_argument("--workdir", default="workdirs/oxford102")
    parser.add_argument("--epochs-head", type=int, default=8)
    parser.add_argument("--epochs-fine", type=int, default=12)
    parser.add_argument("--figures", default=os.path.join(ROOT, "docs", "results"), help="'' to skip copying")
    parser.add_argument("--skip-keras", action="store_true")
    args = parser.parse_args()
    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)

    convert(args.photos, args.tfrecords, 224)
    ours = run_ours(args.tfrecords, os.path.join(workdir, "flax"), args.epochs_head, args.epochs_fine)
    keras = None if args.skip_keras else run_keras(args.tfrecords, workdir, args.epochs_head, args.epochs_fine)

    import jax

    print(
        f"\nOxford-102, EfficientNet-Lite0 at 224, {time.strftime('%Y-%m-%d')}, {jax.device_count()} x "
        f"{jax.devices()[0].device_kind}, {os.cpu_count()} CPU cores; test = {ours['test']['examples']} photos"
    )
    print(f"{'recipe':<28}{'top-1':>8}{'top-5':>8}{'macro-F1':>10}{'epochs':>8}{'s/epoch':>12}")
    ours_seconds = [e["train_seconds"] + e["val_seconds"] for e in ours["epochs"]]
    print(_row("ours (staged, Flax)", ours["test"], ours_seconds, len(ours["epochs"])))
    if keras:
        keras_seconds = [s for p in keras["phases"] for s in p["epoch_seconds"]]
        print(_row("Keras recipe (model.fit)", keras["test"], keras_seconds, len(keras_seconds)))
        print("Keras recipe configuration:")
        for k, v in keras["recipe"].items():
            print(f"  {k}: {v}")
    print("s/epoch: median wall seconds of an epoch, its training and its validation pass (the first compiles)")
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump({"ours": ours, "keras": keras, "date": time.strftime("%Y-%m-%d")}, f, indent=2)

    if args.figures:
        os.makedirs(args.figures, exist_ok=True)
        flax_dir = os.path.join(workdir, "flax")
        for src, dst in (
            (os.path.join(flax_dir, "training_curves.png"), "oxford102_training_curves.png"),
            (os.path.join(flax_dir, "eval", "best", "test", "confusion_matrix.png"), "oxford102_confusion_matrix.png"),
        ):
            shutil.copyfile(src, os.path.join(args.figures, dst))
        print(f"figures in {args.figures}")


if __name__ == "__main__":
    main()
