"""Forward (inference) images/s of our Flax models against the same Keras model's `predict`.

Same architecture, same batch (32 random images at 224), same machine, one run.
Keras is measured in a subprocess per backend (a process has one Keras backend).

  python benchmarks/forward.py                      # B0, Lite0, MobileNetV2; Keras on TF and JAX
  python benchmarks/forward.py --models efficientnet_b0 --keras-backends tensorflow

Lite0 has no keras.applications twin; it is compared with B0's Keras figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from benchmarks import common, machine
from flowers_jax import hugepages

KERAS_TWIN = {"efficientnet_b0": "EfficientNetB0", "mobilenet_v2": "MobileNetV2", "efficientnet_lite0": None}


def flax_images_per_s(name: str, batch: int, size: int) -> float:
    import jax

    from flowers_jax import models

    model = models.create(name, 1000)
    x = jax.device_put(common.random_batch(batch, size)[0])
    variables = jax.jit(model.init)(jax.random.key(0), x[:1])
    forward = jax.jit(model.apply)
    return batch / common.median_seconds(lambda: forward(variables, x).block_until_ready())


def keras_images_per_s(keras_name: str, batch: int, size: int) -> float:
    import keras

    model = getattr(keras.applications, keras_name)(weights=None, input_shape=(size, size, 3))
    x = common.random_batch(batch, size)[0]
    return batch / common.median_seconds(lambda: model.predict(x, batch_size=batch, verbose=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="efficientnet_b0,efficientnet_lite0,mobilenet_v2")
    parser.add_argument("--keras-backends", default="tensorflow,jax")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--_keras", help=argparse.SUPPRESS)  # internal: run one Keras measurement
    args = parser.parse_args()
    if args._keras:
        print(json.dumps(keras_images_per_s(args._keras, args.batch, args.size)))
        return

    keras_results: dict[tuple[str, str], float] = {}
    for backend in args.keras_backends.split(","):
        for keras_name in sorted({KERAS_TWIN[m] or "EfficientNetB0" for m in args.models.split(",")}):
            out = subprocess.run(
                [sys.executable, __file__, "--_keras", keras_name, f"--batch={args.batch}", f"--size={args.size}"],
                env=common.keras_env(backend),
                capture_output=True,
                text=True,
                check=True,
            )
            keras_results[(keras_name, backend)] = json.loads(out.stdout.strip().splitlines()[-1])

    import jax

    print(
        f"forward images/s, batch {args.batch} at {args.size}x{args.size}, {jax.device_count()} x "
        f"{jax.devices()[0].device_kind}, {machine.describe()}"
    )
    header = f"{'model':<20}{'flax':>10}" + "".join(
        f"{'keras-' + b:>18}{'ratio':>8}" for b in args.keras_backends.split(",")
    )
    print(header)
    for name in args.models.split(","):
        ours = flax_images_per_s(name, args.batch, args.size)
        keras_name = KERAS_TWIN[name] or "EfficientNetB0"
        row = f"{name:<20}{ours:>10.1f}"
        for backend in args.keras_backends.split(","):
            theirs = keras_results[(keras_name, backend)]
            label = f"{theirs:.1f}" + ("" if KERAS_TWIN[name] else " (B0)")
            row += f"{label:>18}{ours / theirs:>8.2f}"
        print(row, flush=True)


if __name__ == "__main__":
    hugepages.restart_with_huge_pages()  # as `python -m flowers_jax.main` runs
    main()
