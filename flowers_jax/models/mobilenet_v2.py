"""MobileNetV2 architecture tables (Sandler et al., 2018), as `keras.applications.MobileNetV2`."""

from __future__ import annotations

from flowers_jax.models.mbconv import Arch, LayerNames, make_divisible, stack

# (out channels, stride of the first block, expansion, repeats)
_STAGES = (
    (16, 1, 1, 1),
    (24, 2, 6, 2),
    (32, 2, 6, 3),
    (64, 2, 6, 4),
    (96, 1, 6, 3),
    (160, 2, 6, 3),
    (320, 1, 6, 1),
)

# Width multipliers Keras publishes ImageNet weights for; name suffix -> alpha.
ALPHAS = {"035": 0.35, "050": 0.5, "075": 0.75, "100": 1.0, "130": 1.3, "140": 1.4}

NAMES = LayerNames.of("mobilenet_v2")

# Keras's MobileNetV2 `preprocess_input` is x / 127.5 - 1; here it lives in the model.
MEAN = (127.5, 127.5, 127.5)
STD = (127.5, 127.5, 127.5)


def arch(alpha_key: str = "100") -> Arch:
    """The table of `mobilenet_v2_<alpha_key>` (alpha_key in `ALPHAS`)."""
    alpha = ALPHAS[alpha_key]
    stem_ch = make_divisible(32 * alpha)
    stages = [
        (make_divisible(int(out * alpha)), repeats, 3, stride, expansion) for out, stride, expansion, repeats in _STAGES
    ]
    blocks = stack(stem_ch, stages, lambda stage, j, b: f"block_{b}_" if b else "expanded_conv_")
    return Arch(
        name=f"mobilenet_v2_{alpha_key}",
        family="mobilenet_v2",
        blocks=blocks,
        stem_ch=stem_ch,
        top_ch=make_divisible(1280 * alpha) if alpha > 1.0 else 1280,
        activation="relu6",
        names=NAMES,
        resolution=224,
        dropout_rate=0.2,  # Keras's MobileNetV2 has no head dropout; ours is a fine-tuning default.
        input_mean=MEAN,
        input_std=STD,
        bn_momentum=0.999,
    )
