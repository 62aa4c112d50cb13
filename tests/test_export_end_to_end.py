"""Exports a small model end to end and opens the web demo in headless Chromium.

The model is the smoke configuration's (MobileNetV2 0.35, 64x64, 8 classes) with sensitised
random variables (BatchNorm statistics measured on real photos, O(10) logits that differ
between photos), so each check can fail. Needs the export toolchain (export/install.sh);
the browser tests also need Debian's `chromium` and skip, saying so, without it.
"""

from __future__ import annotations

import json
import pathlib
import re

import numpy as np
import pytest
from keras_helpers import relative_error
from small_export import CLASSES, MODEL, SIZE

from flowers_jax.export import browser, exporter, images, parity, tfjs, web

pytest.importorskip("keras")

needs_chromium = pytest.mark.skipif(
    browser.chromium_path() is None, reason="no Chromium here (CI installs Debian's: apt-get install chromium)"
)


@pytest.fixture(scope="module")
def exported(small_export) -> tuple[pathlib.Path, dict]:
    return small_export  # one export for this module and tests/test_serve_browser.py (conftest.py)


def test_parity_json_meets_thresholds(exported):
    out, variables = exported
    report = json.loads((out / "parity.json").read_text())
    assert report["passed"] and report["images"]["count"] >= 32
    expected = {"keras_twin", "tfjs_node_wasm", "tfjs_node_cpu", "onnxruntime", "jax2tf_saved_model"}
    assert set(report["runtimes"]) == expected
    for name, r in report["runtimes"].items():
        assert r["top1_agreement"] == 1.0, name
        assert r["max_abs_prob"] <= parity.MAX_ABS_PROB, name
        # Far inside the thresholds: float32 round-off, not a near miss.
        assert r["relative_logit_error"] < 1e-4, (name, r)
    # The 32 photos exercise several decisions, not one class everywhere.
    logits = exporter.flax_logits(MODEL, variables, images.skimage_photos(count=32, size=SIZE))
    assert len(set(logits.argmax(1))) >= 3


def test_export_folder_contents(exported):
    out, _ = exported
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["class_names"] == CLASSES and meta["model_name"] == MODEL
    assert meta["input"]["size"] == SIZE and "no normalisation" in meta["input"]["contract"]
    assert meta["validation_metrics"] == {"accuracy": 0.5}
    assert {"weights", "data", "code"} <= set(meta["licences"])
    for rel in ["index.html", "app.js", "style.css", "tfjs_model/model.json", "model.onnx", "metadata.json"]:
        assert (out / rel).is_file(), rel
    for rel in ["keras_saved_model/saved_model.pb", "jax2tf_saved_model/saved_model.pb"]:
        assert (out / rel).is_file(), rel
    for _, name in web.VENDOR_FILES:
        assert (out / "vendor" / name).is_file(), name
    html = (out / "index.html").read_text() + (out / "app.js").read_text()
    assert not re.findall(r"(?:https?:)?//[a-z0-9-]+(?:\.[a-z0-9-]+)+/", html)  # nothing from a CDN or any host
    assert set(re.findall(r'src="([^"]+)"', html)) == {"vendor/tf.min.js", "vendor/tf-backend-wasm.min.js", "app.js"}
    assert "'environment'" in html and "exact" not in html.split("getUserMedia", 1)[1].split(")", 1)[0]


def test_float16_tfjs_model(exported, tmp_path):
    """--float16 halves the download and still runs in wasm. (How close it stays is a property
    of the network: these sensitised ones amplify weight rounding to ~4% of the logits, a real
    Lite0 to 3e-3 in probability; the exporter judges it by FLOAT16_MAX_ABS_PROB and top-1.)"""
    out, variables = exported
    photos = images.skimage_photos(count=32, size=SIZE)
    model_json = tfjs.convert(out / exporter.KERAS_SAVED_MODEL, tmp_path / "fp16", float16=True)
    f32 = sum(f.stat().st_size for f in (out / exporter.TFJS_DIR).glob("*.bin"))
    f16 = sum(f.stat().st_size for f in model_json.parent.glob("*.bin"))
    assert 0.45 < f16 / f32 < 0.55
    logits = parity.run_tfjs_node(model_json, photos, node_dir=web.NODE_DIR, backend="wasm")[0]["logits"]
    error = relative_error(logits, exporter.flax_logits(MODEL, variables, photos))
    assert 1e-4 < error < 0.1  # rounded for real, and still the same network


