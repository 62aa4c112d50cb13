"""The Keras 3 twin: the same network as our Flax model, built from the same architecture table.

TF.js and ONNX cannot take a jax2tf graph (it is one `XlaCallModule` op; docs/design.md,
§export), so the trained variables are copied into a Keras model of identical
structure and layer names, and the converters read that. Layer names are the Flax
ones, so `pretrained.keras_names.keras_key` -- the map that imports Keras weights --
is also the map that exports them (read backwards; its layout transforms are their
own inverse).

    twin = build_twin("efficientnet_b0", num_classes=104, image_size=224, mean=m, std=s, temperature=T)
    copy_variables(twin, "efficientnet_b0", variables)
    out = twin(images)   # {"logits": [N, 104], "probabilities": [N, 104], "embedding": [N, 1280]}
                         # probabilities = softmax(logits / T); images RGB in [0, 255]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from flax import traverse_util

from flowers_jax import models
from flowers_jax.models.mbconv import Arch, BlockSpec
from flowers_jax.pretrained import keras_names
from flowers_jax.pretrained.porting import LoadReport, WeightMismatchError, port

INPUT_NAME = "image"
LOGITS, PROBABILITIES, EMBEDDING = "logits", "probabilities", "embedding"
# Sorted: the order of a SavedModel's structured outputs, hence of TF.js's and ONNX's.
OUTPUT_NAMES = tuple(sorted((LOGITS, PROBABILITIES, EMBEDDING)))

# Families and activations the builder below knows how to spell in Keras.
_FAMILIES = ("efficientnet", "mobilenet_v2")
_ACTIVATIONS = {"swish": "swish", "relu6": "relu6"}


class TwinUnsupportedError(ValueError):
    """The model (or its variables) is something the Keras twin cannot reproduce."""


def check_supported(model_name: str) -> Arch:
    """The architecture table of `model_name`, or `TwinUnsupportedError` saying why not."""
    try:
        arch = models.get_arch(model_name)
    except ValueError as e:
        raise TwinUnsupportedError(f"the Keras twin cannot export {model_name!r}: {e}") from e
    if arch.family not in _FAMILIES or arch.activation not in _ACTIVATIONS:
        raise TwinUnsupportedError(
            f"the Keras twin cannot export {model_name!r}: family {arch.family!r} with activation "
            f"{arch.activation!r}; it covers families {_FAMILIES} with activations {sorted(_ACTIVATIONS)}. "
            "Teach flowers_jax/export/twin.py the new layer type before exporting this model."
        )
    return arch


def _block(x: Any, spec: BlockSpec, arch: Arch, layers: Any) -> Any:
    """One inverted-residual block, as `models.mbconv._block` computes it at inference."""
    n, p, act = arch.names, spec.prefix, _ACTIVATIONS[arch.activation]

    def bn(name: str) -> Any:
        return layers.BatchNormalization(epsilon=arch.bn_epsilon, momentum=arch.bn_momentum, name=name)

    inputs = x
    if spec.expand_ch != spec.in_ch:
        x = layers.Conv2D(spec.expand_ch, 1, padding="same", use_bias=False, name=p + n.expand_conv)(x)
        x = layers.Activation(act, name=p + n.expand_bn + "_act")(bn(p + n.expand_bn)(x))
    x = layers.DepthwiseConv2D(spec.kernel, spec.stride, padding="same", use_bias=False, name=p + n.dwconv)(x)
    x = layers.Activation(act, name=p + n.dwconv_bn + "_act")(bn(p + n.dwconv_bn)(x))
    if spec.se_ch:
        se = layers.GlobalAveragePooling2D(keepdims=True, name=p + "se_squeeze")(x)
        se = layers.Conv2D(spec.se_ch, 1, padding="same", activation=act, name=p + n.se_reduce)(se)
        se = layers.Conv2D(spec.expand_ch, 1, padding="same", activation="sigmoid", name=p + n.se_expand)(se)
        x = layers.Multiply(name=p + "se_excite")([x, se])
    x = layers.Conv2D(spec.out_ch, 1, padding="same", use_bias=False, name=p + n.project_conv)(x)
    x = bn(p + n.project_bn)(x)
    if spec.residual:  # stochastic depth is the identity at inference
        x = layers.Add(name=p + "add")([x, inputs])
    return x


def build_twin(
    model_name: str,
    *,
    num_classes: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    temperature: float = 1.0,
) -> Any:
    """The Keras 3 functional model of `models.create(model_name, num_classes)` at inference.

    Args:
      model_name: one of `models.names()`.
      num_classes: head size.
      image_size: square input side; the twin has a fixed [None, S, S, 3] input so the
        converters can fold shapes.
      mean, std: the `preprocess` variables ([3] each, [0, 255] units), baked in as the first
        layer so the twin, like the Flax model, takes raw RGB in [0, 255].
      temperature: the calibration temperature T baked into the probabilities output.
    Returns:
      keras.Model: image [N, S, S, 3] float32 -> {"logits": [N, C], "probabilities": [N, C]
      (softmax(logits / T)), "embedding": [N, D] (the pooled features the head reads)}.
      TF-style "SAME" padding everywhere (XLA's, hence Flax's, rule: the extra row/column of a
      stride-2 convolution goes at the bottom/right).
    Raises:
      TwinUnsupportedError: a model the builder does not cover.
    """
    import keras  # the Keras/TF stack is only needed for export

    if keras.backend.backend() != "tensorflow":
        # On the JAX backend `model.export()` goes through jax2tf and writes the XlaCallModule
        # op that the TF.js and ONNX converters reject (docs/design.md, §export).
        raise RuntimeError(
            f"the Keras twin needs Keras's TensorFlow backend, this process has {keras.backend.backend()!r}: "
            "set KERAS_BACKEND=tensorflow before keras is first imported"
        )
    arch = check_supported(model_name)
    layers = keras.layers
    n, act = arch.names, _ACTIVATIONS[arch.activation]
    mean = np.asarray(mean, np.float32).reshape(3)
    std = np.asarray(std, np.float32).reshape(3)

    images = keras.Input((image_size, image_size, 3), name=INPUT_NAME, dtype="float32")
    # (x - mean) / std exactly as Flax computes it (a division, not a multiply by 1/std).
    x = layers.Normalization(mean=mean, variance=np.square(std), name="preprocess")(images)
    x = layers.Conv2D(arch.stem_ch, 3, strides=2, padding="same", use_bias=False, name=n.stem_conv)(x)
    x = layers.BatchNormalization(epsilon=arch.bn_epsilon, momentum=arch.bn_momentum, name=n.stem_bn)(x)
    x = layers.Activation(act, name=n.stem_bn + "_act")(x)
    for spec in arch.blocks:
        x = _block(x, spec, arch, layers)
    x = layers.Conv2D(arch.top_ch, 1, padding="same", use_bias=False, name=n.top_conv)(x)
    x = layers.BatchNormalization(epsilon=arch.bn_epsilon, momentum=arch.bn_momentum, name=n.top_bn)(x)
    x = layers.Activation(act, name=n.top_bn + "_act")(x)
    embedding = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    logits = layers.Dense(num_classes, name="predictions")(embedding)
    scaled = logits if temperature == 1.0 else layers.Rescaling(1.0 / temperature, name="temperature")(logits)
    probabilities = layers.Softmax(name="probabilities")(scaled)
    outputs = {LOGITS: logits, PROBABILITIES: probabilities, EMBEDDING: embedding}
    return keras.Model(images, outputs, name=f"{model_name}_twin")


def _twin_weights(twin: Any) -> dict[str, Any]:
    """{"<layer>/<weight>": keras Variable}, the key `keras_names.keras_key` speaks."""
    return {f"{layer.name}/{w.name}": w for layer in twin.layers for w in layer.weights}


def check_fit(twin: Any, model_name: str, variables: dict) -> LoadReport:
    """Checks that `variables` and the twin's weights correspond one to one, shapes included.

    Args:
      twin: from `build_twin(model_name, ...)`.
      variables: Flax variables, or their shapes (`jax.eval_shape` of init): only shapes
        are read, except the `preprocess` values.
    Returns:
      The `LoadReport` (Flax path -> the Keras weight it feeds).
    Raises:
      TwinUnsupportedError: some variable has no twin weight, a shape differs, or a twin
        weight is fed by nothing; lists every problem.
    """
    flat = traverse_util.flatten_dict(dict(variables))
    weights = _twin_weights(twin)
    report = LoadReport(source=f"Keras twin of {model_name!r}", model_name=model_name)
    try:
        # `port` checks the bijection (every Flax variable <-> one twin weight, shapes equal,
        # nothing unused) with the same name map and error report the importers use; the
        # values it returns are the twin's own and are discarded.
        port(
            traverse_util.unflatten_dict(flat),
            {k: np.asarray(w.numpy()) for k, w in weights.items()},
            _lookup(model_name, flat),
            report=report,
            preset={p: np.asarray(v) for p, v in flat.items() if p[0] == "preprocess"},
            preset_from="baked into the twin's 'preprocess' layer",
        )
    except WeightMismatchError as e:
        raise TwinUnsupportedError(f"the Keras twin does not fit these variables: {e}") from e
    return report


def _lookup(model_name: str, flat: dict) -> Any:
    bn = keras_names.bn_layer_names(flat)
    dw = models.get_arch(model_name).depthwise_layers()
    return lambda path: keras_names.keras_key(path, bn_layers=bn, depthwise_layers=dw)


def copy_variables(twin: Any, model_name: str, variables: dict) -> LoadReport:
    """Copies Flax `variables` into `twin` (in place), after `check_fit`; every tensor exactly once.

    Args:
      twin: from `build_twin(model_name, ...)`.
      variables: {"params", "batch_stats", "preprocess"} of `models.create(model_name, C)`.
        The preprocess values must be those the twin was built with (they are checked).
    Returns:
      The `LoadReport` of the check.
    """
    flat = {p: np.asarray(v, np.float32) for p, v in traverse_util.flatten_dict(dict(variables)).items()}
    report = check_fit(twin, model_name, variables)
    _check_preprocess(twin, {p: v for p, v in flat.items() if p[0] == "preprocess"})
    weights, lookup = _twin_weights(twin), _lookup(model_name, flat)
    for path, value in flat.items():
        if path[0] == "preprocess":
            continue
        key, transform = lookup(path)
        weights[key].assign(transform(value))  # the transform is its own inverse
    return report


def _check_preprocess(twin: Any, preprocess: dict) -> None:
    layer = twin.get_layer("preprocess")
    have = {"mean": np.asarray(layer.mean).reshape(-1), "std": np.sqrt(np.asarray(layer.variance).reshape(-1))}
    for (_, name), value in preprocess.items():
        if not np.allclose(have[name], value, rtol=1e-6):
            raise TwinUnsupportedError(
                f"twin was built with preprocess {name}={have[name].tolist()} but the variables hold "
                f"{value.tolist()}; build it with twin_from_variables()"
            )


def twin_from_variables(model_name: str, variables: dict, *, image_size: int, temperature: float = 1.0) -> Any:
    """`build_twin` + `copy_variables`: the Keras twin holding `variables` (head size read from them)."""
    check_supported(model_name)
    try:
        kernel = variables["params"]["head"]["predictions"]["kernel"]
        pre = variables["preprocess"]
    except (KeyError, TypeError) as e:
        raise TwinUnsupportedError(
            f"variables for {model_name!r} lack {e}; expected {{'params': {{'backbone', 'head'}}, "
            "'batch_stats', 'preprocess'}} as models.create(...).init returns"
        ) from e
    twin = build_twin(
        model_name,
        num_classes=int(kernel.shape[-1]),
        image_size=image_size,
        mean=pre["mean"],
        std=pre["std"],
        temperature=temperature,
    )
    copy_variables(twin, model_name, variables)
    return twin
