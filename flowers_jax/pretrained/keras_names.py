"""The Flax <-> Keras weight-name map, one place for import (here) and export (the Keras twin).

Flax layer names are the Keras layer names (see `models.mbconv`), so the map is
only about variable names within a layer and kernel layouts:

  Flax                                   Keras 3
  params/.../<layer>/kernel              <layer>/kernel   (depthwise: [k,k,1,C] <-> [k,k,C,1])
  params/.../<layer>/bias                <layer>/bias
  params/.../<bn>/scale, bias            <bn>/gamma, beta
  batch_stats/.../<bn>/mean, var         <bn>/moving_mean, moving_variance
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import numpy as np

from flowers_jax.pretrained.porting import Path

_BN_NAMES = {"scale": "gamma", "bias": "beta", "mean": "moving_mean", "var": "moving_variance"}


def _depthwise_swap(a: np.ndarray) -> np.ndarray:
    # Keras [k, k, C, 1] <-> Flax [k, k, 1, C]: the same transpose both ways.
    return np.transpose(a, (0, 1, 3, 2))


def _identity(a: np.ndarray) -> np.ndarray:
    return a


def keras_key(
    path: Path, *, bn_layers: Collection[str], depthwise_layers: Collection[str]
) -> tuple[str, Callable[[np.ndarray], np.ndarray]] | None:
    """Flax variable path -> ("<layer>/<weight>", Keras->Flax layout transform).

    Returns None for variables with no Keras tensor of their own (preprocess).
    The transform is its own inverse, so export applies it in the other direction.
    """
    if path[0] not in ("params", "batch_stats") or len(path) < 3:
        return None
    layer, var = path[-2], path[-1]
    if layer in bn_layers:
        return f"{layer}/{_BN_NAMES[var]}", _identity
    transform = _depthwise_swap if layer in depthwise_layers and var == "kernel" else _identity
    return f"{layer}/{var}", transform


def bn_layer_names(flat_paths: Collection[Path]) -> frozenset[str]:
    """Layers holding a BatchNorm `scale`: the ones whose variables Keras names differently."""
    return frozenset(p[-2] for p in flat_paths if p[0] == "params" and p[-1] == "scale")