def test_float16_parity_policy():
    """A float16 runtime gets its own |dprob| limit; top-1 agreement is never relaxed."""
    row = {"max_abs_logit": 0.05, "top1_agreement": 1.0, "max_abs_prob": 5e-3}
    report = {
        "thresholds": {"min_top1_agreement": 1.0, "max_abs_prob": 1e-3, "max_abs_prob_overrides": {"tfjs": 2e-2}},
        "runtimes": {"tfjs": dict(row), "onnx": dict(row), "tfjs_flip": dict(row, top1_agreement=0.97)},
    }
    report["thresholds"]["max_abs_prob_overrides"]["tfjs_flip"] = 2e-2
    bad = parity.failures(report)
    assert [b.split(":")[0] for b in bad] == ["onnx", "tfjs_flip"]
    assert "max |dprob| 0.005 (limit 0.001)" in bad[0] and "top-1 agreement 97.00% (need 100%)" in bad[1]
    with pytest.raises(parity.ParityError, match="onnx: top-1 agreement 100.00%"):
        parity.check(report)


def test_refuses_too_few_photos_and_wrong_class_count(tmp_path):
    import jax
    import jax.numpy as jnp

    from flowers_jax import models

    photos = images.skimage_photos(count=8, size=SIZE)
    model = models.create(MODEL, 3)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3))))  # shapes suffice
    common = dict(model_name=MODEL, variables=variables, image_size=SIZE, checkpoint_info={}, val_metrics=None)
    with pytest.raises(ValueError, match="needs at least 32 real photos"):
        exporter.export_model(tmp_path / "a", class_names=["a", "b", "c"], images_for_parity=photos, **common)
    with pytest.raises(ValueError, match="2 class names for a 3-way head"):
        exporter.export_model(tmp_path / "b", class_names=["a", "b"], images_for_parity=photos, **common)


def _flax_top5(variables, pixels: np.ndarray) -> list[str]:
    logits = exporter.flax_logits(MODEL, variables, pixels[None])[0]
    return [CLASSES[i] for i in np.argsort(-logits)[:5]]


@needs_chromium
def test_camera_page_shows_the_flax_prediction(exported, tmp_path):
    """Fake rear camera playing a real photo: the page's top species is Flax's for that very frame."""
    from skimage import data

    out, variables = exported
    photo = data.coffee()  # 400 x 600: the page must centre-crop it
    video = browser.write_y4m(tmp_path / "photo.y4m", photo)
    shot = tmp_path / "camera.png"
    with browser.serve(out) as url:
        snap = browser.run_page("camera", url, video=video, screenshot=shot)
    assert snap["status"] == "ready", snap["message"]
    assert snap["backend"] in ("webgl", "wasm", "cpu") and snap["last"]["source"] == "camera"
    pixels = browser.snapshot_pixels(snap)
    # It is the photo (through 4:2:0 video and the browser's resampler), not Chromium's test pattern.
    expected = images.centre_crop_resize(photo, SIZE)
    assert np.abs(pixels - expected).mean() < 8, np.abs(pixels - expected).mean()
    flax_top5 = _flax_top5(variables, pixels)
    assert len(snap["shownTop5"]) == 5
    assert snap["shownTop5"][0] == flax_top5[0]
    assert set(snap["shownTop5"]) == set(flax_top5)
    assert snap["latencyText"].endswith(" ms") and shot.stat().st_size > 10_000
    assert not [c for c in snap["console"] if c.startswith("pageerror")], snap["console"]


