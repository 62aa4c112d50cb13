"""The page's "Add a species" in headless Chromium, against the Python reference (flowers_jax/personalise.py).

One browser launch per scenario, each a scripted visit (export/browser.mjs steps mode) over the shared
small export (tests/small_export.py), calibrated for adding by tests/add_species_site.py: the coffee cup
is added from the fake camera (several frames of it), then recognised in a held-back photo as Python
computes it, kept across reloads, renamed and deleted; the bad cases (camera refused, no shots, names
taken or empty, no IndexedDB, a full storage, another model's species, an uncalibrated export) each
say what is wrong and lose nothing already added.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
from small_export import CLASSES, MODEL, SIZE

from flowers_jax.export import browser

pytest.importorskip("keras")
pytestmark = pytest.mark.skipif(
    browser.chromium_path() is None, reason="no Chromium here (CI installs Debian's: apt-get install chromium)"
)

NAME = "my coffee"
PAGE = "calibrated/?backend=wasm"
C = len(CLASSES)

# Test hook run before the page's scripts: ?idb=throw makes indexedDB.open throw (as some private
# modes do), ?idb=quota makes every write fail with QuotaExceededError (as a full storage does), and
# the camera answers (here: no camera) only after 1.5 s, as a permission prompt left open does: a
# species finished from photos before then must keep its "Added" message.
BREAK_IDB = """
(() => {
  const mode = new URLSearchParams(location.search).get('idb');
  const fail = (name, text) => function () { throw new DOMException(text, name); };
  if (mode === 'throw') IDBFactory.prototype.open = fail('InvalidStateError', 'A mutation operation was not allowed.');
  if (mode === 'quota') IDBObjectStore.prototype.put = fail('QuotaExceededError', 'The quota has been exceeded.');
  const media = navigator.mediaDevices;
  if (media && media.getUserMedia) {
    const open = media.getUserMedia.bind(media);
    media.getUserMedia = (c) => new Promise((r) => setTimeout(r, 1500)).then(() => open(c));
  }
})();
"""


@pytest.fixture(scope="module")
def site(small_export, tmp_path_factory):
    import add_species_site

    out, variables = small_export
    return add_species_site.make(out, tmp_path_factory.mktemp("add_species"), variables), variables


def _png(path: pathlib.Path, rgb: np.ndarray) -> str:
    from PIL import Image

    Image.fromarray(np.asarray(rgb, np.uint8)).save(path)  # lossless, SIZE x SIZE: the page's exact pixels
    return str(path)


def _upload(path: str, label: str) -> list[dict]:
    """Choose `path` in the page's photo input and report the page once it has answered on it."""
    return [
        {"eval": "window.__frame = window.demo.state.frame"},
        {"files": "#file", "paths": [path]},
        {"wait": "window.demo.state.frame > window.__frame && window.demo.state.last.source === 'photo'"},
        {"snapshot": True, "label": label},
    ]


def _shots(n: int) -> list[dict]:
    steps = []
    for i in range(1, n + 1):  # a pause between shots: the fake camera moves on to another frame
        steps += [{"click": "#add-shot"}, {"wait": f"window.demo.state.adding.shots.length === {i}"}, {"sleep": 120}]
    return steps


def _item(name: str, button: str) -> str:
    return f'#added-list li[data-name="{name}"] .{button}'


def _reference(site, variables, snap: dict, means: np.ndarray, shots: list[int]) -> dict:
    """Python's answer on the page's exact input pixels: extended logits, probabilities and decision."""
    import dataclasses

    from flowers_jax import calibration, personalise
    from flowers_jax.export import exporter

    cal, stats = site.calibration, site.calibration.stats
    ref = exporter.flax_outputs(MODEL, variables, browser.snapshot_pixels(snap)[None])
    logits = personalise.added_logits(ref["logits"], ref["embedding"], stats, means, **site.add_species)
    extended = dataclasses.replace(cal, stats=personalise.with_added(stats, means, shots))
    return {
        "logits": logits[0],
        "probs": calibration.softmax(logits, cal.temperature)[0],
        "decision": extended.decide(logits, ref["embedding"])[0],
    }


