"""`--mode eval --photos DIR`: a checkpoint scored on the original photos, fed as the web page feeds them.

    python -m flowers_jax.main --config C --workdir W --mode eval --split test --photos ../shared/data/oxford102
        [--checkpoint best] [--config.data.image_size=S] [--onnx EXPORT_DIR]

The TFRecord eval (flowers_jax/evaluation.py) reads the photos the converter stored (their centre
square resized to the stored size, JPEG quality 95) and resizes those again to the model's size.
The page (export/web/app.js, runModel) reads the photo itself: the browser decodes it (accurate
integer DCT), shows it upright (EXIF orientation), and its canvas resizes the largest centred
square straight to the model's size. This path does the same from the original files
(`export.images.read_upright`, `export.images.page_resize`, checked against Chromium's pixels in
tests/test_page_eval.py), so its figure is the one a person with the page gets on those photos.

- Photos, labels and splits are found as the converter finds them (flowers_jax/data/convert.py):
  the Oxford-102 layout (labels.csv, or imagelabels.mat + setid.mat) or class folders
  (<DIR>/<class>/*.jpg, split by the converter's path hash at its default --val-fraction, or
  <DIR>/{train,val,test}/<class>/). Class indices are the converter's, so they match the
  TFRecords made from the same folder; the class names are checked against the run's dataset when
  it is readable here.
- The size: --config.data.image_size when given; else the one val chose (W/test_size.json), else
  W/calibration.json's, else the training size (flowers_jax/chosen_size.py). The calibration is used
  and refused exactly as eval does (another step or size: refused with the command to run;
  --config.eval.calibration=off evaluates uncalibrated). No test-time augmentation: the page has none.
- Scored by the Flax model of the checkpoint, or with --onnx by an export's model.onnx (onnxruntime),
  refused unless the export is of that checkpoint step at that size.

Writes <W>/eval/<checkpoint>/page-<photos folder>-<split>@<S>px[-onnx]/: the reports eval writes, with
metrics.json's "source" = "page" (the TFRecord eval's is "tfrecords"), so neither overwrites the other.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
from typing import Any

import jax
import ml_collections
import numpy as np
import tensorflow as tf

from flowers_jax import data, distributed, evaluation, reports
from flowers_jax.data import convert
from flowers_jax.evaluation import EvalError
from flowers_jax.export import images, twin

PAGE = "page"  # metrics.json "source" of a page-fed eval
RESAMPLER = (
    "flowers_jax.export.images.page_resize: the largest centred square, Skia's trilinear mipmaps as "
    "Chromium's canvas draws it (imageSmoothingQuality 'high')"
)


def find_photos(root: str, split: str) -> tuple[list[convert.Photo], list[str], dict[str, Any]]:
    """The labelled photos of `split` under `root` (see the module docstring), the class names, and
    the converter's description of the source."""
    oxford = any(tf.io.gfile.exists(os.path.join(root, f)) for f in ("labels.csv", "imagelabels.mat"))
    try:
        photos, names, source = convert.oxford_photos(root) if oxford else convert.folder_photos(root)
    except convert.tfrecords.DataError as e:
        raise EvalError(f"--photos {root}: {e}") from None
    chosen = [p for p in photos if p.split == split]
    if not chosen:
        found = sorted({p.split for p in photos})
        raise EvalError(f"--photos {root}: no {split!r} photos (it has {', '.join(found) or 'none'}); pick --split")
    if any(p.label is None for p in chosen):
        raise EvalError(f"--photos {root}: the {split!r} photos have no labels, so they cannot be evaluated")
    return chosen, list(names), source


def page_pixels(path: str, size: int) -> np.ndarray:
    """[size, size, 3] float32: what the page feeds its model for the photo file at `path`."""
    return images.page_input(path, size)


def _has_icc_profile(path: str) -> bool:
    from PIL import Image

    try:
        with tf.io.gfile.GFile(path, "rb") as f, Image.open(f) as im:
            return bool(im.info.get("icc_profile"))
    except Exception:
        return False


