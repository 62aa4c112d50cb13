"""Classifier = input preprocessing + backbone + head, as separate variable subtrees.

Variables of `Classifier.init`:
  params:      {"backbone": {...}, "head": {"predictions": {"kernel", "bias"}}}
  batch_stats: {"backbone": {...}}
  preprocess:  {"mean": [3], "std": [3]}  -- what the pretrained source expects,
               in [0, 255] units; never trained. Keeping it in the variables (not
               in code) lets every consumer -- training, export, the browser page --
               feed raw RGB in [0, 255] and get what the weights were trained on.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn


class Head(nn.Module):
    """Features [N, h, w, C] -> logits [N, num_classes]: global average pool, dropout, dense."""

    num_classes: int
    dropout_rate: float

    @nn.compact
    def __call__(
        self, features: jax.Array, *, train: bool = False, with_embedding: bool = False
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        embedding = jnp.mean(features.astype(jnp.float32), axis=(1, 2))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(embedding)
        logits = nn.Dense(self.num_classes, name="predictions")(x)
        return (logits, embedding) if with_embedding else logits


class Classifier(nn.Module):
    """Images [N, H, W, 3] float32 RGB in [0, 255] -> logits [N, num_classes] float32."""

    backbone: nn.Module
    num_classes: int
    dropout_rate: float
    input_mean: tuple[float, float, float]
    input_std: tuple[float, float, float]
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        images: jax.Array,
        *,
        train: bool = False,
        update_batch_stats: bool | None = None,
        with_embedding: bool = False,
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """Logits of `images`.

        Args:
          images: [N, H, W, 3] float32 RGB in [0, 255].
          train: dropout and stochastic depth on.
          update_batch_stats: BatchNorm normalises with (and updates) batch statistics;
            defaults to `train`. False while training = frozen BatchNorm, which is a
            separate choice from freezing parameters.
          with_embedding: also return the pooled embedding the head reads.
        Returns:
          [N, num_classes] float32 logits; with `with_embedding`, (logits, embedding [N, D] float32),
          D the backbone's last width (1280 for EfficientNet-B0/Lite0).
        """
        mean = self.variable("preprocess", "mean", lambda: jnp.asarray(self.input_mean, jnp.float32))
        std = self.variable("preprocess", "std", lambda: jnp.asarray(self.input_std, jnp.float32))
        x = ((images - mean.value) / std.value).astype(self.dtype)
        features = self.backbone(x, train=train, update_batch_stats=update_batch_stats)
        return Head(self.num_classes, self.dropout_rate, name="head")(
            features, train=train, with_embedding=with_embedding
        )