def test_added_species_match_python_and_survive_reloads(site, tmp_path):
    """Camera shots give the mean of Flax's embeddings of their pixels; a species added from chosen
    photos is top-1 for a held-back photo as Python computes it, is kept, renamed and deleted."""
    from flowers_jax import personalise
    from flowers_jax.export import exporter, images

    site, variables = site
    video = browser.write_y4m(tmp_path / "coffee.y4m", np.stack(site.frames), frames=1, fps=5)
    held = _png(tmp_path / "held_back.png", site.held_back)
    photos = [_png(tmp_path / f"shot{i}.png", shot) for i, shot in enumerate(site.shots)]
    steps = [
        {"wait": "window.demo.state.frame >= 2"},  # the camera runs
        *_upload(held, "before"),  # the chosen photo stops the camera; adding starts it again
        {"click": "#add-species"},
        {"wait": "window.demo.state.running && !document.getElementById('add-shot').hidden"},
        {"fill": "#add-name", "value": "camera cup"},
        *_shots(4),
        {"click": "#add-done"},
        {"wait": "window.demo.snapshot().addedList.includes('camera cup')"},
        {"snapshot": True, "label": "camera"},
        {"click": _item("camera cup", "delete")},  # its confirm() is accepted
        {"wait": "window.demo.snapshot().addedList.length === 0"},
        {"click": "#add-species"},
        {"fill": "#add-name", "value": f"  {NAME} "},
        {"files": "#add-files", "paths": photos},
        {"wait": f"window.demo.state.adding.shots.length === {len(photos)}"},
        {"click": "#add-done"},
        {"wait": f"window.demo.snapshot().addedList.includes('{NAME}')"},
        *_upload(held, "after"),
        {"reload": True},
        *_upload(held, "reloaded"),
        {"click": _item(NAME, "rename")},
        {"fill": "#added-list .rename-input", "value": "our coffee"},
        {"click": "#added-list .rename-save"},
        {"wait": "window.demo.snapshot().shownTop5.includes('our coffee (yours)')"},  # the photo's answer follows
        {"reload": True},
        *_upload(held, "renamed"),
        {"click": _item("our coffee", "delete")},
        {"wait": "window.demo.snapshot().addedList.length === 0"},
        {"reload": True},
        *_upload(held, "deleted"),
    ]
    with browser.serve(site.root) as url:
        r = browser.run_steps(url + PAGE, steps, tmp_path, video=video, timeout_s=120)
    before, camera, after = r["before"], r["camera"], r["after"]
    stats = site.calibration.stats

    # Before: the coffee cup is no flower of the model's.
    no_means = np.zeros((0, len(before["embedding"])), np.float32)
    assert before["last"]["decision"] == _reference(site, variables, before, no_means, [])["decision"] == "unknown"

    # Camera shots are frames of the cup (not a test pattern), not all one frame, and the stored mean is
    # the mean of the Flax embeddings of exactly those pixels.
    shots = np.stack([browser.snapshot_pixels(camera, p) for p in camera["lastShots"]])
    frames = np.stack([images.centre_crop_resize(f, SIZE) for f in site.frames])
    nearest = np.abs(shots[:, None] - frames[None]).mean((2, 3, 4)).min(1)
    assert len(shots) == 4 and nearest.max() < 8 and len(set(camera["lastShots"])) >= 2, nearest
    [cup] = camera["added"]
    flax_cup = personalise.added_mean(exporter.flax_outputs(MODEL, variables, shots)["embedding"])
    assert cup["name"] == "camera cup" and cup["shots"] == 4
    assert np.abs(np.asarray(cup["mean"]) - flax_cup).max() <= 1e-4 * np.abs(flax_cup).max()

    # The chosen photos reach the model unchanged; the stored mean is Flax's.
    chosen = np.stack([browser.snapshot_pixels(after, p) for p in after["lastShots"]])
    assert np.array_equal(chosen, np.stack(site.shots).astype(np.float32))
    [added] = after["added"]
    assert added["name"] == NAME and added["shots"] == len(photos) and added["kept"] is True
    page_mean = np.asarray(added["mean"], np.float32)
    flax_mean = personalise.added_mean(exporter.flax_outputs(MODEL, variables, chosen)["embedding"])
    assert np.abs(page_mean - flax_mean).max() <= 1e-4 * np.abs(flax_mean).max()

    # The page's arithmetic is Python's on the page's own logits and embedding (float64 in both) ...
    mine = personalise.added_logits(
        np.asarray(after["modelLogits"])[None],
        np.asarray(after["embedding"])[None],
        stats,
        page_mean[None],
        **site.add_species,
    )[0]
    np.testing.assert_allclose(after["last"]["logits"], mine, rtol=1e-9, atol=1e-9 * np.abs(mine).max())
    # ... and its answer is Python's from the Flax model on the same pixels.
    ref = _reference(site, variables, after, flax_mean[None], [len(photos)])
    top = after["last"]["top5"][0]
    assert top["index"] == C == int(np.argmax(ref["probs"])) and top["name"] == NAME and top["yours"] is True
    assert np.abs(np.asarray(after["last"]["probabilities"]) - ref["probs"]).max() < 2e-3
    assert 0.3 < ref["probs"][C] < 0.999  # a contest, not a foregone conclusion
    assert after["last"]["decision"] == ref["decision"] == "answer"  # the added mean counts as known
    assert after["shownTop5"][0] == f"{NAME} (yours)" and after["verdict"].startswith(f"{NAME} (yours) · ")
    assert after["addMessage"] == f'Added "{NAME}" from {len(photos)} photos; kept on this device only.' + (
        " More photos (about 10) recognise it better."
    )

    # Kept across a reload (IndexedDB), renamed, deleted.
    reloaded = r["reloaded"]
    assert reloaded["addedList"] == [NAME] and reloaded["added"][0]["mean"] == added["mean"]
    assert reloaded["last"]["top5"][0]["name"] == NAME and reloaded["addNote"] == ""
    np.testing.assert_allclose(reloaded["last"]["probabilities"], after["last"]["probabilities"], atol=1e-6)
    assert r["renamed"]["addedList"] == ["our coffee"] and r["renamed"]["shownTop5"][0] == "our coffee (yours)"
    deleted = r["deleted"]
    assert deleted["addedList"] == [] and len(deleted["last"]["probabilities"]) == C
    assert deleted["last"]["decision"] == "unknown"
    assert not [c for c in r["console"] if c.startswith("pageerror")], r["console"]


