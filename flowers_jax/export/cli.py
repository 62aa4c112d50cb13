"""The export command: a model to TF.js + ONNX + jax2tf SavedModel with the web demo, checked against Flax.

  python export/export_model.py --workdir workdirs/lite0 [--checkpoint best|latest|STEP] --out out/lite0
  python export/export_model.py --pretrained torch:efficientnet_lite0 --model efficientnet_lite0 --out out/lite0
  python export/export_model.py ... --parity-images ../shared/data/oxford102/jpg --float16
  python -m flowers_jax.export.cli ...                 # the same command, from anywhere

With --workdir, W/calibration.json (from `--mode calibrate`) is baked in: the probabilities output
is softmax(logits / T) in every artefact, and the page's "not sure" / "not one of my flowers"
thresholds go to metadata.json. The input size defaults to the one val chose (W/test_size.json,
flowers_jax/chosen_size.py), else the calibration's, else the training size; a calibration of
another size is refused. metadata.json's "accuracy" names the measured figure of that checkpoint at
that size (W/eval/..., page-fed photos first) or says "not measured".
  cd out/lite0 && python -m http.server 8000          # then open http://localhost:8000

Writes the folder described in flowers_jax/export/exporter.py and prints the parity table;
exits non-zero, with the numbers, if any artefact disagrees with Flax. This module reads the flags
and finds the model; the work is `flowers_jax.export.exporter.export_model`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import pathlib
import sys
from typing import Any

# Before anything imports Keras (the twin is imported lazily): the twin is a TF-backend Keras model.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from flowers_jax import models  # noqa: E402
from flowers_jax.export import exporter, images, parity, twin  # noqa: E402


@dataclasses.dataclass
class ModelToExport:
    """Everything `export_model` needs about the model itself."""

    model_name: str
    variables: dict
    class_names: list[str]
    image_size: int
    checkpoint_info: dict[str, Any]
    val_metrics: dict[str, Any] | None = None
    accuracy: dict[str, Any] | None = None  # metadata.accuracy_for: the measured figure of this export
    calibration: Any = None  # flowers_jax.trust.Calibration, or None

    def export_kwargs(self) -> dict[str, Any]:
        """`exporter.export_model`'s keyword arguments about the model; the calibration as it takes it."""
        about = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "calibration"}
        cal = self.calibration
        return {**about, "trust": cal.for_export() if cal else None, "embedding_stats": cal.stats if cal else None}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command's flags (`argv`: sys.argv[1:] when None)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (new or empty; see --overwrite)")
    src = p.add_argument_group("model source: a training workdir, or a pretrained source")
    src.add_argument("--workdir", help="a training run's --workdir")
    src.add_argument("--checkpoint", default="best", help="with --workdir: best (default), latest, or a step")
    src.add_argument("--pretrained", help="pretrained source, e.g. torch:efficientnet_lite0 or keras:EfficientNetB0")
    src.add_argument("--model", help=f"model name: {', '.join(models.names())}")
    src.add_argument("--num-classes", type=int, help="head size (default 1000: the ImageNet head of the source)")
    src.add_argument("--classes", help="text file with one class name per line, in logit order")
    p.add_argument(
        "--image-size",
        type=int,
        help="input side (default with --workdir: the size val chose, W/test_size.json, else the calibration's, "
        "else the training size; with --pretrained: the model's native resolution)",
    )
    p.add_argument("--parity-images", help="folder of real JPEG photos (default: scikit-image's sample photos)")
    p.add_argument("--parity-count", type=int, default=32, help="photos in the parity check (>= 32)")
    p.add_argument("--float16", action="store_true", help="store TF.js weights as float16 (half the download)")
    p.add_argument("--tfjs-backends", default="wasm", help="TF.js backends checked in Node: wasm, cpu or wasm,cpu")
    p.add_argument("--no-jax2tf", action="store_true", help="skip the jax2tf SavedModel")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")
    p.add_argument(
        "--no-calibration",
        action="store_true",
        help="with --workdir: ignore W/calibration.json (export uncalibrated probabilities; the page says so)",
    )
    return p.parse_args(argv)


def _class_names(path: str | None, num_classes: int) -> list[str]:
    """The names in `path` (one a line, checked against the head size), or placeholders without one."""
    if not path:
        return [f"class {i}" for i in range(num_classes)]
    names = [line.strip() for line in pathlib.Path(path).read_text().splitlines() if line.strip()]
    if len(names) != num_classes:
        raise SystemExit(f"--classes {path}: {len(names)} names for a {num_classes}-way head")
    return names


def from_pretrained(args: argparse.Namespace) -> ModelToExport:
    """--pretrained SOURCE --model NAME: the source's variables (its ImageNet head, or a new one of --num-classes)."""
    from flowers_jax import pretrained

    if not args.model:
        raise SystemExit("--pretrained needs --model (e.g. --model efficientnet_lite0)")
    # ImageNet sources have a 1000-way head: 1000 keeps it, another size gets a new random head.
    variables, report = pretrained.load_with_report(args.pretrained, args.model, args.num_classes or 1000)
    num_classes = int(variables["params"]["head"]["predictions"]["kernel"].shape[-1])
    return ModelToExport(
        model_name=args.model,
        variables=variables,
        class_names=_class_names(args.classes, num_classes),
        image_size=args.image_size or models.get_arch(args.model).resolution,
        checkpoint_info={"pretrained": args.pretrained, "load_report": report.summary().splitlines()[0]},
    )


