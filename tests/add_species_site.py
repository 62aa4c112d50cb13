"""A copy of the small export (tests/small_export.py) calibrated for the page's "Add a species", and the
photos to add and test it with; used by tests/test_add_species_browser.py and
tests/add_species_screenshot.py.

The new species is scikit-image's coffee cup: one view of it at several exposures, as camera frames
and as photos to choose; the trained classes' Gaussians are fitted to views of eight other sample
photos, one photo a class (scikit-image's and scikit-learn's, none of them Oxford's). `scale` and
`margin` (metadata.json trust.add_species) are chosen from the Flax model so that the held-back coffee
photo is "not one of mine" with the trained classes only, and answered as the added species, about 2
logits ahead of the best trained class, once the coffee mean is added: checks that can fail both ways.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil

import numpy as np
from small_export import CLASSES, MODEL, SIZE

TEMPERATURE = 1.5  # not 1, so that a page that forgot T in the extended softmax fails
FRAME = (240, 320)  # the fake camera's frames (H, W): the page crops their centred square


def _views(photo: np.ndarray) -> list[np.ndarray]:
    """The whole photo, its four corner crops and their mirror images."""
    h, w = photo.shape[:2]
    s = min(h, w) * 3 // 4
    crops = [photo, photo[:s, :s], photo[:s, w - s :], photo[h - s :, :s], photo[h - s :, w - s :]]
    return crops + [c[:, ::-1] for c in crops]


def trained_photos() -> list[np.ndarray]:
    """One photo per trained class (len(CLASSES) of them), none of them the coffee cup."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    names = ("chelsea", "astronaut", "rocket", "immunohistochemistry", "retina", "hubble_deep_field")
    photos = [getattr(data, n)()[..., :3] for n in names] + list(load_sample_images().images)
    assert len(photos) == len(CLASSES)
    return photos


def coffee_frames() -> list[np.ndarray]:
    """[FRAME, 3] uint8 views of the coffee cup as a camera's exposure drifts: the shots (gains 0.97 to
    1.03) and, last, the held-back one (0.99), which is never a shot.

    The small export's network has random weights: its features stay close under a change of
    exposure, but not when the cup moves by a few pixels, nor between a photo file and the fake
    camera's 4:2:0 video of it; so the shots are one view, and a species to be recognised in a chosen
    photo is added from chosen photos (benchmarks/personalise.py measures recognising new species
    with a trained network).
    """
    from PIL import Image
    from skimage import data

    cup = data.coffee()[8:392, 44:556].astype(np.float64)  # 384 x 512, 4:3
    frames = []
    for gain in (0.97, 0.985, 1.0, 1.015, 1.03, 0.99):
        lit = Image.fromarray(np.clip(np.round(cup * gain), 0, 255).astype(np.uint8))
        frames.append(np.asarray(lit.resize(FRAME[::-1], Image.LANCZOS)))
    return frames


def square(frame: np.ndarray) -> np.ndarray:
    """What the page feeds its model for `frame`, up to the browser's resampler: [SIZE, SIZE, 3] uint8."""
    from flowers_jax.export import images

    return images.centre_crop_resize(frame, SIZE).astype(np.uint8)


@dataclasses.dataclass
class Site:
    root: pathlib.Path  # served folder: calibrated/ (adding on) and plain/ (the export as made: adding off)
    calibration: object  # flowers_jax.trust.Calibration of calibrated/ (stats = the trained classes')
    add_species: dict  # {"scale", "margin"}
    frames: list[np.ndarray]  # [FRAME, 3] uint8: what the fake camera shows
    shots: list[np.ndarray]  # [SIZE, SIZE, 3] uint8: the same views as photos to choose (exact pixels)
    held_back: np.ndarray  # [SIZE, SIZE, 3] uint8: another exposure, never a shot