def test_refused_camera_and_bad_names_lose_nothing(site, tmp_path):
    """Camera refused while adding -> photos instead; a trained or added name, no name, no shots or an
    unreadable file each say so, keep the panel's shots, and what was added before stays added."""
    site, _ = site
    photos = [_png(tmp_path / f"shot{i}.png", shot) for i, shot in enumerate(site.shots[:4])]
    text = tmp_path / "notes.txt"
    text.write_text("not a photo")

    def snap(label: str) -> dict:
        return {"snapshot": True, "label": label}

    steps = [
        {"click": "#add-species"},
        {"wait": "!document.getElementById('add-message').hidden"},
        snap("refused"),
        {"fill": "#add-name", "value": "PINK primrose"},
        {"files": "#add-files", "paths": photos[:3]},
        {"wait": "window.demo.state.adding.shots.length === 3"},
        {"click": "#add-done"},
        snap("trained name"),
        {"fill": "#add-name", "value": "   "},
        {"click": "#add-done"},
        snap("no name"),
        {"fill": "#add-name", "value": "Meadow"},
        {"click": "#add-done"},
        {"wait": "window.demo.snapshot().addedList.length === 1"},
        {"click": "#add-species"},
        {"fill": "#add-name", "value": "meadow"},
        {"files": "#add-files", "paths": photos[3:]},
        {"wait": "window.demo.state.adding.shots.length === 1"},
        {"click": "#add-done"},
        snap("added name"),
        {"click": "#add-cancel"},
        {"click": "#add-species"},
        {"fill": "#add-name", "value": "nothing yet"},
        {"press": "#add-name", "key": "Enter"},  # the phone keyboard's "Go" submits as Done does
        snap("no shots"),
        {"files": "#add-files", "paths": [str(text)]},
        {"wait": "window.demo.snapshot().addMessage.includes('could be read')"},
        snap("unreadable"),
        {"reload": True},
        snap("reloaded"),
    ]
    with browser.serve(site.root) as url:
        r = browser.run_steps(url + PAGE, steps, tmp_path, deny_camera=True)
    refused = r["refused"]
    assert refused["addPanelOpen"] and not refused["shotButtonShown"]
    assert refused["addMessage"].startswith("No shots from the camera: camera permission was refused. Choose photos")
    assert (
        r["trained name"]["addMessage"]
        == '"pink primrose" is one of the species this model was trained on: choose another name.'
    )
    assert r["no name"]["addMessage"] == "Give your species a name first."
    for label in ("trained name", "no name"):  # the shots wait for a better name
        assert r[label]["shotCount"] == 3 and r[label]["addPanelOpen"] and r[label]["addedList"] == []
    added = r["added name"]
    assert added["addMessage"].startswith('You already added a species called "Meadow"')
    assert added["addedList"] == ["Meadow"] and added["shotCount"] == 1
    assert r["no shots"]["addMessage"].startswith("Take at least one photo of it first")
    assert r["unreadable"]["addMessage"].startswith("None of the chosen files could be read as an image (notes.txt)")
    for label in ("no shots", "unreadable"):
        assert r[label]["shotCount"] == 0 and r[label]["addedList"] == ["Meadow"]
    assert r["reloaded"]["addedList"] == ["Meadow"] and r["reloaded"]["added"][0]["shots"] == 3


