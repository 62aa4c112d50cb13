"""`export_model`: Flax variables -> TF.js, ONNX, jax2tf SavedModel, web demo, metadata and parity.

Output folder:
  index.html app.js style.css vendor/   the web demo and its TF.js runtime (serve the folder)
  manifest.webmanifest icons/ sw.js     installable app, offline (the service worker's cache)
  tfjs_model/model.json + shards        TF.js graph model (from the Keras twin's SavedModel)
  model.onnx                            ONNX (tf2onnx, same SavedModel)
  keras_saved_model/                    the Keras twin's `model.export()` SavedModel
  jax2tf_saved_model/                   the exact JAX function, for TF Serving
  metadata.json  parity.json
  embedding_stats.bin                   the training photos' embedding statistics, float32 (metadata.json
                                        trust.embedding_stats gives each array's name and shape, in order)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import pathlib
import shutil
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from flowers_jax import abstain, models
from flowers_jax.export import metadata, onnx_export, parity, savedmodel, tfjs, twin, web

log = logging.getLogger(__name__)

MIN_PARITY_IMAGES = 32
# float16 weights round every weight to 11 significant bits: logits move by ~1e-2, so the
# float32 limit on |dprob| cannot hold. Such a model is held to top-1 agreement and this.
FLOAT16_MAX_ABS_PROB = 2e-2

TFJS_DIR, ONNX_FILE, STATS_FILE = "tfjs_model", "model.onnx", "embedding_stats.bin"
KERAS_SAVED_MODEL, JAX2TF_SAVED_MODEL = "keras_saved_model", "jax2tf_saved_model"
MARKER = ".flowers_jax_export"  # lets overwrite=True delete only folders an export wrote


def write_stats(path: pathlib.Path, stats: abstain.EmbeddingStats) -> dict[str, Any]:
    """Writes the arrays of `stats` one after another as little-endian float32 (what a browser's
    Float32Array reads without copying) and returns their layout for metadata.json."""
    arrays = stats.arrays()
    with open(path, "wb") as f:
        for a in arrays.values():
            np.ascontiguousarray(a, "<f4").tofile(f)
    return {
        "file": path.name,
        "dtype": "float32",
        "arrays": [{"name": k, "shape": list(np.shape(a))} for k, a in arrays.items()],
    }


@dataclasses.dataclass
class ExportResult:
    """What `export_model` wrote. `parity` is parity.json's content."""

    out_dir: pathlib.Path
    files: dict[str, str]
    parity: dict
    metadata: dict


def _prepare_out_dir(out_dir: pathlib.Path, overwrite: bool) -> None:
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out_dir} is not empty; choose a new folder or pass overwrite=True (--overwrite)")
        if not (out_dir / MARKER).exists():
            raise FileExistsError(f"{out_dir} is not empty and holds no earlier export; refusing to delete it")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MARKER).write_text("written by flowers_jax.export; overwrite=True may delete this folder\n")


def _validate(model_name: str, variables: dict, class_names: Sequence[str], image_size: int, images: np.ndarray) -> int:
    twin.check_supported(model_name)
    try:
        num_classes = int(variables["params"]["head"]["predictions"]["kernel"].shape[-1])
    except (KeyError, TypeError) as e:
        raise ValueError(f"variables have no head (params/head/predictions/kernel): {e}") from e
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for a {num_classes}-way head; give one name per logit")
    if images.ndim != 4 or images.shape[1:] != (image_size, image_size, 3):
        raise ValueError(f"parity images have shape {images.shape}; need [N, {image_size}, {image_size}, 3]")
    if len(images) < MIN_PARITY_IMAGES:
        raise ValueError(f"{len(images)} parity images; the check needs at least {MIN_PARITY_IMAGES} real photos")
    return num_classes


