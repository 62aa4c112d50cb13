"""The small export the browser tests share (one per session: exporting takes minutes here).

The smoke configuration's network (MobileNetV2 0.35 at 64x64, 8 classes) with sensitised random
variables (BatchNorm statistics measured on real photos, O(10) logits that differ between
photos; benchmarks/sensitised.py), so each check can fail. Every runtime is parity-checked.
"""

from __future__ import annotations

import pathlib

MODEL, SIZE = "mobilenet_v2_035", 64
CLASSES = [
    "pink primrose",
    "hard-leaved pocket orchid",
    "canterbury bells",
    "sweet pea",
    "wild geranium",
    "tiger lily",
    "moon orchid",
    "bird of paradise",
]


def make(out: pathlib.Path) -> tuple[pathlib.Path, dict]:
    """Exports into `out` (TF.js checked in Node on wasm and cpu, ONNX, jax2tf); returns (out, variables)."""
    from benchmarks.sensitised import sensitised_variables
    from flowers_jax.export import exporter, images

    photos = images.skimage_photos(count=32, size=SIZE)
    variables = sensitised_variables(MODEL, num_classes=len(CLASSES), images=photos[::2])
    result = exporter.export_model(
        out,
        model_name=MODEL,
        variables=variables,
        class_names=CLASSES,
        image_size=SIZE,
        checkpoint_info={"source": "sensitised random variables (test)"},
        val_metrics={"accuracy": 0.5},
        images_for_parity=photos,
        parity_images_source="scikit-image",
        tfjs_backends=("wasm", "cpu"),
    )
    assert result.out_dir == out
    return out, variables
