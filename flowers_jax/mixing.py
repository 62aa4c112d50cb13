"""Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) of a training batch, inside the jitted step.

Each example is mixed with its partner in the reversed batch (timm's convention: no gather of a
random permutation across devices), with one mixing weight lam per batch drawn from
Beta(alpha, alpha). Mixup blends whole images: lam * x + (1 - lam) * partner. CutMix pastes a box
of the partner, of area about (1 - lam) of the image, and lam becomes the share of the image left
unpasted (exact after clipping the box at the border). With both alphas > 0, each batch picks one
of the two with probability 0.5. The targets are lam * one_hot(label) + (1 - lam) * one_hot(partner).

The randomness is the step's key, so a step's mixing is a function of (seed, step): a resumed run
mixes exactly as an uninterrupted one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def enabled(mixup_alpha: float, cutmix_alpha: float) -> bool:
    """Whether the step mixes at all (alphas of 0 switch each off)."""
    return mixup_alpha > 0 or cutmix_alpha > 0


def cutmix_box(rng: jax.Array, lam: jax.Array, height: int, width: int) -> tuple[jax.Array, jax.Array]:
    """A box of side fractions sqrt(1 - lam) around a uniform centre, clipped at the border (timm's
    `rand_bbox`).

    Returns:
      (inside [height, width] bool, lam [] float32 = 1 - the box's share of the image).
    """
    ky, kx = jax.random.split(rng)
    ratio = jnp.sqrt(1.0 - lam)
    half_h = (height * ratio).astype(jnp.int32) // 2
    half_w = (width * ratio).astype(jnp.int32) // 2
    cy = jax.random.randint(ky, (), 0, height)
    cx = jax.random.randint(kx, (), 0, width)
    rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
    inside = (
        (rows >= jnp.clip(cy - half_h, 0, height))
        & (rows < jnp.clip(cy + half_h, 0, height))
        & (cols >= jnp.clip(cx - half_w, 0, width))
        & (cols < jnp.clip(cx + half_w, 0, width))
    )
    return inside, 1.0 - jnp.mean(inside.astype(jnp.float32))


def mix_batch(
    rng: jax.Array, images: jax.Array, *, mixup_alpha: float, cutmix_alpha: float
) -> tuple[jax.Array, jax.Array]:
    """Mixes each image with its partner images[::-1].

    Args:
      rng: the step's key for mixing.
      images: [B, H, W, 3] float32.
      mixup_alpha, cutmix_alpha: Beta(alpha, alpha) of each; 0 = that one off (not both).
    Returns:
      (mixed images [B, H, W, 3], lam [] float32: the weight of each example's own label).
    """
    k_mixup, k_cutmix, k_box, k_pick = jax.random.split(rng, 4)
    _, height, width, _ = images.shape
    partner = images[::-1]
    # Both branches are a few elementwise ops on the batch: computing both and selecting costs
    # nothing next to the network, and keeps one traced graph for either choice.
    if mixup_alpha > 0:
        lam_mixup = jax.random.beta(k_mixup, mixup_alpha, mixup_alpha).astype(jnp.float32)
        mixed_up = lam_mixup * images + (1.0 - lam_mixup) * partner
    if cutmix_alpha > 0:
        inside, lam_cutmix = cutmix_box(k_box, jax.random.beta(k_cutmix, cutmix_alpha, cutmix_alpha), height, width)
        cut = jnp.where(inside[None, :, :, None], partner, images)
    if not cutmix_alpha > 0:
        return mixed_up, lam_mixup
    if not mixup_alpha > 0:
        return cut, lam_cutmix
    use_cutmix = jax.random.bernoulli(k_pick, 0.5)
    return jnp.where(use_cutmix, cut, mixed_up), jnp.where(use_cutmix, lam_cutmix, lam_mixup)


def mixed_targets(labels: jax.Array, lam: jax.Array, class_weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Soft targets and loss weights of a batch mixed by `mix_batch`.

    Args:
      labels: [B] int32, of the unmixed batch.
      lam: [] the weight of each example's own label.
      class_weights: [C] per-class loss weights.
    Returns:
      (targets [B, C] = lam * one_hot(labels) + (1 - lam) * one_hot(labels[::-1]), rows summing to 1;
       weights [B], the same mixture of the two labels' class weights).
    """
    own = jax.nn.one_hot(labels, class_weights.shape[0])
    weights = class_weights[labels]
    return lam * own + (1.0 - lam) * own[::-1], lam * weights + (1.0 - lam) * weights[::-1]


def mix(
    rng: jax.Array, batch: dict[str, jax.Array], mixup_alpha: float, cutmix_alpha: float
) -> tuple[dict[str, jax.Array], jax.Array]:
    """The train step's mixing of {"image", "label"}: ({"image": mixed, "label", "lam"}, dominant labels
    [B]). Train accuracy counts against the dominant label: the only one an argmax can hit."""
    image, lam = mix_batch(rng, batch["image"], mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha)
    return {"image": image, "label": batch["label"], "lam": lam}, dominant_labels(batch["label"], lam)


def dominant_labels(labels: jax.Array, lam: jax.Array) -> jax.Array:
    """[B] the label with the larger weight in each mixed example (its own when lam >= 0.5)."""
    return jnp.where(lam >= 0.5, labels, labels[::-1])
