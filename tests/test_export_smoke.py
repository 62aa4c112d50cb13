"""The trained smoke model, exported from its workdir by the documented command, in a real browser."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from training_runs import ROOT, env

from flowers_jax import abstain, inference
from flowers_jax.export import browser, exporter, images, onnx_export, parity

pytest.importorskip("keras")


def _export(workdir, out, *extra: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """Runs the documented exporter command on a training workdir."""
    cmd = [sys.executable, str(ROOT / "export" / "export_model.py"), "--workdir", str(workdir), "--out", str(out)]
    return subprocess.run([*cmd, *extra], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def smoke_export(calibrated_smoke, tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke_export") / "web"
    done = _export(calibrated_smoke, out, "--tfjs-backends", "wasm,cpu")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    config, variables, _ = inference.load_for_inference(str(calibrated_smoke), "best")
    return out, config, variables


def test_smoke_export_parity_and_metadata(smoke_export, calibrated_smoke):
    out, config, variables = smoke_export
    report = json.loads((out / "parity.json").read_text())
    assert report["passed"] and report["images"]["count"] >= 32
    # The calibration's temperature is baked into every artefact's probabilities output.
    cal = json.loads((calibrated_smoke / "calibration.json").read_text())
    assert abs(cal["temperature"] - 1) > 0.05 and report["temperature"] == cal["temperature"]
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["trust"]["calibrated"] and meta["trust"]["temperature"] == cal["temperature"]
    assert meta["trust"]["not_sure"]["threshold"] == cal["selective"]["threshold"]
    assert meta["trust"]["not_a_known_flower"]["score"] == cal["openset"]["score"] == "relative_mahalanobis"
    # embedding_stats.bin: the calibration's arrays, in the order and shapes metadata.json gives.
    layout = meta["trust"]["embedding_stats"]
    flat = np.fromfile(out / layout["file"], "<f4")
    with np.load(calibrated_smoke / "calibration_embeddings.npz") as saved:
        offset = 0
        for a in layout["arrays"]:
            n = int(np.prod(a["shape"]))
            np.testing.assert_array_equal(flat[offset : offset + n].reshape(a["shape"]), saved[a["name"]])
            offset += n
        assert offset == flat.size and [a["name"] for a in layout["arrays"]] == list(abstain.EmbeddingStats.ARRAYS)
        shapes = {a["name"]: a["shape"] for a in layout["arrays"]}
        assert shapes["precision"] == [saved["means"].shape[1]] * 2  # the shared precision, D x D
    photos = images.skimage_photos(count=32, size=64)
    ref = exporter.flax_outputs(config.model, variables, photos)
    onnx = onnx_export.run(out / exporter.ONNX_FILE, photos)
    np.testing.assert_allclose(onnx["probabilities"], parity.softmax(ref["logits"], cal["temperature"]), atol=1e-4)
    assert np.abs(onnx["probabilities"] - parity.softmax(ref["logits"])).max() > 1e-3  # T is really there
    np.testing.assert_allclose(onnx["embedding"], ref["embedding"], rtol=1e-3, atol=1e-4)
    for name in ("keras_twin", "tfjs_node_wasm", "tfjs_node_cpu", "onnxruntime", "jax2tf_saved_model"):
        r = report["runtimes"][name]
        assert r["top1_agreement"] == 1.0 and r["max_abs_prob"] <= parity.MAX_ABS_PROB, (name, r)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["model_name"] == "efficientnet_lite0" and meta["input"]["size"] == 64
    assert meta["outputs"]["embedding"].startswith("[N, 1280]")
    assert len(meta["class_names"]) == 8 and meta["class_names"][0] == "pink primrose"
    assert meta["validation_metrics"]["macro_f1"] > 0


def test_calibration_of_another_size_refuses_to_export(calibrated_smoke, tmp_path):
    done = _export(calibrated_smoke, tmp_path / "out", "--image-size", "96", timeout=300)
    assert done.returncode != 0 and "cannot export calibrated" in done.stderr and "--no-calibration" in done.stderr
    assert not (tmp_path / "out").exists()


def test_no_checkpoint_is_a_clear_error(tmp_path):
    done = _export(tmp_path, tmp_path / "out", timeout=300)
    assert done.returncode != 0 and "nothing to export" in done.stderr and "no 'best' checkpoint" in done.stderr


@pytest.mark.skipif(browser.chromium_path() is None, reason="no Chromium here (CI installs Debian's chromium)")
def test_smoke_model_in_the_browser_camera_page(smoke_export, tmp_path):
    """Fake rear camera playing a real photo: the page's top species is the trained model's (Flax) for that frame."""
    from skimage import data

    out, config, variables = smoke_export
    size, names = config.data.image_size, json.loads((out / "metadata.json").read_text())["class_names"]
    photo = data.astronaut()
    video = browser.write_y4m(tmp_path / "photo.y4m", photo)
    shot = tmp_path / "camera.png"
    with browser.serve(out) as url:
        snap = browser.run_page("camera", url, video=video, screenshot=shot)
    assert snap["status"] == "ready", snap["message"]
    pixels = browser.snapshot_pixels(snap)
    assert np.abs(pixels - images.centre_crop_resize(photo, size)).mean() < 8
    logits = exporter.flax_logits(config.model, variables, pixels[None])[0]
    top5 = [t["name"] for t in snap["last"]["top5"]]
    assert top5[0] == names[int(np.argmax(logits))]
    assert set(top5) == {names[i] for i in np.argsort(-logits)[:5]}
    assert snap["last"]["decision"] in ("answer", "not_sure", "unknown") and snap["verdict"]
    assert shot.stat().st_size > 10_000
