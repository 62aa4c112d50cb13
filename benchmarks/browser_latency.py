"""Milliseconds per camera frame of the exported web demo in headless Chromium, the time from opening
the page to its first answer, and model sizes.

Exports EfficientNet-B0, EfficientNet-Lite0 and MobileNetV2 (224x224, 104 classes) with the
real exporter, opens each page in the system's headless Chromium and times, per model:
  - the page's whole per-frame path (centre crop + resize, predict, read back) on wasm with one
    thread (a plain static server: no cross-origin isolation, so TF.js runs one), and on the page as
    `python -m flowers_jax.serve` serves it (HTTPS, COOP/COEP: isolated) with `?threads=N` threads;
  - "open" to first answer on the served page (navigation start to the first camera frame's answer,
    the fake camera playing a photo): cold (a new browser profile: nothing cached) and from the
    service worker's cache (the profile of an earlier visit, the server stopped), the median of
    --opens visits each.
The ratios are within one run (the machine's CPU changes between sessions; ratios compare).

  python benchmarks/browser_latency.py                       # all three models, 2 threads served
  python benchmarks/browser_latency.py --models efficientnet_lite0 --frames 50 --threads 4
  python benchmarks/browser_latency.py --cpu --webgl         # + TF.js's cpu backend and SwiftShader WebGL

Weights: Lite0 gets its ImageNet backbone (torch:efficientnet_lite0), the others sensitised
random variables; latency does not depend on the values. Headless Chromium here renders WebGL
with SwiftShader, a CPU emulation of a GPU, so its WebGL figure says nothing about a phone's
GPU; wasm and cpu run the same code as on a phone's CPU (a phone core is slower than a server's).
TF.js 4.22 runs min(8, cores // 2) threads on an isolated page (1 on a 2-core machine), and here
`?threads=2` alone still gave 1: the page is also told it has 2N cores (the DevTools protocol's
Emulation.setHardwareConcurrencyOverride, as the tests do), which gives N threads on the real cores.
Exports are kept under --exports-dir and reused (delete to re-export).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import pathlib
import shutil
import tempfile

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
import numpy as np  # noqa: E402
from skimage import data  # noqa: E402

from benchmarks import machine  # noqa: E402
from benchmarks.sensitised import sensitised_variables  # noqa: E402
from flowers_jax import models, pretrained  # noqa: E402
from flowers_jax.export import browser, exporter, images  # noqa: E402

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
        variables = sensitised_variables(name, num_classes=NUM_CLASSES, images=photos[::4])
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


def frame_ms(
    out: pathlib.Path, query: str, frames: int, *, cert_dir: pathlib.Path | None = None, cores: int = 0
) -> dict:
    """The page's benchmark (median ms/frame) on a plain static server, or served as `python -m
    flowers_jax.serve` does (HTTPS, isolated; its local CA in `cert_dir`)."""
    if cert_dir is None:
        with browser.serve(out) as url:
            return browser.run_page("bench", f"{url}?camera=off&{query}", frames=frames, timeout_s=600)
    with browser.serve_https(out, cert_dir) as (url, spki):
        told = {"cores": cores} if cores else {}  # the cores the page is told it has
        return browser.run_page("bench", f"{url}?camera=off&{query}", frames=frames, spki=spki, timeout_s=600, **told)


def open_ms(out: pathlib.Path, query: str, video: pathlib.Path, work: pathlib.Path, visits: int, cores: int) -> dict:
    """Median ms from navigation start to the first camera answer on the served page: cold (fresh
    profile) and from the service worker's cache (that profile again, the server stopped)."""
    cold, cached = [], []
    for i in range(visits):
        visit = functools.partial(
            browser.run_page,
            "camera",
            video=video,
            profile=work / f"profile{i}",
            wait_offline=True,
            min_frame=1,
            cores=cores,
        )
        with browser.serve_https(out, work / "certs") as (url, spki):
            first = visit(url + "?" + query, spki=spki, timeout_s=600)
        if first["offline"] != "ready":
            raise RuntimeError(f"the service worker did not install: {first['offlineNote']}")
        again = visit(url + "?" + query, spki=spki, timeout_s=600)  # the server is stopped
        if again["status"] != "ready" or again["offline"] != "ready":
            raise RuntimeError(f"the cached page did not answer with the server stopped: {again['message']}")
        cold.append(first["firstAnswerMs"])
        cached.append(again["firstAnswerMs"])
    return {"cold_ms": float(np.median(cold)), "cached_ms": float(np.median(cached)), "cold": cold, "cached": cached}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="efficientnet_b0,efficientnet_lite0,mobilenet_v2")
    p.add_argument("--frames", type=int, default=20, help="timed frames per run (cpu: a quarter, at least 3)")
    p.add_argument("--threads", type=int, default=2, help="wasm threads on the served (isolated) page")
    p.add_argument("--opens", type=int, default=3, help="visits per open-to-first-answer figure (median)")
    p.add_argument("--cpu", action="store_true", help="also time TF.js's cpu backend (plain JavaScript)")
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
    work = pathlib.Path(tempfile.mkdtemp(prefix="browser_latency_"))
    video = browser.write_y4m(work / "photo.y4m", data.coffee())
    served = f"backend=wasm&threads={args.threads}"
    rows, extra = [], []
    for name in names:
        out = pathlib.Path(args.exports_dir) / name
        meta = export(name, out, args.parity_images)
        one = frame_ms(out, "backend=wasm", args.frames)
        many = frame_ms(out, served, args.frames, cert_dir=work / "certs", cores=2 * args.threads)
        opened = open_ms(out, served, video, work / name, args.opens, 2 * args.threads)
        rows.append((name, one, many, opened, meta["sizes_bytes"]))
        print(
            f"  {name}: {one['backend']} {one['median_ms']:.1f} ms/frame; served {many['backend']} "
            f"{many['median_ms']:.1f}; open cold {opened['cold']} cached {opened['cached']} ms",
            flush=True,
        )
        for backend, flag in (("cpu", args.cpu), ("webgl", args.webgl)):
            if flag:
                r = frame_ms(out, f"backend={backend}", max(3, args.frames // 4) if backend == "cpu" else args.frames)
                extra.append((name, r["backend"], r["median_ms"]))
    shutil.rmtree(work, ignore_errors=True)
    report(rows, extra, args)


def report(rows: list, extra: list, args: argparse.Namespace) -> None:
    print(
        f"\nHeadless Chromium ({browser.chromium_path()}), {machine.describe()}, "
        f"{SIZE}x{SIZE} input, batch 1, median of {args.frames} frames; open: median of {args.opens} visits"
    )
    head = (
        "model",
        "1 thread",
        f"served, {args.threads} thr",
        "ratio",
        "open cold",
        "cached",
        "cold/1thr",
        "cached/1thr",
    )
    print(f"{head[0]:<20}" + "".join(f"{h:>14}" for h in head[1:]) + f"{'TF.js MB':>10}")
    for name, one, many, opened, sizes in rows:
        base = one["median_ms"]
        cells = (
            f"{base:.1f} ms",
            f"{many['median_ms']:.1f} ms",
            f"x{many['median_ms'] / base:.2f}",
            f"{opened['cold_ms']:.0f} ms",
            f"{opened['cached_ms']:.0f} ms",
            f"x{opened['cold_ms'] / base:.1f}",
            f"x{opened['cached_ms'] / base:.1f}",
        )
        print(f"{name:<20}" + "".join(f"{c:>14}" for c in cells) + f"{sizes['tfjs'] / 1e6:>10.1f}")
        if many["backend"] != f"wasm, {args.threads} threads" or not many["crossOriginIsolated"]:
            print(f"  (the served page ran {many['backend']}, isolated: {many['crossOriginIsolated']})")
    for name, backend, median in extra:
        print(f"{name:<20}{backend:<28}{median:>10.1f} ms/frame")
    if any(b == "webgl" for _, b, _ in extra):
        print("(WebGL here is SwiftShader, a software renderer: not representative of a phone GPU.)")


if __name__ == "__main__":
    main()
