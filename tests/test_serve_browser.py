"""The served page in headless Chromium: cross-origin isolated over HTTPS, wasm threads as TF.js's
rule predicts, installable, and working offline after one visit (or saying why it cannot).

The small export of tests/small_export.py (MobileNetV2 0.35 at 64 px, sensitised random variables)
is shared with test_export_end_to_end.py: one export per session. The browser trusts the server's certificate
by its public-key hash (`--ignore-certificate-errors-spki-list`), as a phone that installed the
local CA would; `--ignore-https-errors` plays a user who clicked through the warning instead.
"""

from __future__ import annotations

import json
import pathlib
import socket
import urllib.parse

import numpy as np
import pytest
from small_export import CLASSES, MODEL, SIZE

from flowers_jax.export import browser, exporter, images, web

pytest.importorskip("keras")
pytestmark = pytest.mark.skipif(
    browser.chromium_path() is None, reason="no Chromium here (CI installs Debian's: apt-get install chromium)"
)

PAGE = "?backend=wasm&camera=off"


@pytest.fixture(scope="module")
def exported(small_export) -> tuple[pathlib.Path, dict]:
    return small_export  # shared with test_export_end_to_end.py (conftest.py); never changed here


@pytest.fixture(scope="module")
def cert_dir(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.mktemp("certs")


def test_export_is_an_installable_app(exported):
    out, _ = exported
    manifest = json.loads((out / web.MANIFEST).read_text())
    assert manifest["display"] == "standalone" and manifest["theme_color"] and manifest["name"]
    from PIL import Image

    for icon in manifest["icons"]:
        with Image.open(out / icon["src"]) as im:
            assert f"{im.width}x{im.height}" == icon["sizes"] and im.format == "PNG"
    assert {i["sizes"] for i in manifest["icons"]} == {"192x192", "512x512"}
    sw = (out / web.SERVICE_WORKER).read_text()
    files = json.loads(sw.split("const FILES = ", 1)[1].split(";\n", 1)[0])
    shards = [p.relative_to(out).as_posix() for p in (out / "tfjs_model").glob("*.bin")]
    needed = ["index.html", "app.js", "metadata.json", "tfjs_model/model.json", "vendor/tf.min.js", *shards]
    assert set(needed) <= set(files) and "vendor/tfjs-backend-wasm-threaded-simd.wasm" in files
    assert "model.onnx" not in files and all((out / f).is_file() for f in files)
    assert "const VERSION = 'unversioned'" not in sw


def test_cache_version_follows_the_export(exported, tmp_path):
    """A re-export that changes one file gets a new cache name (the old cache is then deleted)."""
    import shutil

    out, _ = exported
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    same = web.finish(copy)
    assert f"const VERSION = '{same}'" in (out / web.SERVICE_WORKER).read_text()  # deterministic
    meta = json.loads((copy / "metadata.json").read_text())
    meta["checkpoint"] = {"step": 12345}
    (copy / "metadata.json").write_text(json.dumps(meta))
    assert web.finish(copy) != same


@pytest.mark.parametrize(("cores", "threads"), [(4, 2), (8, 4), (32, 8)])
def test_served_page_is_isolated_and_threads_follow_the_rule(exported, cert_dir, cores, threads):
    """TF.js 4.22 wasm: min(8, floor(hardwareConcurrency / 2)) threads on a cross-origin isolated page."""
    out, _ = exported
    with browser.serve_https(out, cert_dir) as (url, spki):
        snap = browser.run_page("page", url + PAGE, spki=spki, cores=cores)
    assert snap["status"] == "ready", snap
    assert snap["crossOriginIsolated"] is True and snap["cores"] == cores
    assert snap["backend"] == "wasm" and snap["threads"] == threads == min(8, cores // 2)
    assert snap["backendText"] == f"wasm, {threads} threads"
    assert snap["platformText"].startswith(f"{cores} cores · cross-origin isolated")


def test_plain_static_server_gets_one_thread(exported):
    """Without COOP/COEP (python -m http.server) the same 8 cores give one thread: isolation is what matters."""
    out, _ = exported
    with browser.serve(out) as url:
        snap = browser.run_page("page", url + PAGE, cores=8)
    assert snap["status"] == "ready" and snap["crossOriginIsolated"] is False
    assert snap["threads"] == 1 and "not cross-origin isolated" in snap["platformText"]


def _flax_top1(variables: dict, pixels: np.ndarray) -> str:
    return CLASSES[int(np.argmax(exporter.flax_logits(MODEL, variables, pixels[None])[0]))]


def _refused(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    with socket.socket() as s:
        return s.connect_ex((parts.hostname, parts.port)) != 0


def test_offline_after_one_visit_classifies_the_camera(exported, cert_dir, tmp_path):
    """First visit over trusted HTTPS caches everything; with the server stopped the page loads,
    still cross-origin isolated (the cached responses keep their headers), and classifies a photo."""
    from skimage import data

    out, variables = exported
    profile = tmp_path / "profile"  # the phone's browser: the service worker and its cache persist
    with browser.serve_https(out, cert_dir) as (url, spki):
        first = browser.run_page("page", url + PAGE, spki=spki, profile=profile, wait_offline=True)
    assert first["status"] == "ready" and first["offline"] == "ready" and first["offlineNote"] == "", first
    assert _refused(url)  # the server is gone

    photo = data.astronaut()
    video = browser.write_y4m(tmp_path / "photo.y4m", photo)
    shot = tmp_path / "offline.png"
    snap = browser.run_page(
        "camera",
        url + "?backend=wasm",
        video=video,
        spki=spki,
        profile=profile,
        cores=4,
        screenshot=shot,
        viewport="390x844",
    )
    assert snap["status"] == "ready", snap
    assert snap["last"]["source"] == "camera" and snap["offline"] == "ready"
    assert snap["crossOriginIsolated"] is True and snap["threads"] == 2
    pixels = browser.snapshot_pixels(snap)
    assert np.abs(pixels - images.centre_crop_resize(photo, SIZE)).mean() < 8  # the photo, not a test pattern
    assert snap["shownTop5"][0] == _flax_top1(variables, pixels)
    assert shot.stat().st_size > 10_000


def test_untrusted_certificate_works_online_and_says_why_not_offline(exported, cert_dir, tmp_path):
    """A user who clicked through the certificate warning: the page classifies, and says it cannot install."""
    from PIL import Image

    out, variables = exported
    square = images.skimage_photos(count=1, size=SIZE)[0].astype(np.uint8)
    png = tmp_path / "photo.png"
    Image.fromarray(square).save(png)
    with browser.serve_https(out, cert_dir) as (url, _):
        snap = browser.run_page("upload", url + PAGE, file=png, ignore_https_errors=True, wait_offline=True)
    assert snap["status"] == "ready" and snap["last"]["source"] == "photo"
    assert snap["shownTop5"][0] == _flax_top1(variables, browser.snapshot_pixels(snap))
    assert snap["offline"] == "unavailable"
    note = snap["offlineNote"]
    assert note.startswith("This page can't be installed or used offline here") and "certificate" in note
    assert "/flowers-jax-ca.crt" in note and snap["platformText"].endswith("online only")


def test_export_without_a_service_worker_says_to_export_again(exported, tmp_path):
    """An export made before offline support (no sw.js), on a trusted origin: works, and says what to do."""
    import shutil

    out, _ = exported
    old = tmp_path / "old"
    shutil.copytree(out, old)
    (old / web.SERVICE_WORKER).unlink()
    with browser.serve(old) as url:
        snap = browser.run_page("page", url + PAGE, wait_offline=True)
    assert snap["status"] == "ready" and snap["offline"] == "unavailable"
    assert "this export has no service worker" in snap["offlineNote"] and "export it again" in snap["offlineNote"]
    assert "certificate" not in snap["offlineNote"]
