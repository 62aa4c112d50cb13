"""`pretrained.from_keras` reproduces `keras.applications` logits (relative error <= 1e-5)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from keras_helpers import random_images, randomise_batchnorms, relative_error, scale_head_to

from flowers_jax import models, pretrained

keras = pytest.importorskip("keras")

TOL = 1e-5


def _keras_keys(keras_model) -> set[str]:
    return {f"{layer.name}/{w.name}" for layer in keras_model.layers for w in layer.weights}


def _check_report(report, keras_model) -> None:
    """Every Keras tensor fed exactly one Flax variable, or is listed as ignored with a reason."""
    assert set(report.uses) | set(report.ignored) == _keras_keys(keras_model)
    assert not set(report.uses) & set(report.ignored)
    assert set(report.uses.values()) == {1}
    assert not report.initialised
    # The only tensor that feeds nothing is Normalization's adapt() counter.
    assert all(k.endswith("/count") for k in report.ignored)


@pytest.mark.parametrize(
    "keras_name, kwargs, size, name, depthwise_impl",
    [
        ("EfficientNetB0", {}, 224, "efficientnet_b0", "shift"),
        ("EfficientNetB0", {}, 224, "efficientnet_b0", "conv"),
        ("EfficientNetB3", {}, 300, "efficientnet_b3", "auto"),
        ("MobileNetV2", {"alpha": 1.0}, 224, "mobilenet_v2_100", "auto"),
        ("MobileNetV2", {"alpha": 0.35}, 224, "mobilenet_v2_035", "auto"),
    ],
)
def test_random_weights_parity(keras_name, kwargs, size, name, depthwise_impl):
    # Keras draws the conv weights from its global seed, which other tests move (the benchmark
    # recipe seeds and builds models). Some draws make a deep net far more sensitive to rounding:
    # one such B3 draw put Keras's own float32 logits 1.5e-5 from a float64 evaluation, and ours
    # 1.1e-5 from Keras's. A fixed seed keeps the check about the port, not about the draw
    # (B3, seeds 0-3: 1.2e-6 to 3.2e-6).
    keras.utils.set_random_seed(0)
    keras_model = getattr(keras.applications, keras_name)(weights=None, classifier_activation=None, **kwargs)
    randomise_batchnorms(keras_model)
    images = random_images(2, size)
    # Keras's MobileNetV2 expects preprocess_input (x / 127.5 - 1) outside the model; ours does it inside.
    keras_in = keras.applications.mobilenet_v2.preprocess_input(images.copy()) if "MobileNet" in keras_name else images
    ref = scale_head_to(keras_model, keras_in)
    assert 3 < ref.std() < 30  # a sensitive network: logits of order 10

    variables, report = pretrained.from_keras_with_report(keras_model)
    _check_report(report, keras_model)
    model = models.create(name, 1000, depthwise_impl=depthwise_impl)
    out = np.asarray(jax.jit(model.apply)(variables, images))
    assert out.shape == (2, 1000)
    assert relative_error(out, ref) <= TOL


def test_imagenet_path_with_extra_rescaling(tmp_path, monkeypatch):
    """weights='imagenet' builds a different graph: Keras adds Rescaling(1/sqrt(std)) after Normalization."""
    from keras.src.applications import efficientnet as keras_effnet

    keras.utils.set_random_seed(1)
    donor = keras.applications.EfficientNetB0(weights=None, classifier_activation=None)
    randomise_batchnorms(donor, seed=1)
    norm = next(layer for layer in donor.layers if isinstance(layer, keras.layers.Normalization))
    # What Keras's ImageNet file holds: ImageNet mean, and the *std* stored as the variance.
    imagenet_mean, imagenet_std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    norm.set_weights([np.array(imagenet_mean, np.float32), np.array(imagenet_std, np.float32), np.int64(0)])
    weights_file = tmp_path / "efficientnetb0.weights.h5"
    donor.save_weights(weights_file)
    monkeypatch.setattr(keras_effnet.file_utils, "get_file", lambda *a, **k: str(weights_file))

    keras_model = keras.applications.EfficientNetB0(weights="imagenet", classifier_activation=None)
    assert sum(isinstance(layer, keras.layers.Rescaling) for layer in keras_model.layers) == 2
    images = random_images(2, 224, seed=1)
    ref = scale_head_to(keras_model, images)

    variables, report = pretrained.from_keras_with_report(keras_model)
    _check_report(report, keras_model)
    # Folded, the three Keras ops are the textbook ImageNet normalisation.
    np.testing.assert_allclose(variables["preprocess"]["mean"], [0.485 * 255, 0.456 * 255, 0.406 * 255], rtol=1e-6)
    np.testing.assert_allclose(variables["preprocess"]["std"], [0.229 * 255, 0.224 * 255, 0.225 * 255], rtol=1e-6)
    out = np.asarray(jax.jit(models.create("efficientnet_b0", 1000).apply)(variables, images))
    assert relative_error(out, ref) <= TOL


def test_notop_model_ports_backbone_only():
    keras_model = keras.applications.MobileNetV2(weights=None, include_top=False, alpha=0.5, input_shape=(96, 96, 3))
    variables, report = pretrained.from_keras_with_report(keras_model, model_name="mobilenet_v2_050")
    assert "head" not in variables["params"]
    assert set(report.uses) == _keras_keys(keras_model)