def test_without_storage_or_calibration(site, tmp_path):
    """No IndexedDB (open throws): added for this visit, said so. A full storage: the same. Species of
    another model: kept, not used, said so. An uncalibrated export: adding off, and what to do."""
    site, _ = site
    photos = [_png(tmp_path / f"shot{i}.png", shot) for i, shot in enumerate(site.shots[:3])]
    held = _png(tmp_path / "held_back.png", site.held_back)
    script = tmp_path / "break_idb.js"
    script.write_text(BREAK_IDB)

    def add(name: str) -> list[dict]:
        return [
            {"click": "#add-species"},
            {"fill": "#add-name", "value": name},
            {"files": "#add-files", "paths": photos},
            {"wait": "window.demo.state.adding.shots.length === 3"},
            {"click": "#add-done"},
            {"wait": f"window.demo.snapshot().addedList.includes('{name}')"},
        ]

    other = """new Promise((resolve, reject) => {
      const open = indexedDB.open('flowers-jax', 1);
      open.onsuccess = () => {
        const tx = open.result.transaction('species', 'readwrite');
        tx.objectStore('species').put({model: 'efficientnet_b0 | elsewhere | step 9 | 104 classes | 224 px',
          name: 'from elsewhere', mean: new Float32Array(1280), shots: 10, created: '2026-12-01T00:00:00Z'});
        tx.oncomplete = () => resolve(true);
        tx.onerror = () => reject(tx.error);
      };
      open.onerror = () => reject(open.error);
    })"""
    with browser.serve(site.root) as url:
        page = url + PAGE + "&camera=off"
        steps = [
            {"goto": page + "&idb=throw"},
            {"snapshot": True, "label": "no db"},
            *add("cup"),
            {"sleep": 2000},  # past the camera's late answer
            *_upload(held, "no db, added"),
            {"goto": page + "&idb=quota"},
            *add("cup"),
            {"snapshot": True, "label": "full"},
            {"goto": page},
            {"eval": other, "label": "put"},
            {"reload": True},
            {"snapshot": True, "label": "other model"},
            {"goto": url + "plain/?backend=wasm&camera=off"},
            {"snapshot": True, "label": "uncalibrated"},
        ]
        r = browser.run_steps(page, steps, tmp_path, init_script=script)
    no_db = r["no db"]
    assert no_db["addEnabled"] and no_db["storage"] == "this visit only"
    assert no_db["addNote"].startswith("Species you add work until this page is closed but are not kept: this browser")
    assert "(IndexedDB: A mutation operation was not allowed; private windows do this)" in no_db["addNote"]
    added = r["no db, added"]
    assert added["addMessage"].startswith(
        'Added "cup" from 3 photos for this visit only: this browser gives the page no storage'
    )
    assert added["added"][0]["kept"] is False and added["shownTop5"][0] == "cup (yours)"
    full = r["full"]
    assert full["storage"] == "indexeddb" and full["addedList"] == ["cup"]  # the unkept one did not come back
    assert "storage for the page is full" in full["addMessage"] and full["added"][0]["kept"] is False
    assert r["put"] is True
    other_model = r["other model"]
    assert other_model["addedList"] == [] and other_model["storage"] == "indexeddb"
    assert other_model["addNote"].startswith(
        '1 species added with another model ("from elsewhere") is kept on this device but not used here'
    )
    plain = r["uncalibrated"]
    assert plain["status"] == "ready" and not plain["addEnabled"]
    assert "needs an export calibrated for it" in plain["addNote"] and "--mode calibrate" in plain["addNote"]
