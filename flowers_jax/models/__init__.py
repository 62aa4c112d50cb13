"""Model zoo: `create(name, num_classes)` builds any EfficientNet / Lite / MobileNetV2.

model = models.create("efficientnet_b0", num_classes=104)
variables = model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
logits = model.apply(variables, images, train=False)      # [N, 104]
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from flowers_jax.models import efficientnet, kernels, mbconv, mobilenet_v2
from flowers_jax.models.classifier import Classifier, Head
from flowers_jax.models.mbconv import Arch, BlockSpec, MBConvNet

__all__ = [
    "Arch",
    "BlockSpec",
    "Classifier",
    "Head",
    "MBConvNet",
    "create",
    "get_arch",
    "names",
    "variable_shapes",
    "with_drop_connect",
]

# Overrides `create` accepts, and where they go.
_BACKBONE_OVERRIDES = ("dtype", "kernels", "depthwise_impl", "bn_momentum", "bn_axis_name")
_ARCH_OVERRIDES = ("drop_connect_rate",)
_CLASSIFIER_OVERRIDES = ("dropout_rate", "dtype")


def names() -> list[str]:
    """Every model name `create` accepts."""
    out = [f"efficientnet_{v}" for v in efficientnet.VARIANTS]
    out += ["mobilenet_v2"] + [f"mobilenet_v2_{a}" for a in mobilenet_v2.ALPHAS]
    return out


def get_arch(name: str) -> Arch:
    """Architecture table of a model name (see `names()`)."""
    if name.startswith("efficientnet_") and name[len("efficientnet_") :] in efficientnet.VARIANTS:
        return efficientnet.arch(name[len("efficientnet_") :])
    if name == "mobilenet_v2":
        return mobilenet_v2.arch("100")
    if name.startswith("mobilenet_v2_") and name[len("mobilenet_v2_") :] in mobilenet_v2.ALPHAS:
        return mobilenet_v2.arch(name[len("mobilenet_v2_") :])
    raise ValueError(f"unknown model {name!r}; known models: {', '.join(names())}")


def create(name: str, num_classes: int, **overrides: Any) -> Classifier:
    """Builds the Flax classifier `name` with a `num_classes`-way head.

    Args:
      name: e.g. "efficientnet_b0", "efficientnet_lite0", "mobilenet_v2", "mobilenet_v2_035".
      num_classes: size of the classification head.
      **overrides: dtype (compute dtype, e.g. jnp.bfloat16), dropout_rate (head),
        kernels ("auto" | "cpu" | "xla", see `models/kernels.py`; "auto" is decided here, from
        the default backend at creation), depthwise_impl ("auto" | "conv" | "shift": the
        depthwise convolution alone), bn_momentum (None: the architecture's; a number is used
        as it is, 0.0 included), bn_axis_name (pmap only), drop_connect_rate (stochastic depth,
        rising over the blocks toward it; see `with_drop_connect`). A None dropout_rate or
        drop_connect_rate is the architecture's (head dropout 0.2-0.5 by size; drop-connect 0.2 for
        EfficientNet and Lite, 0 for MobileNetV2).
    Returns:
      A `Classifier`; `apply(variables, images [N, H, W, 3] in [0, 255], train=False)`
      gives logits [N, num_classes].
    """
    unknown = set(overrides) - set(_BACKBONE_OVERRIDES) - set(_CLASSIFIER_OVERRIDES) - set(_ARCH_OVERRIDES)
    if unknown:
        valid = sorted(set(_BACKBONE_OVERRIDES) | set(_CLASSIFIER_OVERRIDES) | set(_ARCH_OVERRIDES))
        raise TypeError(f"create({name!r}): unknown override(s) {sorted(unknown)}; valid: {valid}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    # None rates are the architecture's (configs leave them unset).
    overrides = {k: v for k, v in overrides.items() if v is not None or k not in ("dropout_rate", "drop_connect_rate")}
    arch = get_arch(name)
    if "drop_connect_rate" in overrides:
        arch = with_drop_connect(arch, overrides["drop_connect_rate"])
    backbone_kwargs = {k: v for k, v in overrides.items() if k in _BACKBONE_OVERRIDES}
    chosen = backbone_kwargs["kernels"] = kernels.resolve(backbone_kwargs.get("kernels", "auto"))
    backbone_kwargs["depthwise_impl"] = kernels.resolve_depthwise(backbone_kwargs.get("depthwise_impl", "auto"), chosen)
    backbone = MBConvNet(arch, **backbone_kwargs)
    kwargs = {"dropout_rate": arch.dropout_rate}
    kwargs.update({k: v for k, v in overrides.items() if k in _CLASSIFIER_OVERRIDES})
    return Classifier(
        backbone=backbone,
        num_classes=num_classes,
        input_mean=arch.input_mean,
        input_std=arch.input_std,
        **kwargs,
    )


def with_drop_connect(arch: Arch, rate: float) -> Arch:
    """`arch` with stochastic-depth rates rising linearly over the blocks, rate * i / len(blocks)
    for block i (Keras's and TF's EfficientNet rule; only residual blocks use theirs)."""
    n = len(arch.blocks)
    blocks = tuple(dataclasses.replace(b, drop_rate=mbconv.drop_rate(rate, i, n)) for i, b in enumerate(arch.blocks))
    return dataclasses.replace(arch, blocks=blocks)


def variable_shapes(model: Classifier) -> dict:
    """ShapeDtypeStructs of every variable of `model`, without computing anything.

    The shapes do not depend on the input's spatial size (the head pools globally),
    so a small dummy input is traced.
    """
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
