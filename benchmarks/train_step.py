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

import argparse  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from flowers_jax import distributed, models, optim  # noqa: E402
from flowers_jax.state import new_state  # noqa: E402
from flowers_jax.steps import make_train_step  # noqa: E402


def _time(step, state, batch, n: int) -> float:
    """Median seconds per step after one compile+warm-up step."""
    state, m = step(state, batch)
    jax.block_until_ready(m)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        state, m = step(state, batch)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--batch", type=int, default=32, help="global batch")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    n = jax.device_count()
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (args.batch, args.size, args.size, 3)).astype(np.float32)
    labels = rng.integers(0, 104, args.batch).astype(np.int32)
    stage = ml_collections.ConfigDict(
        dict(name="all", train="all", lr_scale="", lr=1e-3, warmup_epochs=0.0, end_lr_ratio=0.0, bn="train")
    )
    config = ml_collections.ConfigDict(
        dict(
            optimizer=dict(
                name="adamw",
                b1=0.9,
                b2=0.999,
                weight_decay=1e-5,
                weight_decay_exclude=r"(bias|scale)$",
                grad_clip_norm=1.0,
            )
        )
    )
    common = dict(update_batch_stats=True, label_smoothing=0.1, class_weights=jnp.ones(104), ema_decay=0.0)

    def setup(model):
        variables = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, args.size, args.size, 3)))
        groups = optim.param_groups(variables["params"], stage, models.get_arch(args.model))
        tx = optim.make_optimizer(config, stage, groups, steps=1000, steps_per_epoch=100)
        return new_state(variables, tx, seed=0, ema=False), tx

    # Ours: jit over a 1-D mesh, batch sharded on "data", state replicated.
    model = models.create(args.model, 104)
    state, tx = setup(model)
    mesh = distributed.make_mesh()
    repl, sharded = distributed.replicated(mesh), distributed.batch_sharded(mesh)
    jit_step = jax.jit(
        make_train_step(model, tx, **common), in_shardings=(repl, sharded), out_shardings=(repl, repl), donate_argnums=0
    )
    batch = jax.device_put({"image": images, "label": labels}, sharded)
    t_jit = _time(jit_step, jax.device_put(state, repl), batch, args.steps)

    # Peer: jax.pmap over the same devices, per-device batch, replicated state stacked on axis 0.
    model_p = models.create(args.model, 104, bn_axis_name="batch")
    state_p, tx_p = setup(model_p)
    pmap_step = jax.pmap(
        make_train_step(model_p, tx_p, axis_name="batch", **common), axis_name="batch", donate_argnums=0
    )
    stacked = jax.tree.map(lambda x: np.stack([np.asarray(x)] * n), state_p)
    per_device = {"image": images.reshape(n, -1, *images.shape[1:]), "label": labels.reshape(n, -1)}
    t_pmap = _time(pmap_step, stacked, per_device, args.steps)

    print(
        f"train step, {args.model}, global batch {args.batch} at {args.size}x{args.size}, {n} x "
        f"{jax.devices()[0].device_kind}, {os.cpu_count()} CPU cores, median of {args.steps} steps"
    )
    print(f"{'jit over mesh':<16}{t_jit * 1000:>10.1f} ms/step {args.batch / t_jit:>8.1f} img/s")
    print(f"{'pmap':<16}{t_pmap * 1000:>10.1f} ms/step {args.batch / t_pmap:>8.1f} img/s")
    print(f"jit/pmap speed ratio: {t_pmap / t_jit:.3f} (>= 1.0: ours no slower)")


if __name__ == "__main__":
    main()