def from_workdir(args: argparse.Namespace) -> ModelToExport:
    """--workdir W --checkpoint C: the trained variables, class names and validation metrics of a run."""
    from flowers_jax import checkpoint, chosen_size, data, inference, trust
    from flowers_jax.data import fixtures
    from flowers_jax.export import metadata

    try:
        config, variables, info = inference.load_for_inference(args.workdir, args.checkpoint)
    except checkpoint.CheckpointError as e:
        raise SystemExit(f"nothing to export: {e}") from None
    cal = None if args.no_calibration else trust.load(args.workdir)
    # The size val chose for test (W/test_size.json), else the calibration's, else the training size.
    try:
        image_size, size_from = chosen_size.resolve(
            args.workdir,
            step=info["step"],
            trained_size=config.data.image_size,
            explicit=args.image_size,
            calibration=not args.no_calibration,
        )
    except chosen_size.ChosenSizeError as e:
        raise SystemExit(f"cannot choose the input size: {e} (--image-size S)") from None
    print(f"input size {image_size}px: {size_from}", flush=True)
    if cal is not None:
        try:
            cal = trust.load_matching(args.workdir, step=info["step"], image_size=image_size)
        except trust.CalibrationError as e:
            raise SystemExit(f"cannot export calibrated: {e} (or pass --no-calibration)") from None
    if config.get("synthetic_data"):  # the smoke run keeps its data in the workdir
        fixtures.use_workdir_data(config, args.workdir)
    try:
        names = list(data.dataset_info(config).class_names)
    except data.DataError:  # the data is not on this machine: names from --classes or placeholders
        names = _class_names(args.classes, config.num_classes)
    return ModelToExport(
        model_name=config.model,
        variables=variables,
        class_names=names,
        image_size=image_size,
        calibration=cal,
        checkpoint_info={
            "workdir": os.path.abspath(args.workdir),
            "checkpoint": args.checkpoint,
            "step": info["step"],
            "pretrained": config.pretrained,
            "image_size_from": size_from,
        },
        val_metrics=info.get("val"),
        accuracy=metadata.accuracy_for(args.workdir, step=info["step"], image_size=image_size),
    )


def load_model(args: argparse.Namespace) -> ModelToExport:
    """The model to export, from whichever source the flags name."""
    if args.workdir and args.pretrained:
        raise SystemExit("pass either --workdir or --pretrained, not both")
    if args.workdir:
        return from_workdir(args)
    if args.pretrained:
        return from_pretrained(args)
    raise SystemExit("nothing to export: pass --workdir W (a training run) or --pretrained SOURCE --model NAME")


def parity_images(args: argparse.Namespace, size: int) -> tuple[np.ndarray, str]:
    """(the real photos the parity check runs on, where they came from)."""
    if args.parity_images:
        return images.photos_from_dir(args.parity_images, count=args.parity_count, size=size), args.parity_images
    return images.skimage_photos(count=args.parity_count, size=size), "scikit-image sample photos (crops and flips)"


def main(argv: list[str] | None = None) -> int:
    """Runs the export; returns the exit status (1: parity failed, 2: an export that cannot be done)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("absl", "tensorflow", "jax", "h5py", "tf2onnx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = parse_args(argv)
    todo = load_model(args)
    photos, source = parity_images(args, todo.image_size)
    try:
        result = exporter.export_model(
            args.out,
            **todo.export_kwargs(),
            images_for_parity=photos,
            parity_images_source=source,
            float16=args.float16,
            tfjs_backends=tuple(b.strip() for b in args.tfjs_backends.split(",") if b.strip()),
            jax2tf=not args.no_jax2tf,
            overwrite=args.overwrite,
        )
    except parity.ParityError as e:
        print(f"EXPORT FAILED: {e}", file=sys.stderr)
        return 1
    except (twin.TwinUnsupportedError, FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"EXPORT FAILED: {e}", file=sys.stderr)
        return 2
    print(summary(result))
    return 0


def summary(result: exporter.ExportResult) -> str:
    """Parity table, sizes and how to open the demo."""
    rows = [f"{'runtime':<22}{'max|dlogit|':>13}{'max|dprob|':>13}{'emb rel err':>13}{'top-1':>8}{'top-5':>8}"]
    for name, r in result.parity["runtimes"].items():
        top5 = r.get("top5_agreement", float("nan"))
        rows.append(
            f"{name:<22}{r['max_abs_logit']:>13.3g}{r['max_abs_prob']:>13.3g}{r['relative_embedding_error']:>13.3g}"
            f"{r['top1_agreement']:>8.0%}{top5:>8.0%}"
        )
    trust = result.metadata["trust"]
    calibrated = (
        f"calibrated: probabilities = softmax(logits / {trust['temperature']:.4f}); 'not sure' and 'not one of "
        "mine' thresholds in metadata.json"
        if trust["calibrated"]
        else "not calibrated (no W/calibration.json): the page says so"
    )
    sizes = ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in result.metadata["sizes_bytes"].items())
    acc = result.metadata["accuracy"]
    accuracy = (
        f"top-1 {acc['top1']:.2%}, top-5 {acc['top5']:.2%}, macro-F1 {acc['macro_f1']:.4f} on {acc['examples']} "
        f"{acc['split']} photos ({acc['source_means']}; {acc['file']})"
        if acc["status"] == "measured"
        else f"not measured ({acc['why']})"
    )
    return (
        f"\nParity on {result.parity['images']['count']} photos ({result.parity['images']['source']}):\n"
        + "\n".join(rows)
        + f"\nConfidence {calibrated}\nAccuracy of this export: {accuracy}"
        + f"\nSizes: {sizes}\nWeb demo: cd {result.out_dir} && python -m http.server 8000  "
        "# then open http://localhost:8000"
    )


if __name__ == "__main__":
    sys.exit(main())
