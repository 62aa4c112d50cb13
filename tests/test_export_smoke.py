"""The trained smoke model, exported from its workdir by the documented command, in a real browser."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from training_runs import ROOT, env

from flowers_jax import inference
from flowers_jax.export import browser, exporter, images, parity

pytest.importorskip("keras")


def _export(workdir, out, *extra: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """Runs the documented exporter command on a training workdir."""
    cmd = [sys.executable, str(ROOT / "export" / "export_model.py"), "--workdir", str(workdir), "--out", str(out)]
    return subprocess.run([*cmd, *extra], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def smoke_export(smoke_workdir, tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke_export") / "web"
    done = _export(smoke_workdir, out, "--tfjs-backends", "wasm,cpu")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    config, variables, _ = inference.load_for_inference(str(smoke_workdir), "best")
    return out, config, variables


def test_smoke_export_parity_and_metadata(smoke_export):
    out, config, _ = smoke_export
    report = json.loads((out / "parity.json").read_text())
    assert report["passed"] and report["images"]["count"] >= 32
    for name in ("keras_twin", "tfjs_node_wasm", "tfjs_node_cpu", "onnxruntime", "jax2tf_saved_model"):
        r = report["runtimes"][name]
        assert r["top1_agreement"] == 1.0 and r["max_abs_prob"] <= parity.MAX_ABS_PROB, (name, r)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["model_name"] == "efficientnet_lite0" and meta["input"]["size"] == 64
    assert len(meta["class_names"]) == 8 and meta["class_names"][0] == "pink primrose"
    assert meta["validation_metrics"]["macro_f1"] > 0


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
    assert snap["shownTop5"][0] == names[int(np.argmax(logits))]
    assert set(snap["shownTop5"]) == {names[i] for i in np.argsort(-logits)[:5]}
    assert shot.stat().st_size > 10_000