@needs_chromium
def test_upload_path_without_a_camera(exported, tmp_path):
    """No camera at all: the page says so; a chosen JPEG is classified as Flax classifies it."""
    from PIL import Image
    from skimage import data

    out, variables = exported
    square = images.centre_crop_resize(data.chelsea(), SIZE).astype(np.uint8)
    jpeg = tmp_path / "cat.jpg"
    Image.fromarray(square).save(jpeg, quality=90)
    shot = tmp_path / "upload.png"
    with browser.serve(out) as url:
        snap = browser.run_page("upload", url + "?backend=wasm", file=jpeg, screenshot=shot)
    assert "No camera was found" in snap["messageBefore"]
    assert snap["last"]["source"] == "photo" and snap["backend"] == "wasm"
    # An S x S upload is not resampled, so the page's pixels are the JPEG's: browsers decode with
    # the accurate integer DCT, which is why the exporter decodes with dct_method='INTEGER_ACCURATE'.
    decoded = images.decode_jpeg(jpeg).astype(np.float32)
    pixels = browser.snapshot_pixels(snap)
    assert np.abs(pixels - decoded).max() <= 1, np.abs(pixels - decoded).max()
    assert snap["shownTop5"][0] == _flax_top5(variables, decoded)[0]
    shown = {t["name"]: t["prob"] for t in snap["last"]["top5"]}
    logits = exporter.flax_logits(MODEL, variables, pixels[None])[0]
    flax_probs = parity.softmax(logits)
    assert max(abs(p - flax_probs[CLASSES.index(n)]) for n, p in shown.items()) < 1e-3
    assert shot.stat().st_size > 10_000


@needs_chromium
def test_refused_camera_backend_fallback_and_missing_model(exported, tmp_path):
    out, _ = exported
    with browser.serve(out) as url:
        # Also the backend fallback: "webgpu" is not in this TF.js bundle, so the page moves on to wasm.
        refused = browser.run_page("page", url + "?backend=webgpu,wasm", deny_camera=True)
    assert refused["status"] == "ready" and "permission was refused" in refused["message"]
    assert refused["backend"] == "wasm" and "fell back: webgpu failed" in refused["backendText"]

    bare = tmp_path / "bare"
    bare.mkdir()
    web.install(bare)  # the page without metadata.json / tfjs_model/
    with browser.serve(bare) as url:
        missing = browser.run_page("page", url)
    assert missing["status"] == "error" and missing["message"].startswith("Model missing")


def _state_calibration(variables, photos):
    """A calibration (T = 1: the export's) whose thresholds put three of `photos` in the page's three
    states: A (the surest) answered, B (the least sure) "not sure", C (the one least like A and B) "not
    one of mine", with the relative Mahalanobis open-set score of Gaussians made from A's and B's
    embeddings (the page computes it from embedding_stats.bin)."""
    from flowers_jax import abstain, trust

    ref = exporter.flax_outputs(MODEL, variables, photos)
    msp = parity.softmax(ref["logits"]).max(1)
    a, b = int(np.argmax(msp)), int(np.argmin(msp))
    # Classes 0 and 1: A and B with their mirror images (two photos a class, so a covariance exists);
    # the background Gaussian is fitted to the same four.
    emb = ref["embedding"][[a, a, b, b]] * np.array([1.0, 1.01, 1.0, 1.01])[:, None]
    stats = abstain.fit_embedding_stats(emb, np.array([0, 0, 1, 1]), len(CLASSES))
    known = abstain.openset_score("relative_mahalanobis", ref["logits"], ref["embedding"], stats)
    others = [i for i in range(len(photos)) if i not in (a, b)]
    c = min(others, key=lambda i: known[i])
    threshold = float(known[c] + min(known[a], known[b])) / 2
    # margins far above float64-vs-float32 round-off between Python and the page
    assert min(known[a], known[b]) - threshold > 1e-3 * abs(threshold) and threshold - known[c] > 1e-3 * abs(threshold)
    cal = trust.Calibration(
        temperature=1.0,
        image_size=SIZE,
        checkpoint={"which": "test", "step": 0},
        split="made up for the page-state test",
        val={"before": {}, "after": {}},
        selective={
            "score": "msp",
            "threshold": float(msp[a] + msp[b]) / 2,
            "target_risk": 0.02,
            "val": {"coverage": 0.5, "risk": 0.0},
        },
        openset={"score": "relative_mahalanobis", "threshold": threshold, "known_recall": 0.95},
        stats=stats,
    )
    return cal, {"answer": a, "not_sure": b, "unknown": c}


