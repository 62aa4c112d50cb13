"""SavedModel -> TF.js graph model (`tensorflowjs` 4.22's converter), with the wasm-backend fix.

The graph format, never the layers format: TF.js 4.22 cannot load Keras 3 layers models.
"""

from __future__ import annotations

import json
import pathlib
import sys
import types
from typing import Any

from flowers_jax.export.twin import EMBEDDING, LOGITS, OUTPUT_NAMES, PROBABILITIES

# Ops whose extra inputs (input[2:]) are the fused bias/activation arguments.
_FUSED_OPS = ("_FusedConv2D", "FusedDepthwiseConv2dNative")


def _converter() -> Any:
    """Imports `tensorflowjs.converters.tf_saved_model_conversion_v2`.

    tensorflowjs 4.22 (its last release) imports `tensorflow_decision_forests` at module
    level only so that TF-DF's custom ops are registered; TF-DF has no build for TF 2.21
    and installing it drags in an older TF (docs/design.md, §export). We convert no TF-DF model, so an
    empty stand-in module, inserted only if the real one is absent, is all it needs.
    """
    if "tensorflow_decision_forests" not in sys.modules:
        try:
            import tensorflow_decision_forests  # noqa: F401
        except ModuleNotFoundError:
            sys.modules["tensorflow_decision_forests"] = types.ModuleType("tensorflow_decision_forests")
    try:
        from tensorflowjs.converters import tf_saved_model_conversion_v2
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            f"{e}. The TF.js converter is installed apart from the package (its pins clash with "
            "TF 2.21): run export/install.sh, or pip install --no-deps tensorflowjs==4.22.0 "
            "tf-keras==2.21.0 tensorflow-hub==0.16.1 importlib_resources"
        ) from e
    return tf_saved_model_conversion_v2


def convert(saved_model_dir: str | pathlib.Path, out_dir: str | pathlib.Path, *, float16: bool = False) -> pathlib.Path:
    """Writes `out_dir/model.json` + weight shards; returns the model.json path.

    Args:
      saved_model_dir: a SavedModel with a `serving_default` signature.
      out_dir: output folder (created).
      float16: store weights as float16 (half the download; computed in float32).
    """
    out_dir = pathlib.Path(out_dir)
    _converter().convert_tf_saved_model(
        str(saved_model_dir),
        str(out_dir),
        signature_def="serving_default",
        saved_model_tags="serve",
        # Keep the signature's output names ("logits", "probabilities") in the model, so
        # `model.predict` in TF.js returns them by name instead of as "Identity_1:0".
        use_structured_outputs_names=True,
        quantization_dtype_map={"float16": "*"} if float16 else None,
    )
    model_json = out_dir / "model.json"
    order_outputs_by_name(model_json)
    make_fused_biases_rank1(model_json)
    return model_json


def order_outputs_by_name(model_json: str | pathlib.Path) -> list[str]:
    """Lists `signature.outputs` in the order of `structuredOutputKeys`, so TF.js names them right.

    TF.js's `GraphModel.predict` pairs the i-th output node (the key order of
    `signature.outputs`) with the i-th structured key (sorted: embedding, logits,
    probabilities), but the converter writes `signature.outputs` from a protobuf map in no
    set order: measured here, `predict(x).logits` came back holding the softmax. Which node
    is which is read from the graph itself: the probabilities output is fed by the Softmax
    op, the embedding by the global average pool's Mean, the logits by the rest.

    Returns:
      The output node names in their new order.
    """
    path = pathlib.Path(model_json)
    model = json.loads(path.read_text())
    keys = model.get("userDefinedMetadata", {}).get("structuredOutputKeys")
    if not keys or not set(keys) <= set(OUTPUT_NAMES) or keys != sorted(keys):
        raise RuntimeError(f"{path}: structuredOutputKeys {keys}, expected (some of) {list(OUTPUT_NAMES)}")
    nodes = {n["name"]: n for n in model["modelTopology"]["node"]}
    outputs = model["signature"]["outputs"]

    def role(tensor_name: str) -> str:
        node = nodes[tensor_name.split(":")[0]]
        while node["op"] == "Identity":  # outputs are Identity nodes over the real op
            node = nodes[node["input"][0].split(":")[0]]
        return {"Softmax": PROBABILITIES, "Mean": EMBEDDING}.get(node["op"], LOGITS)

    # Keyed by tensor name ("Identity_1:0"), or sometimes by the output's own name; the value's
    # "name" is always the tensor.
    by_role = {role(spec.get("name", key)): key for key, spec in outputs.items()}
    if sorted(by_role) != keys:
        raise RuntimeError(f"{path}: cannot tell {keys} apart among outputs {list(outputs)}")
    model["signature"]["outputs"] = {by_role[k]: outputs[by_role[k]] for k in keys}
    path.write_text(json.dumps(model))
    return [by_role[k] for k in keys]


def make_fused_biases_rank1(model_json: str | pathlib.Path) -> list[str]:
    """Re-declares [1, 1, 1, C] constants feeding fused convolutions as [C] (same bytes).

    When a graph adds a convolution's bias as a [1, 1, 1, C] constant (Keras 3 adds biases by
    reshape + add; it was met in keras.applications EfficientNetB0's squeeze-excite
    convolutions), the converter fuses that add into `_FusedConv2D` with a rank-4 bias, and
    TF.js's wasm backend refuses the model ("FusedConv2D only supports rank-1 bias but got
    rank 4") while webgl and cpu accept it. No converter option avoids this, so the shapes
    are fixed here in model.json: same values in the same order, weight files untouched.
    With Keras 3.15 our twin's convolutions convert with rank-1 biases and this finds
    nothing; it stays as a guard (tests/test_export_twin.py builds a graph that needs it).

    Returns:
      The names of the constants changed.
    """
    path = pathlib.Path(model_json)
    model = json.loads(path.read_text())
    nodes = {n["name"]: n for n in model["modelTopology"]["node"]}
    specs = {w["name"]: w for group in model["weightsManifest"] for w in group["weights"]}
    changed = []
    for node in nodes.values():
        if node["op"] not in _FUSED_OPS:
            continue
        for name in node.get("input", [])[2:]:
            name = name.split(":")[0]
            spec = specs.get(name)
            if spec is None or len(spec["shape"]) < 2 or any(d != 1 for d in spec["shape"][:-1]):
                continue
            spec["shape"] = spec["shape"][-1:]
            dims = nodes[name]["attr"]["value"]["tensor"]["tensorShape"]
            dims["dim"] = dims["dim"][-1:]
            changed.append(name)
    if changed:
        path.write_text(json.dumps(model))
    return changed
