"""SavedModel -> ONNX with tf2onnx, and running it with onnxruntime.

(Named `onnx_export`, not `onnx`, so that `import onnx` inside this package means the library.)
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import numpy as np

from flowers_jax.export.twin import INPUT_NAME, OUTPUT_NAMES

# Opset 17 runs in onnxruntime >= 1.13 and onnxruntime-web; nothing in these models needs newer.
OPSET = 17


def convert(saved_model_dir: str | pathlib.Path, out_path: str | pathlib.Path, *, opset: int = OPSET) -> pathlib.Path:
    """Writes `out_path` (.onnx) from the SavedModel's `serving_default` signature.

    Runs tf2onnx's documented command line in a child process: its Python API has no
    SavedModel entry point (the CLI's own path goes through private helpers), and the
    child keeps the conversion's graph-mode TF state out of this process.
    """
    out_path = pathlib.Path(out_path)
    cmd = [sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(saved_model_dir)]
    cmd += ["--signature_def", "serving_default", "--opset", str(opset), "--output", str(out_path)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not out_path.exists():
        raise RuntimeError(f"tf2onnx failed (exit {done.returncode}): {' '.join(cmd)}\n{done.stderr[-4000:]}")
    return out_path


def run(onnx_path: str | pathlib.Path, images: np.ndarray) -> dict[str, np.ndarray]:
    """{output name: [N, ...]} from onnxruntime (CPU) on images [N, S, S, 3] RGB in [0, 255]."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    if inputs != [INPUT_NAME] or sorted(outputs) != sorted(OUTPUT_NAMES):
        raise RuntimeError(
            f"{onnx_path}: inputs {inputs}, outputs {outputs}; expected {INPUT_NAME!r} -> {OUTPUT_NAMES}"
        )
    values = session.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(images, np.float32)})
    return dict(zip(OUTPUT_NAMES, values, strict=True))
