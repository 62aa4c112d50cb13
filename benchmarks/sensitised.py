"""Stand-in variables that make an export check able to fail: the export tests' witness network, and
the benchmarks' weights where the values do not matter (latency, the page's screenshots).

A freshly initialised network is a poor witness: its logits are ~1e-14 (any absolute
tolerance passes a wrong export), BatchNorm at mean 0 / variance 1 is almost the identity
(a swapped gamma/beta or wrong epsilon goes unseen), zero biases vanish from the converted
graph (TF's optimiser deletes `x + 0`, which hides e.g. the TF.js wasm backend's rank-1
bias rule), and with made-up BatchNorm statistics every image gives the same features, so
nothing before the head is tested at all. `sensitised_variables` fixes all four.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from flowers_jax import models


def sensitised_variables(
    model_name: str, *, num_classes: int, images: np.ndarray, seed: int = 0, logit_std: float = 10.0
) -> dict:
    """Random variables with BatchNorm statistics from real images, random gamma/beta and biases, O(10) logits.

    Args:
      model_name: one of `models.names()`.
      num_classes: head size.
      images: [N, H, W, 3] RGB in [0, 255] (N >= 2, varied photos); the head is shifted and
        scaled so that on them each logit has mean 0 and the logits have std `logit_std`.
      seed: random seed.
    Returns:
      {"params", "batch_stats", "preprocess"} as NumPy float32 arrays.
    """
    model = models.create(model_name, num_classes)
    variables = jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, *images.shape[1:]), jnp.float32))
    rng = np.random.default_rng(seed)
    flat = {p: np.array(v, np.float32) for p, v in traverse_util.flatten_dict(variables).items()}
    for path, value in flat.items():
        if path[0] == "params" and path[-1] == "scale":
            flat[path] = rng.uniform(0.5, 1.5, value.shape).astype(np.float32)
        elif path[0] == "params" and path[-1] == "bias":
            flat[path] = rng.normal(0.0, 0.2, value.shape).astype(np.float32)
    # BatchNorm statistics measured on `images` with those gammas and betas (one pass with
    # momentum 0), then perturbed: with made-up statistics the activations shrink (or blow
    # up) layer after layer until every image gives the same features (measured: between-image
    # std ~1e-8), and a parity check could not see the input.
    calibrate = models.create(model_name, num_classes, bn_momentum=0.0)
    _, updates = jax.jit(
        lambda v, x: calibrate.apply(v, x, train=False, update_batch_stats=True, mutable=["batch_stats"])
    )(traverse_util.unflatten_dict(flat), images)
    for path, value in traverse_util.flatten_dict(updates).items():
        flat[path] = np.array(value, np.float32)
    for path, value in list(flat.items()):
        if path[0] == "batch_stats" and path[-1] == "var":
            flat[path] = (value * rng.uniform(0.8, 1.25, value.shape)).astype(np.float32)
    for path, value in list(flat.items()):
        if path[0] == "batch_stats" and path[-1] == "mean":
            std = np.sqrt(flat[path[:-1] + ("var",)])
            flat[path] = (value + rng.normal(0.0, 0.1, value.shape) * std).astype(np.float32)
    variables = traverse_util.unflatten_dict(flat)
    # Centre each class's logit over `images` and scale: the logits then vary *between images*
    # by ~logit_std (not one class winning everywhere through its mean), so top-1 agreement
    # over a set of photos tests many decisions.
    logits = np.asarray(jax.jit(model.apply)(variables, images), np.float64)
    centred = logits - logits.mean(axis=0)
    factor = logit_std / max(float(centred.std()), 1e-30)
    head = variables["params"]["head"]["predictions"]
    head["bias"] = ((head["bias"] - logits.mean(axis=0)) * factor).astype(np.float32)
    head["kernel"] = (head["kernel"] * factor).astype(np.float32)
    return variables
