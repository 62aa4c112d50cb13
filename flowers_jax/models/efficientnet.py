"""EfficientNet B0-B7 and EfficientNet-Lite0-4 architecture tables.

B0-B7 follow `keras.applications.efficientnet` (Tan & Le, 2019): swish,
squeeze-excite, width/depth scaling of every stage. Lite0-4 follow TensorFlow's
`efficientnet_lite_builder`: ReLU6, no squeeze-excite, and stem, head and the
first and last stages left unscaled ("fix_head_stem").
"""

from __future__ import annotations

import math

from flowers_jax.models.mbconv import Arch, LayerNames, make_divisible, stack

# Stages of B0: (kernel, repeats, out channels, expand ratio, stride).
_STAGES = (
    (3, 1, 16, 1, 1),
    (3, 2, 24, 6, 2),
    (5, 2, 40, 6, 2),
    (3, 3, 80, 6, 2),
    (5, 3, 112, 6, 1),
    (5, 4, 192, 6, 2),
    (3, 1, 320, 6, 1),
)
_SE_RATIO = 0.25
_DROP_CONNECT_RATE = 0.2

# Compound scaling (Tan & Le, 2019): the width and depth multipliers of variant i. EfficientNet-Lite i
# takes B i's (TF's efficientnet_lite_builder) at its own resolution and head dropout.
_WIDTH = (1.0, 1.0, 1.1, 1.2, 1.4, 1.6, 1.8, 2.0)
_DEPTH = (1.0, 1.1, 1.2, 1.4, 1.8, 2.2, 2.6, 3.1)
_RESOLUTION = {"b": (224, 240, 260, 300, 380, 456, 528, 600), "lite": (224, 240, 260, 280, 300)}
_DROPOUT = {"b": (0.2, 0.2, 0.3, 0.3, 0.4, 0.4, 0.5, 0.5), "lite": (0.2, 0.2, 0.3, 0.3, 0.3)}

# name ("b0".."b7", "lite0".."lite4") -> (width multiplier, depth multiplier, resolution, head dropout)
VARIANTS = {
    f"{kind}{i}": (_WIDTH[i], _DEPTH[i], resolution, dropout)
    for kind in ("b", "lite")
    for i, (resolution, dropout) in enumerate(zip(_RESOLUTION[kind], _DROPOUT[kind], strict=True))
}

NAMES = LayerNames.of("efficientnet")

# Keras's ImageNet EfficientNets normalise with torchvision's mean/std (in [0, 255] units).
KERAS_IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
KERAS_IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
# TF's EfficientNet-Lite checkpoints are fed (x - 127) / 128 ("inception-style", for quantisation).
LITE_MEAN = (127.0, 127.0, 127.0)
LITE_STD = (128.0, 128.0, 128.0)


def round_filters(filters: float, width: float, divisor: int = 8) -> int:
    """Keras/TF `round_filters`: scale by width, round to a multiple of divisor, lose < 10%."""
    return make_divisible(filters * width, divisor)


def arch(variant: str) -> Arch:
    """The architecture table of `efficientnet_<variant>` (e.g. "b0", "lite0")."""
    width, depth, resolution, dropout = VARIANTS[variant]
    lite = variant.startswith("lite")
    n_stages = len(_STAGES)

    def repeats(stage: int, r: int) -> int:
        if lite and stage in (0, n_stages - 1):
            return r  # fix_head_stem keeps the first and last stages' depth.
        return int(math.ceil(depth * r))

    stages = [
        (round_filters(out, width), repeats(i, r), kernel, stride, expand)
        for i, (kernel, r, out, expand, stride) in enumerate(_STAGES)
    ]
    stem_ch = 32 if lite else round_filters(32, width)
    blocks = stack(
        stem_ch,
        stages,
        lambda stage, j, b: f"block{stage + 1}{chr(ord('a') + j)}_",
        se_ratio=0.0 if lite else _SE_RATIO,  # Keras sizes squeeze-excite from the block's input width
        drop_connect_rate=_DROP_CONNECT_RATE,
    )
    return Arch(
        name=f"efficientnet_{variant}",
        family="efficientnet",
        blocks=blocks,
        stem_ch=stem_ch,
        top_ch=1280 if lite else round_filters(1280, width),
        activation="relu6" if lite else "swish",
        names=NAMES,
        resolution=resolution,
        dropout_rate=dropout,
        input_mean=LITE_MEAN if lite else KERAS_IMAGENET_MEAN,
        input_std=LITE_STD if lite else KERAS_IMAGENET_STD,
    )
