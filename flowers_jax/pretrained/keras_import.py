"""Imports a `keras.applications` EfficientNet / MobileNetV2 model held in memory."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from flax import traverse_util

from flowers_jax import models
from flowers_jax.pretrained import keras_names
from flowers_jax.pretrained.porting import LoadReport, port

# Preprocessing each family's Keras model expects *outside* the model, as
# (scale, offset) in y = x * scale + offset. Keras EfficientNet rescales and
# normalises in-model; MobileNetV2 relies on `preprocess_input` (x / 127.5 - 1).
_EXTERNAL_PREPROCESS = {
    "efficientnet": (1.0, 0.0),
    "mobilenet_v2": (1.0 / 127.5, -1.0),
}


def model_name_of(keras_model: Any) -> str:
    """Our model name for a `keras.applications` model ("efficientnetb3" -> "efficientnet_b3")."""
    name = keras_model.name
    if m := re.fullmatch(r"efficientnet(b[0-7])", name):
        return f"efficientnet_{m.group(1)}"
    if m := re.fullmatch(r"mobilenetv2_(\d+\.\d+)_\d+", name):
        return f"mobilenet_v2_{round(float(m.group(1)) * 100):03d}"
    raise ValueError(
        f"cannot tell which architecture Keras model {name!r} is (expected a keras.applications "
        "EfficientNetB0-B7 or MobileNetV2 with its default name); pass model_name=..."
    )


def _keras_weights(keras_model: Any) -> dict[str, np.ndarray]:
    """{"<layer>/<weight>": array} for every weight of every layer."""
    out = {}
    for layer in keras_model.layers:
        for w in layer.weights:
            out[f"{layer.name}/{w.name}"] = np.asarray(w.numpy())
    return out


def _preprocess(keras_model: Any, family: str) -> tuple[np.ndarray, np.ndarray, list[str], dict[str, str]]:
    """Folds the model's input Rescaling/Normalization layers into one per-channel (x - mean) / std.

    Keras computes them in sequence (for ImageNet EfficientNets: x/255, then
    (x - m) / sqrt(v), then an extra x * 1/sqrt(std) -- Keras's fix for storing
    the std where the variance belongs); the composition is an affine map
    y = a*x + b, i.e. mean = -b/a and std = 1/a in [0, 255] pixel units.

    Returns:
      mean [3], std [3], the Keras keys used, the Keras keys ignored -> why.
    """
    a, b = np.ones(3), np.zeros(3)
    scale, offset = _EXTERNAL_PREPROCESS[family]
    a, b = a * scale, b * scale + offset
    used, ignored = [], {}
    for layer in keras_model.layers:
        kind = type(layer).__name__
        if kind == "InputLayer":
            continue
        if kind == "Rescaling":
            s = np.asarray(layer.scale, np.float64)
            a, b = a * s, b * s + np.asarray(layer.offset, np.float64)
        elif kind == "Normalization":
            mean = np.asarray(layer.mean, np.float64).reshape(-1)
            div = np.maximum(np.sqrt(np.asarray(layer.variance, np.float64).reshape(-1)), 1e-7)
            a, b = a / div, (b - mean) / div
            used += [f"{layer.name}/mean", f"{layer.name}/variance"]
            ignored[f"{layer.name}/count"] = "Normalization.adapt() sample counter; not part of the computation"
        else:
            break  # preprocessing ends at the first layer that is not an affine rescale
    return -b / a, 1.0 / a, used, ignored


def from_keras_with_report(keras_model: Any, *, model_name: str | None = None) -> tuple[dict, LoadReport]:
    """Like `from_keras`, and also returns the `LoadReport`."""
    model_name = model_name or model_name_of(keras_model)
    arch = models.get_arch(model_name)
    layer_names = {layer.name for layer in keras_model.layers}
    has_top = "predictions" in layer_names
    num_classes = keras_model.get_layer("predictions").units if has_top else 1
    flax_model = models.create(model_name, num_classes)
    target = models.variable_shapes(flax_model)
    target = traverse_util.flatten_dict(target)
    if not has_top:
        target = {p: v for p, v in target.items() if p[:2] != ("params", "head")}
    source = _keras_weights(keras_model)
    mean, std, pre_keys, ignored = _preprocess(keras_model, arch.family)
    if pre_keys:
        pre_from = "folded from " + " + ".join(pre_keys) + " and the model's Rescaling layers"
    else:
        pre_from = f"keras.applications.{arch.family} preprocess_input convention"

    bn = keras_names.bn_layer_names(target)
    dw = arch.depthwise_layers()
    report = LoadReport(source=f"Keras model {keras_model.name!r}", model_name=model_name)
    variables = port(
        traverse_util.unflatten_dict(target),
        source,
        lambda p: keras_names.keras_key(p, bn_layers=bn, depthwise_layers=dw),
        report=report,
        ignorable=ignored,
        preset={("preprocess", "mean"): mean, ("preprocess", "std"): std},
        preset_from=pre_from,
        preset_keys=pre_keys,
    )
    return variables, report


def from_keras(keras_model: Any, *, model_name: str | None = None) -> dict:
    """Flax variables of a `keras.applications` EfficientNet/MobileNetV2 model in memory.

    Every Keras weight tensor feeds exactly one Flax variable (or is listed as
    ignored with a reason: only Normalization's sample counter is); anything
    unmatched raises `WeightMismatchError` listing every difference.

    Args:
      keras_model: e.g. `keras.applications.EfficientNetB0(weights=...)`, with or
        without its top (the head is ported when present).
      model_name: our model name; inferred from the Keras model's name if omitted.
    Returns:
      {"params", "batch_stats", "preprocess"} for `models.create(model_name,
      num_classes)` where num_classes is the Keras head's size (no "head"
      entries when the Keras model has no top).
    """
    return from_keras_with_report(keras_model, model_name=model_name)[0]