@needs_chromium
def test_page_states_answer_not_sure_and_not_one_of_mine(exported, tmp_path):
    """The page decides as flowers_jax.trust does: species + %, "Not sure" with 3, or no species."""
    import shutil

    from PIL import Image

    out, variables = exported
    photos = images.skimage_photos(count=32, size=SIZE)
    cal, which = _state_calibration(variables, photos)
    calibrated = tmp_path / "calibrated"
    shutil.copytree(out, calibrated)
    meta = json.loads((calibrated / "metadata.json").read_text())
    layout = exporter.write_stats(calibrated / exporter.STATS_FILE, cal.stats)
    meta["trust"] = cal.for_export() | {"embedding_stats": layout}
    (calibrated / "metadata.json").write_text(json.dumps(meta))

    with browser.serve(calibrated) as url:
        for state, i in which.items():
            png = tmp_path / f"{state}.png"
            Image.fromarray(photos[i].astype(np.uint8)).save(png)  # lossless: the page sees these pixels
            snap = browser.run_page(
                "upload", url + "?backend=wasm", file=png, screenshot=tmp_path / f"{state}.shot.png"
            )
            pixels = browser.snapshot_pixels(snap)
            ref = exporter.flax_outputs(MODEL, variables, pixels[None])
            assert cal.decide(ref["logits"], ref["embedding"])[0] == state  # Python's decision for those pixels
            assert snap["last"]["decision"] == state, (state, snap["last"])
            assert "calibrated (T = 1.00)" in snap["calibrationText"]
            if state == "answer":
                assert snap["verdict"].startswith(snap["last"]["top5"][0]["name"]) and len(snap["shownTop5"]) == 5
                assert "answer" in snap["verdictClass"]
            elif state == "not_sure":
                assert snap["verdict"].startswith("Not sure") and len(snap["shownTop5"]) == 3
            else:
                assert snap["verdict"] == f"This doesn't look like one of the {len(CLASSES)} flowers I know."
                assert snap["shownTop5"] == []

        # The same through the fake rear camera (its 4:2:0 video moves pixels a little; C is far from
        # the threshold): the camera loop's frames get the "not one of mine" answer too.
        video = browser.write_y4m(tmp_path / "unknown.y4m", photos[which["unknown"]].astype(np.uint8))
        snap = browser.run_page("camera", url + "?backend=wasm", video=video)
        ref = exporter.flax_outputs(MODEL, variables, browser.snapshot_pixels(snap)[None])
        assert snap["last"]["source"] == "camera"
        assert snap["last"]["decision"] == cal.decide(ref["logits"], ref["embedding"])[0] == "unknown"

    # An export made before calibration existed (no "trust" in metadata.json) still works and says so.
    old_export = tmp_path / "old"
    shutil.copytree(out, old_export)
    meta = json.loads((old_export / "metadata.json").read_text())
    del meta["trust"]
    (old_export / "metadata.json").write_text(json.dumps(meta))
    with browser.serve(old_export) as url:
        old = browser.run_page("page", url + "?camera=off")
    assert old["status"] == "ready" and old["calibrationText"] == "confidence not calibrated"
