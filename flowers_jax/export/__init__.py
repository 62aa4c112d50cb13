"""Export: a Flax model -> Keras twin -> TF.js graph model, ONNX, jax2tf SavedModel, web demo.

    from flowers_jax import export
    result = export.export_model("out/b0", model_name="efficientnet_b0", variables=variables,
                                 class_names=names, image_size=224, checkpoint_info={...},
                                 val_metrics=None, images_for_parity=photos)   # [>= 32, 224, 224, 3]

docs/design.md (§export) says why TF.js and ONNX go through a Keras twin and not jax2tf.
Needs the export toolchain (export/install.sh): tensorflowjs (pip --no-deps), tf2onnx,
onnxruntime, and TF.js from npm in export/node_modules.
"""

from flowers_jax.export.exporter import ExportResult, export_model, flax_logits
from flowers_jax.export.parity import ParityError
from flowers_jax.export.twin import TwinUnsupportedError, build_twin, copy_variables, twin_from_variables

__all__ = [
    "ExportResult",
    "ParityError",
    "TwinUnsupportedError",
    "build_twin",
    "copy_variables",
    "export_model",
    "flax_logits",
    "twin_from_variables",
]
