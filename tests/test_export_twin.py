"""The Keras twin computes what the Flax model computes, and refuses what it cannot cover."""

from __future__ import annotations

import json

import numpy as np
import pytest
from keras_helpers import relative_error
from scipy.special import softmax

from benchmarks.sensitised import sensitised_variables
from flowers_jax import models
from flowers_jax.export import exporter, images, parity, savedmodel, tfjs, twin, web

pytest.importorskip("keras")

# Relative error of logits. On these sensitised networks the float32 Flax model is itself
# 0.6e-5 (B0) to 2.3e-5 (MobileNetV2 0.35) away from the same model in float64 (measured), so
# that is the floor; a wrong port (padding, preprocessing, BatchNorm order) gives >= 1e-3.
TOL = 5e-5
SIZE = 64


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    return images.skimage_photos(count=8, size=SIZE)


@pytest.mark.parametrize(
    "name",
    [
        "efficientnet_b0",  # swish, squeeze-excite
        "efficientnet_lite0",  # relu6, no squeeze-excite, fixed stem/head
        "mobilenet_v2_035",  # other layer names, width multiplier, expansion-free first block
    ],
)
def test_twin_matches_flax(name, photos, tmp_path):
    variables = sensitised_variables(name, num_classes=7, images=photos)
    reference = exporter.flax_logits(name, variables, photos)
    # A sensitive witness: logits of order 10 that differ between photos.
    assert 3 < reference.std() < 30
    assert len(set(reference.argmax(1))) >= 2

    keras_model = twin.twin_from_variables(name, variables, image_size=SIZE)
    out = keras_model(photos, training=False)
    assert relative_error(out["logits"], reference) <= TOL
    # The probabilities output is the softmax of the twin's own logits (tight), and so within what
    # the logits tolerance allows of Flax's: logit errors of up to ~5e-4 (TOL on logits of order
    # 10) move a probability by up to p(1 - p) * 5e-4 <= 1.25e-4; a missing or wrong softmax is O(0.1).
    np.testing.assert_allclose(out["probabilities"], softmax(np.asarray(out["logits"], np.float64), axis=1), atol=1e-6)
    np.testing.assert_allclose(out["probabilities"], softmax(np.asarray(reference, np.float64), axis=1), atol=2.5e-4)
    # Same parameter count as Flax's params + batch stats (Keras keeps BN moving stats as weights).
    n_flax = sum(int(np.prod(v.shape)) for k in ("params", "batch_stats") for v in _leaves(variables[k]))
    assert keras_model.count_params() == n_flax

    if name == "efficientnet_b0":
        # B0's squeeze-excite convolutions become fused convolutions with biases in TF.js; the
        # wasm backend (a phone's usual fallback) must run them. Converted and run in Node.
        saved = savedmodel.export_twin(keras_model, tmp_path / "saved")
        model_json = tfjs.convert(saved, tmp_path / "tfjs")
        fused = json.loads(model_json.read_text())["modelTopology"]["node"]
        assert any("se_reduce" in n["name"] and n["op"] == "_FusedConv2D" for n in fused)
        logits = parity.run_tfjs_node(model_json, photos, node_dir=web.NODE_DIR, backend="wasm")[0]["logits"]
        assert relative_error(logits, reference) <= TOL


