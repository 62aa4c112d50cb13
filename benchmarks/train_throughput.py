"""Training images/s of our step against Keras `model.fit` on the same model and batch, this machine.

For each model: our jitted train step (flowers_jax.steps, AdamW, label smoothing, BatchNorm in
training mode) against `model.fit` of the Keras twin (flowers_jax.export.twin: the same
architecture table, built in Keras 3 on the TensorFlow backend) with AdamW, label smoothing and
the same batch of random images at 224. Keras runs in a subprocess (one backend per process).

Modes: "full" trains every parameter (BatchNorm updating), the costliest stage of a fine-tune;
"head" trains only the classifier on a frozen backbone (BatchNorm frozen: Keras's
`base.trainable = False`), the first stage of both recipes.

  python benchmarks/train_throughput.py [--models efficientnet_b0,efficientnet_lite0,mobilenet_v2]
      [--modes full,head] [--kernels auto,xla] [--batch 32] [--size 224] [--seconds 30]

Ours runs once per `--kernels` value (config.kernels, flowers_jax/models/kernels.py): "auto" is
what a run gets (on the CPU: the hand-written XLA:CPU layers), "xla" flax's nn.Conv / nn.BatchNorm,
so each table also records what the CPU layers are worth; Keras is measured once per model and mode.

Ours runs as `python -m flowers_jax.main` does, restarted with glibc's malloc on huge pages
(flowers_jax/hugepages.py); Keras runs with its defaults (--keras-huge-pages: with them too).

Each row ends with a fingerprint of our lowered step (StableHLO text, source locations dropped): two
runs, or two commits, whose rows share it ran the same computation, so a difference in their
images/s is the machine's, not the code's.

Differences that remain: our EfficientNets run dropout and stochastic depth in training (the
twin has neither: it is built for inference), which costs us a little.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys

from flowers_jax import hugepages

MODELS = "efficientnet_b0,efficientnet_lite0,mobilenet_v2"


def keras_images_per_s(model_name: str, mode: str, batch: int, size: int, seconds: float) -> float:
    """Images/s of `model.fit` on the twin: median over epochs of 4 batches, after one warm-up epoch."""
    import keras
    import numpy as np

    from benchmarks import common
    from flowers_jax.export import twin

    full = twin.build_twin(
        model_name, num_classes=common.NUM_CLASSES, image_size=size, mean=[127.5] * 3, std=[64.0] * 3
    )
    model = keras.Model(full.input, full.output["logits"])
    if mode == "head":
        for layer in model.layers:
            layer.trainable = layer.name == "predictions"
    model.compile(
        optimizer=keras.optimizers.AdamW(1e-3, weight_decay=1e-5, global_clipnorm=1.0),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1),
    )
    images, labels = common.random_batch(4 * batch, size)
    targets = np.eye(common.NUM_CLASSES, dtype=np.float32)[labels]
    seconds_per_epoch = common.median_seconds(
        lambda: model.fit(images, targets, batch_size=batch, epochs=1, verbose=0, shuffle=False),
        min_seconds=seconds,
    )
    return 4 * batch / seconds_per_epoch


def flax_images_per_s(model_name: str, mode: str, batch: int, size: int, seconds: float, kernels: str) -> float:
    from benchmarks import common

    train, bn = ("all", "train") if mode == "full" else ("head", "frozen")
    one = common.step_runner(model_name, batch=batch, size=size, train=train, bn=bn, kernels=kernels)
    return batch / common.median_seconds(one, min_seconds=seconds)


def step_fingerprint(model_name: str, mode: str, batch: int, size: int, kernels: str) -> str:
    """The first 12 hex digits of the SHA-256 of our jitted step's StableHLO for this model and mode,
    without source locations (they change with every edit of any file on the path)."""
    import jax

    from benchmarks import common

    train, bn = ("all", "train") if mode == "full" else ("head", "frozen")
    step, state = common.train_step_and_state(model_name, size=size, train=train, bn=bn, kernels=kernels)
    images, labels = common.random_batch(batch, size)
    text = jax.jit(step).lower(state, {"image": images, "label": labels}).as_text()
    lines = (re.sub(r"loc\([^)]*\)", "", line) for line in text.splitlines() if not line.startswith("#loc"))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:12]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--modes", default="full,head")
    parser.add_argument(
        "--kernels", default="auto,xla", help="config.kernels values to time ours with (auto, cpu, xla)"
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--seconds", type=float, default=30.0, help="minimum time per measurement")
    parser.add_argument(
        "--keras-huge-pages", action="store_true", help="run Keras with glibc huge pages too (flowers_jax/hugepages.py)"
    )
    parser.add_argument("--_keras", help=argparse.SUPPRESS)  # internal: "model:mode", one Keras measurement
    args = parser.parse_args()
    if args._keras:
        name, mode = args._keras.split(":")
        print(json.dumps(keras_images_per_s(name, mode, args.batch, args.size, args.seconds)))
        return

    import jax

    from benchmarks import machine

    print(
        f"training images/s, batch {args.batch} at {args.size}x{args.size}, {jax.device_count()} x "
        f"{jax.devices()[0].device_kind}, {machine.describe()}"
    )
    from benchmarks import common
    from flowers_jax import models

    kernel_choices = [k.strip() for k in args.kernels.split(",") if k.strip()]
    bad = [k for k in kernel_choices if k not in models.kernels.KERNELS]
    if bad or not kernel_choices:
        parser.error(f"--kernels: {bad or args.kernels!r} not among {models.kernels.KERNELS}")
    print(f"{'model':<20}{'mode':<6}{'kernels':<9}{'ours':>10}{'keras fit':>12}{'ratio':>8}  step")
    for name in args.models.split(","):
        for mode in args.modes.split(","):
            out = subprocess.run(
                [sys.executable, __file__, "--_keras", f"{name}:{mode}", f"--batch={args.batch}"]
                + [f"--size={args.size}", f"--seconds={args.seconds}"],
                env=common.keras_env(huge_pages=args.keras_huge_pages),
                capture_output=True,
                text=True,
            )
            if out.returncode:
                raise SystemExit(f"Keras measurement of {name} ({mode}) failed:\n{out.stderr[-3000:]}")
            theirs = json.loads(out.stdout.strip().splitlines()[-1])
            for kernels in kernel_choices:
                ours = flax_images_per_s(name, mode, args.batch, args.size, args.seconds, kernels)
                sha = step_fingerprint(name, mode, args.batch, args.size, kernels)
                row = f"{name:<20}{mode:<6}{kernels:<9}{ours:>10.2f}{theirs:>12.2f}{ours / theirs:>8.2f}  {sha}"
                print(row, flush=True)


if __name__ == "__main__":
    hugepages.restart_with_huge_pages()  # as `python -m flowers_jax.main` runs
    main()
