"""Train-step time of our jit-over-mesh step against a `jax.pmap` version of the same step.

Both run the same `flowers_jax.steps.make_train_step` (the pmap one with
gradients pmean-ed and BatchNorm statistics synchronised over the mapped axis,
so both compute global-batch BatchNorm), on 8 simulated CPU devices, in one run.

  python benchmarks/train_step.py [--model efficientnet_lite0 --batch 32 --size 128 --steps 10]
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse

import jax
import numpy as np

from benchmarks import common, machine
from flowers_jax import distributed, hugepages


def _time(step, state, batch, n: int) -> float:
    """Median seconds per step after one compile+warm-up step."""
    holder = [state]

    def one():
        holder[0], m = step(holder[0], batch)
        jax.block_until_ready(m)

    return common.median_seconds(one, min_reps=n, min_seconds=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--batch", type=int, default=32, help="global batch")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    n = jax.device_count()
    images, labels = common.random_batch(args.batch, args.size)

    # Ours: jit over a 1-D mesh, batch sharded on "data", state replicated.
    step, state = common.train_step_and_state(args.model, size=args.size)
    mesh = distributed.make_mesh()
    repl, sharded = distributed.replicated(mesh), distributed.batch_sharded(mesh)
    jit_step = jax.jit(step, in_shardings=(repl, sharded), out_shardings=(repl, repl), donate_argnums=0)
    batch = jax.device_put({"image": images, "label": labels}, sharded)
    t_jit = _time(jit_step, jax.device_put(state, repl), batch, args.steps)

    # Peer: jax.pmap over the same devices, per-device batch, replicated state stacked on axis 0.
    step_p, state_p = common.train_step_and_state(args.model, size=args.size, axis_name="batch")
    pmap_step = jax.pmap(step_p, axis_name="batch", donate_argnums=0)
    stacked = jax.tree.map(lambda x: np.stack([np.asarray(x)] * n), state_p)
    per_device = {"image": images.reshape(n, -1, *images.shape[1:]), "label": labels.reshape(n, -1)}
    t_pmap = _time(pmap_step, stacked, per_device, args.steps)

    print(
        f"train step, {args.model}, global batch {args.batch} at {args.size}x{args.size}, {n} x "
        f"{jax.devices()[0].device_kind}, {machine.describe()}, median of {args.steps} steps"
    )
    print(f"{'jit over mesh':<16}{t_jit * 1000:>10.1f} ms/step {args.batch / t_jit:>8.1f} img/s")
    print(f"{'pmap':<16}{t_pmap * 1000:>10.1f} ms/step {args.batch / t_pmap:>8.1f} img/s")
    print(f"jit/pmap speed ratio: {t_pmap / t_jit:.3f} (>= 1.0: ours no slower)")


if __name__ == "__main__":
    hugepages.restart_with_huge_pages()  # as `python -m flowers_jax.main` runs
    main()
