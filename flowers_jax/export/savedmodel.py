"""The two SavedModels: the Keras twin's (source of TF.js and ONNX) and jax2tf's (for TF Serving).

Both have one signature, `serving_default`: image [N, S, S, 3] float32 RGB in [0, 255]
-> {"logits": [N, C], "probabilities": [N, C] (softmax(logits / T)), "embedding": [N, D]}.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from flowers_jax import models
from flowers_jax.export.twin import EMBEDDING, INPUT_NAME, LOGITS, OUTPUT_NAMES, PROBABILITIES

# Where the jax2tf SavedModel may run. Native serialisation stores StableHLO lowered for
# each listed platform; by default only the exporting machine's would be stored, and a
# model exported on a CPU would then refuse to run in TF Serving on a GPU or TPU.
SERVING_PLATFORMS = ("cpu", "cuda", "tpu")


def export_twin(twin: Any, out_dir: str | pathlib.Path) -> pathlib.Path:
    """`model.export()`: a plain SavedModel of the Keras twin (no XlaCallModule), for the converters."""
    out_dir = pathlib.Path(out_dir)
    twin.export(str(out_dir), format="tf_saved_model", verbose=False)
    return out_dir


def export_jax2tf(
    out_dir: str | pathlib.Path,
    *,
    model_name: str,
    variables: dict,
    image_size: int,
    temperature: float = 1.0,
    platforms: Sequence[str] = SERVING_PLATFORMS,
) -> pathlib.Path:
    """The exact JAX function as a SavedModel (one XlaCallModule op; fine in TF Serving).

    The variables are stored as TF variables (not folded into the StableHLO), and the batch
    dimension is symbolic. The graph is built from flax's layers (`kernels="xla"`: `lax.conv`,
    `nn.BatchNorm`), the form TPU/GPU serving wants, wherever the export runs: the hand-written
    XLA:CPU layers compute the same values but were written for training on XLA:CPU alone.
    """
    import tensorflow as tf
    from jax.experimental import jax2tf

    num_classes = int(variables["params"]["head"]["predictions"]["kernel"].shape[-1])
    model = models.create(model_name, num_classes, kernels="xla")

    def predict(variables: dict, images: jax.Array) -> dict[str, jax.Array]:
        logits, embedding = model.apply(variables, images, train=False, with_embedding=True)
        return {LOGITS: logits, PROBABILITIES: jax.nn.softmax(logits / temperature), EMBEDDING: embedding}

    converted = jax2tf.convert(
        predict,
        polymorphic_shapes=[None, f"(b, {image_size}, {image_size}, 3)"],
        native_serialization_platforms=tuple(platforms),
        with_gradient=False,
    )
    module = tf.Module()
    module.variables_tree = tf.nest.map_structure(
        lambda v: tf.Variable(np.asarray(v, np.float32), trainable=False), jax.device_get(variables)
    )

    @tf.function(
        autograph=False,
        input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name=INPUT_NAME)],
    )
    def serve(image: tf.Tensor) -> dict[str, tf.Tensor]:
        return converted(module.variables_tree, image)

    module.serve = serve
    out_dir = pathlib.Path(out_dir)
    tf.saved_model.save(module, str(out_dir), signatures={"serving_default": serve.get_concrete_function()})
    return out_dir


def run_savedmodel(
    saved_model_dir: str | pathlib.Path, images: np.ndarray, *, batch_size: int = 16
) -> dict[str, np.ndarray]:
    """{output name: [N, ...]} of a SavedModel's `serving_default` on images [N, S, S, 3]."""
    import tensorflow as tf

    fn = tf.saved_model.load(str(saved_model_dir)).signatures["serving_default"]
    outs = [fn(**{INPUT_NAME: tf.constant(images[i : i + batch_size])}) for i in range(0, len(images), batch_size)]
    return {k: np.concatenate([o[k].numpy() for o in outs]) for k in OUTPUT_NAMES}