def _choose(variables, stats, shots: list[np.ndarray], held_back: np.ndarray) -> tuple[dict, dict]:
    """trust.add_species and the two thresholds, from the Flax model on the exact pixels the page will
    see (`shots` and `held_back` are chosen as photos, not through the camera): `margin` a quarter of the
    held-back photo's lead over the best trained class once the shots' mean is added, `scale` such that
    the added species is then 2 logits ahead."""
    from flowers_jax import abstain, calibration, personalise
    from flowers_jax.export import exporter

    mean = personalise.added_mean(
        exporter.flax_outputs(MODEL, variables, np.stack(shots).astype(np.float32))["embedding"]
    )
    ref = exporter.flax_outputs(MODEL, variables, held_back[None].astype(np.float32))
    g_trained = personalise.discriminants(ref["embedding"], stats.means, stats.precision).max()
    delta = float(personalise.discriminants(ref["embedding"], mean[None], stats.precision)[0, 0] - g_trained)
    assert delta > 0, f"the held-back coffee photo is nearer a trained class than the coffee mean ({delta})"
    add = {"scale": 8 / (3 * delta), "margin": delta / 4}
    known = [
        abstain.openset_score("relative_mahalanobis", ref["logits"], ref["embedding"], s)[0]
        for s in (stats, personalise.with_added(stats, mean[None], [len(shots)]))
    ]
    assert known[1] - known[0] > 1e-2 * abs(known[0]), known  # far above float32 round-off
    ext = personalise.added_logits(ref["logits"], ref["embedding"], stats, mean[None], **add)
    msp = calibration.softmax(ext, TEMPERATURE).max()
    return add, {"known": float(sum(known) / 2), "sure": float(msp / 2)}


def make(export: pathlib.Path, root: pathlib.Path, variables: dict) -> Site:
    """root/calibrated: `export` with metadata.json's trust block (stats, thresholds, add_species);
    root/plain: `export` as it is (uncalibrated: adding is off)."""
    from flowers_jax import abstain, trust
    from flowers_jax.export import exporter, web

    photos = [v for p in trained_photos() for v in _views(p)]
    labels = np.repeat(np.arange(len(CLASSES)), len(photos) // len(CLASSES))
    emb = exporter.flax_outputs(MODEL, variables, np.stack([square(v) for v in photos]).astype(np.float32))["embedding"]
    stats = abstain.fit_embedding_stats(emb, labels, len(CLASSES))
    frames = coffee_frames()
    shots, held_back = [square(f) for f in frames[:-1]], square(frames[-1])
    add, thresholds = _choose(variables, stats, shots, held_back)
    cal = trust.Calibration(
        temperature=TEMPERATURE,
        image_size=SIZE,
        checkpoint={"which": "test", "step": 0},
        split="made up for the add-a-species test",
        val={"before": {}, "after": {}},
        selective={
            "score": "msp",
            "threshold": thresholds["sure"],
            "target_risk": 0.02,
            "val": {"coverage": 1, "risk": 0},
        },
        openset={"score": "relative_mahalanobis", "threshold": thresholds["known"], "known_recall": 0.95},
        add_species=add,
        stats=stats,
    )
    big = shutil.ignore_patterns("keras_saved_model", "jax2tf_saved_model", "*.onnx")  # not the page's
    shutil.copytree(export, root / "plain", ignore=big)
    site = root / "calibrated"
    shutil.copytree(export, site, ignore=big)
    for copy in (root / "plain", site):
        web.install(copy)  # today's page, whatever the export was made with
    web.finish(root / "plain")
    meta = json.loads((site / "metadata.json").read_text())
    layout = exporter.write_stats(site / exporter.STATS_FILE, stats)
    meta["trust"] = cal.for_export() | {"embedding_stats": layout}
    (site / "metadata.json").write_text(json.dumps(meta))
    web.finish(site)  # the service worker's list and version follow the new files
    return Site(root, cal, add, frames[:-1], shots, held_back)
