"""Keras reference models made sensitive enough that a parity test can fail.

A randomly initialised `keras.applications` network gives logits near 1e-5:
any absolute tolerance passes a wrong port, and BatchNorm at its initial
statistics (mean 0, variance 1) is nearly the identity, hiding a wrong epsilon
or a swapped gamma/beta. So every BatchNorm gets random gamma, beta and moving
statistics, and the head kernel is scaled until logits are O(10).
"""

from __future__ import annotations

import numpy as np


def randomise_batchnorms(keras_model, seed: int = 0) -> None:
    import keras

    rng = np.random.default_rng(seed)
    for layer in keras_model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, c).astype(np.float32),  # gamma
                    rng.normal(0.0, 0.2, c).astype(np.float32),  # beta
                    rng.normal(0.0, 0.2, c).astype(np.float32),  # moving mean
                    rng.uniform(0.5, 1.5, c).astype(np.float32),  # moving variance
                ]
            )


def scale_head_to(keras_model, images: np.ndarray, target_std: float = 10.0) -> np.ndarray:
    """Rescales the `predictions` kernel so logits have std `target_std`; returns the new logits."""
    head = keras_model.get_layer("predictions")
    kernel, bias = head.get_weights()
    logits = np.asarray(keras_model(images, training=False))
    factor = target_std / max(float(logits.std()), 1e-30)
    head.set_weights([kernel * factor, bias])
    return np.asarray(keras_model(images, training=False))


def random_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """[n, size, size, 3] float32 RGB in [0, 255]."""
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype(np.float32)


def relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(out, np.float64) - ref) / np.linalg.norm(ref))
