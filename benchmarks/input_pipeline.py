"""Training input pipeline images/s next to the training step's images/s, on this machine.

The pipeline is `flowers_jax.data`'s training stream at 224 px with the default augmentation
(random-resized crop decoded from the JPEG, flip, rotation + zoom, contrast), read from real
TFRecords: measured on the host (tf.data -> numpy) and as the training loop sees it
(`train_iterator`: global jax.Arrays on the devices, prefetched).

The step is the training loop's own (flowers_jax.steps.make_train_step with AdamW, label
smoothing, every parameter training and BatchNorm updating: the costliest stage) on a batch of 32
at 224. The pipeline must be at least 2x faster than the step, so that it is never the bottleneck.

The two are measured one after the other, each with the whole machine. Where the step also runs
on the CPU (as here) the two share the cores during training; on a TPU/GPU host they do not.

  python -m flowers_jax.data.convert oxford102 --input ../shared/data/oxford102 --output /tmp/oxford --sizes 224
  python benchmarks/input_pipeline.py --data-dir /tmp/oxford
  python benchmarks/input_pipeline.py --synthetic          # no data at hand: synthetic TFRecords at 224
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


import jax
import numpy as np

from benchmarks import common, machine
from flowers_jax import data, hugepages
from flowers_jax.data import fixtures, pipeline


def rate(next_batch, batch: int, *, warmup: int, min_seconds: float, min_batches: int) -> float:
    """Images/s of `next_batch()` after `warmup` calls, over >= min_batches calls and >= min_seconds."""
    for _ in range(warmup):
        next_batch()
    n, start = 0, time.perf_counter()
    while n < min_batches or time.perf_counter() - start < min_seconds:
        next_batch()
        n += 1
    return n * batch / (time.perf_counter() - start)


def pipeline_rates(config, seconds: float) -> tuple[float, float]:
    """(host tf.data images/s, train_iterator images/s with device placement)."""
    host = pipeline.train_dataset(config, local_batch=config.batch_size).as_numpy_iterator()
    host_rate = rate(lambda: next(host), config.batch_size, warmup=3, min_seconds=seconds, min_batches=10)
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    with data.train_iterator(config, mesh=mesh) as it:
        device_rate = rate(
            lambda: jax.block_until_ready(next(it)), config.batch_size, warmup=3, min_seconds=seconds, min_batches=10
        )
    return host_rate, device_rate


def step_rate(model_name: str, batch: int, size: int, seconds: float) -> float:
    """Images/s of our training step (flowers_jax.steps: every parameter trains, BatchNorm updating)."""
    one = common.step_runner(model_name, batch=batch, size=size)
    return rate(one, batch, warmup=2, min_seconds=seconds, min_batches=3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", help="data_dir holding tfrecords-jpeg-224x224/train (e.g. converted Oxford-102)")
    parser.add_argument("--synthetic", action="store_true", help="write synthetic TFRecords at 224 to a temp dir")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--seconds", type=float, default=20.0, help="minimum time per measurement")
    args = parser.parse_args()
    if bool(args.data_dir) == args.synthetic:
        parser.error("give --data-dir or --synthetic")
    with tempfile.TemporaryDirectory(prefix="input_pipeline_") as tmp:
        data_dir = args.data_dir
        if args.synthetic:
            data_dir = tmp
            fixtures.write_synthetic_dataset(
                data_dir, num_classes=104, image_size=args.size, train_per_class=4, val_per_class=0, test_examples=0
            )
        config = fixtures.data_only_config(data_dir, image_size=args.size, batch_size=args.batch)
        n_train = data.dataset_info(config).num_examples("train")  # scans once (cached) before timing
        host_rate, device_rate = pipeline_rates(config, args.seconds)
    train_rate = step_rate(args.model, args.batch, args.size, args.seconds)
    print(
        f"{jax.device_count()} x {jax.devices()[0].device_kind}, {machine.describe()}; "
        f"{n_train} training records at {args.size}x{args.size} ({'synthetic' if args.synthetic else data_dir}); "
        f"batch {args.batch}"
    )
    print(f"{'training pipeline (tf.data, host)':<46}{host_rate:>10.1f} images/s")
    print(f"{'training pipeline (train_iterator, on device)':<46}{device_rate:>10.1f} images/s")
    print(f"{'training step (' + args.model + ', train step)':<46}{train_rate:>10.1f} images/s")
    ratio = min(host_rate, device_rate) / train_rate
    print(f"pipeline / step: {ratio:.1f}x ({'OK' if ratio >= 2 else 'BELOW the 2x goal'})")


if __name__ == "__main__":
    hugepages.restart_with_huge_pages()  # as `python -m flowers_jax.main` runs
    main()