def flax_outputs(model_name: str, variables: dict, images: np.ndarray, *, batch_size: int = 16) -> parity.Outputs:
    """The reference: {"logits": [N, C], "embedding": [N, D]} of `models.create(model_name, C)` on
    images [N, S, S, 3]."""
    num_classes = int(variables["params"]["head"]["predictions"]["kernel"].shape[-1])
    apply = jax.jit(functools.partial(models.create(model_name, num_classes).apply, with_embedding=True))
    outs = [apply(variables, images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    return {
        twin.LOGITS: np.concatenate([np.asarray(o[0]) for o in outs]),
        twin.EMBEDDING: np.concatenate([np.asarray(o[1]) for o in outs]),
    }


def flax_logits(model_name: str, variables: dict, images: np.ndarray, *, batch_size: int = 16) -> np.ndarray:
    """Logits [N, C] of `models.create(model_name, C).apply` on images [N, S, S, 3]."""
    return flax_outputs(model_name, variables, images, batch_size=batch_size)[twin.LOGITS]


def _twin_outputs(keras_model: Any, images: np.ndarray, batch_size: int = 16) -> parity.Outputs:
    outs = [keras_model(images[i : i + batch_size], training=False) for i in range(0, len(images), batch_size)]
    return {k: np.concatenate([np.asarray(o[k]) for o in outs]) for k in twin.OUTPUT_NAMES}


def _sizes(out_dir: pathlib.Path, files: dict[str, str]) -> dict[str, int]:
    def size(p: pathlib.Path) -> int:
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size

    return {role: size(out_dir / rel) for role, rel in files.items()}


def export_model(
    out_dir: str | pathlib.Path,
    *,
    model_name: str,
    variables: dict,
    class_names: Sequence[str],
    image_size: int,
    checkpoint_info: dict[str, Any],
    val_metrics: dict[str, Any] | None,
    images_for_parity: np.ndarray,
    parity_images_source: str = "",
    licences: dict[str, str] | None = None,
    float16: bool = False,
    tfjs_backends: Sequence[str] = ("wasm",),
    jax2tf: bool = True,
    overwrite: bool = False,
    trust: dict[str, Any] | None = None,
    embedding_stats: abstain.EmbeddingStats | None = None,
    accuracy: dict[str, Any] | None = None,
) -> ExportResult:
    """Exports a trained model and checks every artefact against Flax before reporting success.

    Args:
      out_dir: output folder (must be new or empty, or an earlier export with overwrite=True).
      model_name: one of `models.names()`.
      variables: {"params", "batch_stats", "preprocess"} of `models.create(model_name, C)`.
      class_names: [C] names in logit order.
      image_size: input side S; the exported models take [N, S, S, 3].
      checkpoint_info: provenance of the variables (workdir, checkpoint, step...), for metadata.json.
      val_metrics: validation metrics of the checkpoint (or None), for metadata.json.
      images_for_parity: [N >= 32, S, S, 3] float32 real photos, RGB in [0, 255].
      parity_images_source: where those photos came from (for parity.json).
      licences: {"weights", "data", "code"} (missing: defaults); float16: float16 TF.js weights.
      tfjs_backends: TF.js backends to check in Node ("wasm", "cpu").
      jax2tf: also write (and check) the jax2tf SavedModel.
      overwrite: replace an earlier export in out_dir.
      trust: `trust.Calibration.for_export()`: T baked into every probabilities output, the rest to
        metadata.json for the page; None: uncalibrated (T = 1; the page says so).
      embedding_stats: the training embeddings' statistics (open-set scores, "add a species").
      accuracy: this export's measured accuracy (`metadata.accuracy_for`); None: "not measured".
    Returns:
      ExportResult.
    Raises:
      twin.TwinUnsupportedError: a model the Keras twin does not cover; parity.ParityError: an
      artefact disagrees with Flax (parity.json is written first).
    """
    out_dir = pathlib.Path(out_dir)
    images = np.asarray(images_for_parity, np.float32)
    num_classes = _validate(model_name, variables, class_names, image_size, images)
    variables = jax.tree.map(lambda v: np.asarray(v, np.float32), jax.device_get(variables))
    web.node_modules()  # fail now, not after the conversions, if npm ci was not run
    _prepare_out_dir(out_dir, overwrite)
    step = _stepper()
    temperature = float(trust["temperature"]) if trust else 1.0
    keras_model, reference, runtimes = _checked_twin(model_name, variables, images, image_size, temperature, step)
    model_json, onnx_path, files = _write_artefacts(
        out_dir, keras_model, step, model_name, variables, image_size, temperature, float16=float16, jax2tf=jax2tf
    )
    timings = _run_artefacts(runtimes, images, model_json, onnx_path, out_dir, tfjs_backends, step, jax2tf=jax2tf)
    image_info = {"count": len(images), "size": image_size, "source": parity_images_source}
    report = _parity_report(reference, runtimes, timings, image_info, out_dir, temperature=temperature, float16=float16)
    step("parity passed; writing metadata.json and the web demo")
    meta = _write_page(
        out_dir,
        files,
        trust=trust,
        embedding_stats=embedding_stats,
        licences=licences,
        num_classes=num_classes,
        model_name=model_name,
        class_names=class_names,
        image_size=image_size,
        checkpoint_info=checkpoint_info,
        val_metrics=val_metrics,
        accuracy=accuracy,
        float16=float16,
        embedding_dim=int(reference[twin.EMBEDDING].shape[-1]),
    )
    step(f"done: {out_dir}")
    return ExportResult(out_dir=out_dir, files=files, parity=report, metadata=meta)


def _stepper() -> Callable[[str], None]:
    """A logger of the export's steps, each with the seconds since the export started."""
    t0 = time.perf_counter()

    def step(msg: str) -> None:
        log.info("[%6.1fs] %s", time.perf_counter() - t0, msg)

    return step


def _checked_twin(
    model_name: str,
    variables: dict,
    images: np.ndarray,
    image_size: int,
    temperature: float,
    step: Callable[[str], None],
) -> tuple[Any, parity.Outputs, dict[str, parity.Outputs]]:
    """The Keras twin, checked against Flax on `images` before anything is written from it.

    Returns (twin, Flax's outputs, {"keras_twin": the twin's outputs}).
    """
    step(f"Flax reference on {len(images)} images")
    reference = flax_outputs(model_name, variables, images)
    keras_model = twin.twin_from_variables(model_name, variables, image_size=image_size, temperature=temperature)
    runtimes: dict[str, parity.Outputs] = {"keras_twin": _twin_outputs(keras_model, images)}
    parity.check(parity.compare(reference, runtimes, temperature=temperature))  # a wrong twin: stop now
    step("Keras twin matches Flax; writing its SavedModel")
    return keras_model, reference, runtimes


def _write_artefacts(
    out_dir: pathlib.Path,
    keras_model: Any,
    step: Callable[[str], None],
    model_name: str,
    variables: dict,
    image_size: int,
    temperature: float,
    *,
    float16: bool,
    jax2tf: bool,
) -> tuple[pathlib.Path, pathlib.Path, dict[str, str]]:
    """Writes the twin's SavedModel, TF.js, ONNX and (if jax2tf) the jax2tf SavedModel.

    Returns (TF.js model.json, model.onnx, {role: path relative to out_dir}).
    """
    files = {"keras_saved_model": KERAS_SAVED_MODEL, "tfjs": f"{TFJS_DIR}/model.json", "onnx": ONNX_FILE}
    saved = savedmodel.export_twin(keras_model, out_dir / KERAS_SAVED_MODEL)
    step("TF.js graph model")
    model_json = tfjs.convert(saved, out_dir / TFJS_DIR, float16=float16)
    step("ONNX")
    onnx_path = onnx_export.convert(saved, out_dir / ONNX_FILE)
    if jax2tf:
        step("jax2tf SavedModel")
        savedmodel.export_jax2tf(
            out_dir / JAX2TF_SAVED_MODEL,
            model_name=model_name,
            variables=variables,
            image_size=image_size,
            temperature=temperature,
        )
        files["jax2tf_saved_model"] = JAX2TF_SAVED_MODEL
    return model_json, onnx_path, files


def _run_artefacts(
    runtimes: dict[str, parity.Outputs],
    images: np.ndarray,
    model_json: pathlib.Path,
    onnx_path: pathlib.Path,
    out_dir: pathlib.Path,
    tfjs_backends: Sequence[str],
    step: Callable[[str], None],
    *,
    jax2tf: bool,
) -> dict[str, float]:
    """Adds each written artefact's outputs on `images` to `runtimes`; returns TF.js's ms per image."""
    step("running every artefact on the parity images")
    timings = {}
    for backend in tfjs_backends:
        outputs, ms = parity.run_tfjs_node(model_json, images, node_dir=web.NODE_DIR, backend=backend)
        runtimes[f"tfjs_node_{backend}"] = outputs
        timings[f"tfjs_node_{backend}"] = ms
    runtimes["onnxruntime"] = onnx_export.run(onnx_path, images)
    if jax2tf:
        runtimes["jax2tf_saved_model"] = savedmodel.run_savedmodel(out_dir / JAX2TF_SAVED_MODEL, images)
    return timings


def _parity_report(
    reference: parity.Outputs,
    runtimes: dict[str, parity.Outputs],
    timings: dict[str, float],
    image_info: dict[str, Any],
    out_dir: pathlib.Path,
    *,
    temperature: float,
    float16: bool,
) -> dict[str, Any]:
    """Compares every runtime with Flax and writes parity.json (pass or fail); returns the report.

    With float16, the TF.js runtimes (the keys of `timings`) are held to FLOAT16_MAX_ABS_PROB.
    Raises ParityError when an artefact disagrees with Flax.
    """
    report = parity.compare(reference, runtimes, temperature=temperature)
    report["images"] = image_info
    report["tfjs_node_ms_per_image"] = timings
    if float16:
        report["thresholds"]["max_abs_prob_overrides"] = {k: FLOAT16_MAX_ABS_PROB for k in timings}
        report["thresholds"]["max_relative_embedding_error_overrides"] = {k: FLOAT16_MAX_ABS_PROB for k in timings}
    bad = parity.failures(report)
    report["passed"] = not bad
    (out_dir / "parity.json").write_text(json.dumps(report, indent=2) + "\n")
    if bad:
        raise parity.ParityError(
            "exported model(s) disagree with Flax (numbers in parity.json):\n  " + "\n  ".join(bad)
        )
    return report


def _write_page(
    out_dir: pathlib.Path,
    files: dict[str, str],
    *,
    trust: dict[str, Any] | None,
    embedding_stats: abstain.EmbeddingStats | None,
    licences: dict[str, str] | None,
    num_classes: int,
    checkpoint_info: dict[str, Any],
    **fields: Any,
) -> dict[str, Any]:
    """Writes the web demo, embedding_stats.bin (with stats) and metadata.json (`metadata.build` of
    `fields`, the licences and the artefacts' sizes); returns the metadata. Adds the stats to `files`."""
    web.install(out_dir)
    if embedding_stats is not None:
        trust = dict(trust or {}, embedding_stats=write_stats(out_dir / STATS_FILE, embedding_stats))
        files["embedding_stats"] = STATS_FILE
    licences = {"data": metadata.DATA_LICENCE, "code": "Apache-2.0 (flowers_jax)", **(licences or {})}
    licences.setdefault("weights", metadata.weights_licence(checkpoint_info.get("pretrained")))
    meta = metadata.build(checkpoint_info=checkpoint_info, licences=licences, files=files, trust=trust, **fields)
    meta["sizes_bytes"] = _sizes(out_dir, {k: v.rsplit("/model.json", 1)[0] for k, v in files.items()})
    meta["num_classes"] = num_classes
    (out_dir / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    web.finish(out_dir)  # last: the service worker's cache version hashes every file the page uses
    return meta