def _leaves(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _leaves(v)
    else:
        yield tree


def test_every_model_name_is_covered():
    """Every name the zoo offers has a twin whose weights match the Flax variables one to one."""
    import jax
    import jax.numpy as jnp

    for name in models.names():
        model = models.create(name, 5)
        shapes = jax.eval_shape(lambda m=model: m.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
        shapes["preprocess"] = {"mean": np.zeros(3, np.float32), "std": np.ones(3, np.float32)}
        keras_model = twin.build_twin(name, num_classes=5, image_size=32, mean=[0, 0, 0], std=[1, 1, 1])
        report = twin.check_fit(keras_model, name, shapes)
        assert len(report.loaded) == len(keras_model.weights) + 2  # + preprocess mean and std


def test_unknown_model_is_a_clear_error():
    with pytest.raises(twin.TwinUnsupportedError, match="resnet50.*known models"):
        twin.check_supported("resnet50")


def test_unsupported_layer_type_is_a_clear_error(monkeypatch):
    import dataclasses

    arch = dataclasses.replace(models.get_arch("efficientnet_b0"), activation="gelu")
    monkeypatch.setattr(twin.models, "get_arch", lambda name: arch)
    with pytest.raises(twin.TwinUnsupportedError, match="activation 'gelu'.*Teach flowers_jax/export/twin.py"):
        twin.build_twin("efficientnet_b0", num_classes=3, image_size=32, mean=[0, 0, 0], std=[1, 1, 1])


def test_variables_that_do_not_fit_are_listed():
    import jax
    import jax.numpy as jnp

    model = models.create("mobilenet_v2_035", 3)
    variables = jax.tree.map(np.asarray, jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    variables["params"]["backbone"]["extra_conv"] = {"kernel": np.zeros((1, 1, 8, 8), np.float32)}
    del variables["params"]["backbone"]["Conv_1"]
    with pytest.raises(twin.TwinUnsupportedError) as err:
        twin.twin_from_variables("mobilenet_v2_035", variables, image_size=32)
    message = str(err.value)
    assert "params/backbone/extra_conv/kernel: no source tensor" in message
    assert "'Conv_1/kernel'" in message and "is not used by the model" in message


def test_variables_without_head_are_a_clear_error():
    with pytest.raises(twin.TwinUnsupportedError, match="lack 'head'"):
        twin.twin_from_variables("mobilenet_v2_035", {"params": {"backbone": {}}}, image_size=32)


def _fake_model_json(tmp_path, *, outputs_order, bias_shape):
    """A minimal TF.js graph model.json with one fused conv and two outputs."""

    def const(name, shape):
        dims = [{"size": str(d)} for d in shape]
        return {"name": name, "op": "Const", "attr": {"value": {"tensor": {"tensorShape": {"dim": dims}}}}}

    nodes = [
        {"name": "image", "op": "Placeholder"},
        const("w", [1, 1, 4, 4]),
        const("b", bias_shape),
        {"name": "conv", "op": "_FusedConv2D", "input": ["image", "w", "b"]},
        {"name": "logits", "op": "MatMul", "input": ["conv", "w"]},
        {"name": "softmax", "op": "Softmax", "input": ["logits"]},
        {"name": "Identity", "op": "Identity", "input": ["logits"]},
        {"name": "Identity_1", "op": "Identity", "input": ["softmax"]},
    ]
    outputs = {"Identity:0": {"name": "Identity:0"}, "Identity_1:0": {"name": "Identity_1:0"}}
    model = {
        "modelTopology": {"node": nodes},
        "signature": {"outputs": {k: outputs[k] for k in outputs_order}},
        "userDefinedMetadata": {"structuredOutputKeys": ["logits", "probabilities"]},
        "weightsManifest": [
            {"paths": ["g.bin"], "weights": [{"name": "w", "shape": [1, 1, 4, 4]}, {"name": "b", "shape": bias_shape}]}
        ],
    }
    path = tmp_path / "model.json"
    path.write_text(json.dumps(model))
    return path


def test_fused_bias_made_rank1_for_wasm(tmp_path):
    path = _fake_model_json(tmp_path, outputs_order=["Identity:0", "Identity_1:0"], bias_shape=[1, 1, 1, 4])
    assert tfjs.make_fused_biases_rank1(path) == ["b"]
    model = json.loads(path.read_text())
    weights = {w["name"]: w["shape"] for w in model["weightsManifest"][0]["weights"]}
    assert weights == {"w": [1, 1, 4, 4], "b": [4]}  # the kernel (input 1) is left alone
    node = next(n for n in model["modelTopology"]["node"] if n["name"] == "b")
    assert node["attr"]["value"]["tensor"]["tensorShape"]["dim"] == [{"size": "4"}]
    assert tfjs.make_fused_biases_rank1(path) == []  # idempotent


def test_wasm_runs_a_rank4_bias_graph_after_the_fix(tmp_path, monkeypatch):
    """A conv whose bias is added as a [1, 1, 1, C] constant: wasm refuses it until model.json is fixed."""
    import keras

    class AddBias(keras.layers.Layer):
        def build(self, shape):
            self.b = self.add_weight(shape=(1, 1, 1, shape[-1]), initializer="random_normal")

        def call(self, x):
            return x + self.b

    image = keras.Input((8, 8, 3), name=twin.INPUT_NAME)
    x = AddBias()(keras.layers.Conv2D(4, 1, use_bias=False)(image))
    logits = keras.layers.Dense(3, name="predictions")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(image, {"logits": logits, "probabilities": keras.layers.Softmax()(logits)})
    saved = savedmodel.export_twin(model, tmp_path / "saved")
    photos = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)

    with monkeypatch.context() as m:
        m.setattr(tfjs, "make_fused_biases_rank1", lambda path: [])  # convert without the fix
        unfixed = tfjs.convert(saved, tmp_path / "unfixed")
    with pytest.raises(RuntimeError, match="only supports rank-1 bias but got rank 4"):
        parity.run_tfjs_node(unfixed, photos, node_dir=web.NODE_DIR, backend="wasm")

    fixed = tfjs.convert(saved, tmp_path / "fixed")
    logits = parity.run_tfjs_node(fixed, photos, node_dir=web.NODE_DIR, backend="wasm")[0]["logits"]
    np.testing.assert_allclose(logits, model(photos)["logits"], rtol=1e-4, atol=1e-4)


def test_outputs_ordered_like_structured_keys(tmp_path):
    # The converter may list Identity_1 (softmax) first; TF.js would then call it "logits".
    path = _fake_model_json(tmp_path, outputs_order=["Identity_1:0", "Identity:0"], bias_shape=[4])
    assert tfjs.order_outputs_by_name(path) == ["Identity:0", "Identity_1:0"]
    assert list(json.loads(path.read_text())["signature"]["outputs"]) == ["Identity:0", "Identity_1:0"]
