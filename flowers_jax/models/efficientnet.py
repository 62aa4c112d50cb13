"""EfficientNet B0-B7 and EfficientNet-Lite0-4 architecture tables.

B0-B7 follow `keras.applications.efficientnet` (Tan & Le, 2019): swish,
squeeze-excite, width/depth scaling of every stage. Lite0-4 follow TensorFlow's
`efficientnet_lite_builder`: ReLU6, no squeeze-excite, and stem, head and the
first and last stages left unscaled ("fix_head_stem").
"""

from __future__ import annotations

import math

from flowers_jax.models.mbconv import Arch, BlockSpec, LayerNames

# Stages of B0: (kernel, repeats, in, out, expand ratio, stride).
_STAGES = (
    (3, 1, 32, 16, 1, 1),
    (3, 2, 16, 24, 6, 2),
    (5, 2, 24, 40, 6, 2),
    (3, 3, 40, 80, 6, 2),
    (5, 3, 80, 112, 6, 1),
    (5, 4, 112, 192, 6, 2),
    (3, 1, 192, 320, 6, 1),
)
_SE_RATIO = 0.25
_DROP_CONNECT_RATE = 0.2

# name -> (width multiplier, depth multiplier, resolution, head dropout)
VARIANTS = {
    "b0": (1.0, 1.0, 224, 0.2),
    "b1": (1.0, 1.1, 240, 0.2),
    "b2": (1.1, 1.2, 260, 0.3),
    "b3": (1.2, 1.4, 300, 0.3),
    "b4": (1.4, 1.8, 380, 0.4),
    "b5": (1.6, 2.2, 456, 0.4),
    "b6": (1.8, 2.6, 528, 0.5),
    "b7": (2.0, 3.1, 600, 0.5),
    "lite0": (1.0, 1.0, 224, 0.2),
    "lite1": (1.0, 1.1, 240, 0.2),
    "lite2": (1.1, 1.2, 260, 0.3),
    "lite3": (1.2, 1.4, 280, 0.3),
    "lite4": (1.4, 1.8, 300, 0.3),
}

NAMES = LayerNames(
    stem_conv="stem_conv",
    stem_bn="stem_bn",
    expand_conv="expand_conv",
    expand_bn="expand_bn",
    dwconv="dwconv",
    dwconv_bn="bn",
    project_conv="project_conv",
    project_bn="project_bn",
    top_conv="top_conv",
    top_bn="top_bn",
)

# Keras's ImageNet EfficientNets normalise with torchvision's mean/std (in [0, 255] units).
KERAS_IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
KERAS_IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
# TF's EfficientNet-Lite checkpoints are fed (x - 127) / 128 ("inception-style", for quantisation).
LITE_MEAN = (127.0, 127.0, 127.0)
LITE_STD = (128.0, 128.0, 128.0)


def round_filters(filters: float, width: float, divisor: int = 8) -> int:
    """Keras/TF `round_filters`: scale by width, round to a multiple of divisor, lose < 10%."""
    filters *= width
    new = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    if new < 0.9 * filters:
        new += divisor
    return int(new)


def arch(variant: str) -> Arch:
    """The architecture table of `efficientnet_<variant>` (e.g. "b0", "lite0")."""
    width, depth, resolution, dropout = VARIANTS[variant]
    lite = variant.startswith("lite")
    n_stages = len(_STAGES)

    def repeats(stage: int, r: int) -> int:
        if lite and stage in (0, n_stages - 1):
            return r  # fix_head_stem keeps the first and last stages' depth.
        return int(math.ceil(depth * r))

    stem_ch = 32 if lite else round_filters(32, width)
    total = sum(repeats(i, s[1]) for i, s in enumerate(_STAGES))
    blocks, in_ch, b = [], stem_ch, 0
    for i, (kernel, r, nominal_in, out, expand, stride) in enumerate(_STAGES):
        out_ch = round_filters(out, width)
        for j in range(repeats(i, r)):
            nominal = round_filters(nominal_in, width) if j == 0 else out_ch
            blocks.append(
                BlockSpec(
                    prefix=f"block{i + 1}{chr(ord('a') + j)}_",
                    in_ch=in_ch,
                    out_ch=out_ch,
                    expand_ch=in_ch * expand,
                    kernel=kernel,
                    stride=stride if j == 0 else 1,
                    # Keras sizes squeeze-excite from the block's nominal input width.
                    se_ch=0 if lite else max(1, int(nominal * _SE_RATIO)),
                    drop_rate=_DROP_CONNECT_RATE * b / total,
                )
            )
            in_ch, b = out_ch, b + 1
    return Arch(
        name=f"efficientnet_{variant}",
        family="efficientnet",
        blocks=tuple(blocks),
        stem_ch=stem_ch,
        top_ch=1280 if lite else round_filters(1280, width),
        activation="relu6" if lite else "swish",
        names=NAMES,
        resolution=resolution,
        dropout_rate=dropout,
        input_mean=LITE_MEAN if lite else KERAS_IMAGENET_MEAN,
        input_std=LITE_STD if lite else KERAS_IMAGENET_STD,
    )