def flax_scorer(config: ml_collections.ConfigDict, variables: dict):
    """fn(images [B, S, S, 3]) -> (logits [B, C], embeddings [B, D]) of the Flax model (eval's forward,
    `config.eval.tta` off as the page has none), batches sharded over this process's devices."""
    mesh = distributed.make_mesh()
    forward, variables = evaluation.sharded_forward(config, variables, mesh)
    sharded = distributed.batch_sharded(mesh)

    def score(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, embeddings = forward(variables, jax.device_put(x, sharded))
        return np.asarray(logits)[:, 0], np.asarray(embeddings)

    return score


def onnx_scorer(export_dir: str, *, step: int, image_size: int):
    """fn(images) -> (logits, embeddings) of an export's model.onnx (onnxruntime), after checking the
    export is of checkpoint `step` at `image_size`."""
    path = os.path.join(export_dir, "metadata.json")
    if not os.path.exists(path):
        raise EvalError(f"--onnx {export_dir}: no metadata.json there; pass the folder the exporter wrote")
    with open(path) as f:
        meta = json.load(f)
    exported = (meta.get("checkpoint", {}).get("step"), meta["input"]["size"])
    if exported != (step, image_size):
        raise EvalError(
            f"--onnx {export_dir} holds step {exported[0]} at {exported[1]}px, not step {step} at {image_size}px: "
            "export this checkpoint at this size, or evaluate with the Flax model (no --onnx)"
        )
    import onnxruntime

    session = onnxruntime.InferenceSession(
        os.path.join(export_dir, meta["files"].get("onnx", "model.onnx")), providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    return lambda x: tuple(session.run([twin.LOGITS, twin.EMBEDDING], {name: np.asarray(x, np.float32)}))


def predict_photos(
    photos: list[convert.Photo], size: int, score, *, batch_size: int, workers: int | None = None
) -> evaluation.SplitOutputs:
    """One pass of `score` over the page's pixels of `photos` at `size`, in batches of `batch_size`
    (the last one padded, so one compiled shape serves every batch)."""
    logits, embeddings = [], []
    with concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count()) as pool:
        for start in range(0, len(photos), batch_size):
            chunk = photos[start : start + batch_size]
            x = np.stack(list(pool.map(lambda p: page_pixels(p.path, size), chunk)))
            pad = batch_size - len(chunk)
            z, e = score(np.concatenate([x, np.repeat(x[-1:], pad, 0)]) if pad else x)
            logits.append(np.asarray(z)[: len(chunk)])
            embeddings.append(np.asarray(e)[: len(chunk)])
    return evaluation.SplitOutputs(
        logits=np.concatenate(logits)[None],
        labels=np.asarray([p.label for p in photos], np.int64),
        ids=[p.id for p in photos],
        embeddings=np.concatenate(embeddings),
    )


def out_dir_name(photos_root: str, split: str, size: int, *, onnx: bool = False) -> str:
    """page-<photos folder's name>-<split>@<size>px[-onnx]."""
    folder = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(os.path.normpath(photos_root))) or "photos"
    return f"{PAGE}-{folder}-{split}@{size}px" + ("-onnx" if onnx else "")


def _class_names(config, photos: list[convert.Photo], names: list[str]) -> tuple[data.DatasetInfo | None, list[str]]:
    """The run's dataset info when readable here (its training prior feeds the guard), after checking
    that the photos' classes are the run's; else None and the photos' names."""
    top = max(p.label for p in photos)
    if top >= config.num_classes:
        raise EvalError(f"the photos have class {top} ({names[top]!r}); the model has {config.num_classes} classes")
    try:
        info = data.dataset_info(config)
    except data.DataError:
        print("the run's dataset is not readable here: class names from the photos, unchecked", flush=True)
        return None, (names + [f"class {i}" for i in range(len(names), config.num_classes)])[: config.num_classes]
    if bad := [i for i, (a, b) in enumerate(zip(info.class_names, names, strict=False)) if a != b]:
        raise EvalError(
            f"the photos' class {bad[0]} is {names[bad[0]]!r}, the run's is {info.class_names[bad[0]]!r}: these "
            "photos are not labelled as the run's data were (convert and evaluate with the same --classes)"
        )
    return info, list(info.class_names)


def run_page_eval(
    config: ml_collections.ConfigDict,
    workdir: str,
    photos_root: str,
    which: str = "best",
    split: str = "val",
    *,
    image_size: int | None = None,
    onnx: str | None = None,
) -> dict[str, Any]:
    """Evaluates checkpoint `which` on the original photos of `split` under `photos_root`, fed as the
    page feeds them; writes eval's reports (module docstring); returns the metrics."""
    if jax.process_count() > 1:
        raise EvalError("the page-fed eval runs in one process (it reads every photo itself)")
    config = config.copy_and_resolve_references()
    config.eval.tta = ""  # the page has no test-time augmentation
    if config.get("synthetic_data"):  # the smoke run keeps its data in the workdir
        from flowers_jax.data import fixtures

        fixtures.use_workdir_data(config, workdir)
    variables, info = evaluation._load(config, workdir, which)
    if image_size:
        config.data.image_size = image_size
    # The run's records stay those read for the class names and training prior, whatever the size fed.
    config, why = evaluation.at_test_size(config, workdir, info, test_size=not image_size)
    size = config.data.image_size
    photos, names, source = find_photos(photos_root, split)
    data_info, class_names = _class_names(config, photos, names)
    cal = evaluation._calibration(config, workdir, info)
    score = onnx_scorer(onnx, step=info["step"], image_size=size) if onnx else flax_scorer(config, variables)
    batch = config.get("eval_batch_size", None) or config.batch_size
    print(f"page-fed eval: {len(photos)} {split} photos of {photos_root} at {size}px", flush=True)
    outputs = predict_photos(photos, size, score, batch_size=batch)
    out = reports.ensure_dir(
        os.path.join(
            workdir, "eval", evaluation._checkpoint_name(which), out_dir_name(photos_root, split, size, onnx=bool(onnx))
        )
    )
    icc = sum(_has_icc_profile(p.path) for p in photos)
    page_source = {
        "source": PAGE,
        "photos": os.path.abspath(photos_root) if "://" not in photos_root else photos_root,
        "photo_layout": sorted(k for k in source if k != "held_out_classes"),
        "image_size_from": why,
        "resampler": RESAMPLER,
        "runtime": f"onnxruntime ({os.path.join(onnx, 'model.onnx')})" if onnx else "flax",
        # The browser converts a photo with an ICC profile to sRGB; this path does not.
        "photos_with_icc_profile": int(icc),
    }
    return evaluation.write_eval(
        config,
        outputs,
        cal,
        out,
        which=which,
        split=split,
        step=info["step"],
        source=page_source,
        data_info=data_info,
        class_names=class_names,
        title=f"{split} photos of {photos_root}, fed as the page feeds them,",
    )
