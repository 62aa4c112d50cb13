"""Milliseconds per camera frame of the exported web demo in headless Chromium, and model sizes.

Exports EfficientNet-B0, EfficientNet-Lite0 and MobileNetV2 (224x224, 104 classes) with the
real exporter, opens each page in the system's headless Chromium and times the page's whole
per-frame path (centre crop + resize, predict, read back the probabilities) per TF.js backend.

  python benchmarks/browser_latency.py                       # wasm and cpu, all three models
  python benchmarks/browser_latency.py --backends wasm --models efficientnet_b0 --frames 50
  python benchmarks/browser_latency.py --isolated            # + wasm with threads (COOP/COEP headers)
  python benchmarks/browser_latency.py --webgl               # + SwiftShader WebGL (not representative)

Weights: Lite0 gets its ImageNet backbone (torch:efficientnet_lite0), the others sensitised
random variables; latency does not depend on the values. Headless Chromium here renders WebGL
with SwiftShader, a CPU emulation of a GPU, so its WebGL figure says nothing about a phone's
GPU; wasm and cpu run the same code as on a phone's CPU (a phone core is slower than a server's).
Exports are kept under --exports-dir and reused when present (delete it to re-export).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
try:
    import flowers_jax  # noqa: F401
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from flowers_jax import models, pretrained  # noqa: E402
from flowers_jax.export import browser, exporter, images, testing  # noqa: E402

NUM_CLASSES, SIZE = 104, 224


def export(name: str, out: pathlib.Path, parity_dir: str | None) -> dict:
    """Exports `name` into `out` (or reuses an earlier export there); returns its metadata."""
    if (out / "metadata.json").exists():
        return json.loads((out / "metadata.json").read_text())
    if parity_dir:
        photos = images.photos_from_dir(parity_dir, count=32, size=SIZE)
    else:
        photos = images.skimage_photos(count=32, size=SIZE)
    if name == "efficientnet_lite0":
        variables = pretrained.load("torch:efficientnet_lite0", name, NUM_CLASSES)
        info = {"pretrained": "torch:efficientnet_lite0", "head": "random (benchmark)"}
    else:
        variables = testing.sensitised_variables(name, num_classes=NUM_CLASSES, images=photos[::4])
        info = {"source": "sensitised random variables (benchmark)"}
    result = exporter.export_model(
        out,
        model_name=name,
        variables=variables,
        class_names=[f"class {i}" for i in range(NUM_CLASSES)],
        image_size=SIZE,
        checkpoint_info=info,
        val_metrics=None,
        images_for_parity=photos,
        parity_images_source=parity_dir or "scikit-image",
        jax2tf=False,  # not what the browser runs
        overwrite=True,
    )
    return result.metadata


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="efficientnet_b0,efficientnet_lite0,mobilenet_v2")
    p.add_argument("--backends", default="wasm,cpu")
    p.add_argument("--frames", type=int, default=20, help="timed frames per run (cpu: a quarter, at least 3)")
    p.add_argument("--isolated", action="store_true", help="also time wasm with threads (COOP/COEP headers)")
    p.add_argument("--webgl", action="store_true", help="also time WebGL (SwiftShader here: not representative)")
    p.add_argument("--exports-dir", default="out/browser_latency")
    p.add_argument("--parity-images", help="folder of real JPEGs for the exports' parity check")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("absl", "tensorflow", "jax", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if browser.chromium_path() is None:
        raise SystemExit("no Chromium: apt-get install chromium")

    names = [n.strip() for n in args.models.split(",") if n.strip()]
    for n in names:
        models.get_arch(n)  # unknown names fail before any export
    runs = [(b, False) for b in args.backends.split(",") if b]
    if args.isolated:
        runs.append(("wasm", True))
    if args.webgl:
        runs.append(("webgl", False))

    rows = []
    for name in names:
        out = pathlib.Path(args.exports_dir) / name
        meta = export(name, out, args.parity_images)
        sizes = meta["sizes_bytes"]
        for backend, isolated in runs:
            frames = max(3, args.frames // 4) if backend == "cpu" else args.frames
            with browser.serve(out, isolated=isolated) as url:
                r = browser.run_page("bench", f"{url}?camera=off&backend={backend}", frames=frames, timeout_s=600)
            label = r["backend"] + (", COOP/COEP" if isolated else "")
            rows.append((name, label, r["median_ms"], r["min_ms"], frames, sizes["tfjs"], sizes["onnx"]))
            print(f"  {name} {label}: {r['median_ms']:.1f} ms/frame (median of {frames})", flush=True)

    print(f"\nHeadless Chromium ({browser.chromium_path()}), {os.cpu_count()} CPU cores, {SIZE}x{SIZE} input, batch 1")
    print(f"{'model':<20}{'backend':<28}{'ms/frame':>10}{'min':>8}{'frames':>8}{'TF.js MB':>10}{'ONNX MB':>9}")
    for name, backend, median, low, frames, tfjs_bytes, onnx_bytes in rows:
        mb = f"{tfjs_bytes / 1e6:>10.1f}{onnx_bytes / 1e6:>9.1f}"
        print(f"{name:<20}{backend:<28}{median:>10.1f}{low:>8.1f}{frames:>8}{mb}")
    print("(WebGL here is SwiftShader, a software renderer: not representative of a phone GPU.)")


if __name__ == "__main__":
    main()
