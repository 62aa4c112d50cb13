"""The page-fed eval (flowers_jax/page_eval.py): photos read and resized as the web page does.

The photo-reading path runs on tiny folders made here (offline, no ../shared). The browser test
uploads large non-square photos through the page's file input, so the page downsamples them, and
compares the page's own pixels with Python's; the end-to-end runs reuse the session's smoke
workdir and small export (tests/conftest.py).
"""

from __future__ import annotations

import csv
import json
import pathlib
import shutil

import numpy as np
import pytest
from test_chosen_size import calibration_at

from flowers_jax import page_eval, trust
from flowers_jax.evaluation import EvalError
from flowers_jax.export import browser, images

# The page's own pixels against page_eval.page_pixels (export.images.page_input) in the browser test.
# benchmarks/page_pixels.py measured, on Chromium 150, over 25 photos (scikit-image's and Oxford's,
# PNG and JPEG, 3 with EXIF orientations) at 64 to 320 px: mean |diff| <= 0.003 of a level, >= 99.7%
# of values equal, max 1 but for a few values (up to 11) in 3 photos. On this test's three photos:
# mean 0.0000 / 0.0037 / 0.0015, max 0 / 1 / 1. The antialiased bilinear resize of the TFRecord path
# is 1.1 to 1.6 off on average on them.
PAGE_MEAN_ABS, PAGE_MAX_ABS = 0.02, 2


def _jpeg(path: pathlib.Path, rgb: np.ndarray, *, orientation: int = 1, quality: int = 90) -> pathlib.Path:
    from PIL import Image

    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(rgb, np.uint8)).save(path, quality=quality, exif=exif.tobytes())
    return path


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth [h, w, 3] picture with detail at every scale (a real photo's spectrum, roughly)."""
    from skimage import data, transform

    base = data.astronaut() if seed % 2 == 0 else data.coffee()
    return (transform.resize(base, (h, w), anti_aliasing=True) * 255).round().astype(np.uint8)


# ---------------------------------------------------------------- pixels


def test_page_resize_is_exact_without_resampling_and_follows_chromiums_steps():
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (40, 52, 3)).astype(np.uint8)
    # An S x S square at an integer offset is not resampled: the page's pixels are the photo's.
    np.testing.assert_array_equal(images.page_resize(photo, 40), photo[:, 6:46])
    # Half the size: the decode cache's mip level, 2 x 2 boxes with the sum truncated, drawn 1:1.
    boxes = photo[:, 6:46].reshape(20, 2, 20, 2, 3).astype(int).sum((1, 3)) // 4
    np.testing.assert_array_equal(images.page_resize(photo, 20), boxes)
    big = _photo(300, 421)  # W - H odd: the square starts half a pixel in
    out = images.page_resize(big, 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.float32 and np.all(out == np.round(out))
    np.testing.assert_array_equal(images.page_resize(np.full((300, 421, 3), 77, np.uint8), 64), 77)
    # Close to an antialiased resize of the same square (another filter, not another picture).
    assert np.abs(out - images.centre_crop_resize(big, 64)).mean() < 6


def test_read_upright_turns_the_photo_as_the_browser_shows_it(tmp_path):
    stored = _photo(60, 80)
    plain = _jpeg(tmp_path / "plain.jpg", stored)
    turned = _jpeg(tmp_path / "turned.jpg", stored, orientation=6)  # "rotate 90 clockwise to view"
    decoded = images.decode_jpeg(plain)
    np.testing.assert_array_equal(images.read_upright(plain), decoded)
    upright = images.read_upright(turned)
    assert upright.shape == (80, 60, 3)
    np.testing.assert_array_equal(upright, np.rot90(decoded, k=-1))
    png = tmp_path / "photo.png"
    from PIL import Image

    Image.fromarray(stored).save(png)
    np.testing.assert_array_equal(images.read_upright(png), stored)
    assert page_eval.page_pixels(str(turned), 32).shape == (32, 32, 3)


# ---------------------------------------------------------------- photos


def _oxford_folder(root: pathlib.Path) -> pathlib.Path:
    rows = []
    for i, (label, split) in enumerate([(1, "train"), (2, "val"), (3, "test"), (1, "test"), (5, "test"), (2, "val")]):
        name = f"jpg/image_{i + 1:05d}.jpg"
        _jpeg(root / name, _photo(50 + i, 70, seed=i))
        rows.append({"filename": name, "present": "1", "label": label, "split": split})
    rows.append({"filename": "jpg/image_00099.jpg", "present": "0", "label": 9, "split": "test"})  # not here
    with (root / "labels.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_find_photos_reads_the_converters_layouts(tmp_path):
    root = _oxford_folder(tmp_path / "oxford")
    photos, names, source = page_eval.find_photos(str(root), "test")
    assert [p.id for p in photos] == ["image_00003", "image_00004", "image_00005"]
    assert [p.label for p in photos] == [2, 0, 4] and len(names) == 104 and "oxford102" in source
    with pytest.raises(EvalError, match="no 'train_extra' photos .* test, train, val"):
        page_eval.find_photos(str(root), "train_extra")

    folders = tmp_path / "folders"  # <root>/{train,val}/<class>/ with class names of the run's own
    for split, cls, n in (("train", "alpha", 2), ("val", "alpha", 1), ("val", "beta", 2)):
        for i in range(n):
            _jpeg(folders / split / cls / f"{i}.jpg", _photo(40, 30 + i))
    photos, names, _ = page_eval.find_photos(str(folders), "val")
    assert names == ["alpha", "beta"] and [p.label for p in photos] == [0, 1, 1]
    with pytest.raises(EvalError, match="has neither labels.csv|no sub-folders"):
        page_eval.find_photos(str(tmp_path / "folders" / "val" / "alpha"), "val")


def test_predict_photos_batches_in_order_and_pads_the_last(tmp_path):
    root = _oxford_folder(tmp_path / "oxford")
    photos, _, _ = page_eval.find_photos(str(root), "test")
    shapes = []

    def score(x):  # the mean of each channel as 3 "logits", the pixel sum as the embedding
        shapes.append(x.shape)
        return x.mean((1, 2)), x.reshape(len(x), -1).sum(1, keepdims=True)

    out = page_eval.predict_photos(photos, 16, score, batch_size=2, workers=2)
    assert shapes == [(2, 16, 16, 3), (2, 16, 16, 3)]  # 3 photos: the last batch padded to 2
    want = np.stack([page_eval.page_pixels(p.path, 16).mean((0, 1)) for p in photos])
    np.testing.assert_allclose(out.logits[0], want, rtol=1e-6)
    assert out.ids == [p.id for p in photos] and out.labels.tolist() == [2, 0, 4]
    assert out.embeddings.shape == (3, 1)
    assert page_eval.out_dir_name(str(root) + "/", "test", 288) == "page-oxford-test@288px"


# ---------------------------------------------------------------- end to end


def _smoke_photos(root: pathlib.Path, count: int = 3) -> pathlib.Path:
    """<root>/{train,val}/<class>/: the smoke run's classes as larger JPEGs of its synthetic kind."""
    from flowers_jax.data import classes, fixtures

    rng = np.random.default_rng(1)
    for label, name in enumerate(classes.default_names(8)):
        for split, n in (("train", 1), ("val", count)):
            for i in range(n):
                image = fixtures.synthetic_image(rng, label, 8, 150)
                _jpeg(root / split / name / f"{i}.jpg", np.asarray(image)[:, 10:])  # 150 x 140: not square
    return root


def test_page_fed_eval_writes_its_own_reports_and_refuses_what_eval_refuses(smoke_workdir, tmp_path):
    from configs import smoke

    w = tmp_path / "w"
    shutil.copytree(smoke_workdir, w, ignore=shutil.ignore_patterns("eval", "predict", "export*"))
    photos = _smoke_photos(tmp_path / "photos")
    summary = page_eval.run_page_eval(smoke.get_config(), str(w), str(photos), "best", "val")
    out = w / "eval" / "best" / "page-photos-val@64px"
    m = json.loads((out / "metrics.json").read_text())
    assert m == json.loads(json.dumps(summary)) and m["source"] == "page" and m["examples"] == 24
    assert m["image_size"] == 64 and m["split"] == "val" and m["runtime"] == "flax" and m["tta"] == ""
    assert m["intervals"]["accuracy"][0] <= m["accuracy"] <= m["intervals"]["accuracy"][1]
    assert m["accuracy"] > 0.3  # 8 classes: well above chance on photos the model never saw at this size
    for f in ("per_class.csv", "confusion_matrix.png", "reliability.png", "guard.json"):
        assert (out / f).exists(), f
    assert not (w / "eval" / "best" / "val").exists()  # the TFRecord eval's folder is another one

    trust.save(str(w), calibration_at(96, m["checkpoint_step"]))
    with pytest.raises(EvalError, match="at 96px, not step .* at 64px.*--mode calibrate"):
        page_eval.run_page_eval(smoke.get_config(), str(w), str(photos), "best", "val", image_size=64)


def test_onnx_scores_the_page_pixels_as_flax_does(small_export, tmp_path):
    import small_export as small

    from flowers_jax.export import exporter

    out, variables = small_export
    export = tmp_path / "export"
    export.mkdir()
    shutil.copy(out / "model.onnx", export / "model.onnx")
    meta = json.loads((out / "metadata.json").read_text())
    meta["checkpoint"]["step"] = 5
    (export / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(EvalError, match="holds step 5 at 64px, not step 6 at 64px"):
        page_eval.onnx_scorer(str(export), step=6, image_size=small.SIZE)
    score = page_eval.onnx_scorer(str(export), step=5, image_size=small.SIZE)
    x = np.stack([images.page_resize(_photo(90, 120, seed=s), small.SIZE) for s in range(2)])
    logits, embedding = score(x)
    ref = exporter.flax_outputs(small.MODEL, variables, x)
    np.testing.assert_allclose(logits, ref["logits"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(embedding, ref["embedding"], rtol=1e-4, atol=1e-4)


needs_chromium = pytest.mark.skipif(
    browser.chromium_path() is None, reason="no Chromium here (CI installs Debian's: apt-get install chromium)"
)


@needs_chromium
def test_python_feeds_the_pixels_the_page_feeds_for_large_photos(small_export, tmp_path):
    """Large non-square JPEGs chosen in the page's file input, so the canvas downsamples (600 -> 64):
    a portrait photo, one whose square starts half a pixel in, and one stored sideways with an EXIF
    orientation. The page's own pixels are page_eval.page_pixels' within the measured tolerance."""
    from skimage import data

    out, _ = small_export
    retina = data.retina()
    photos = {
        "portrait 600x800": _jpeg(tmp_path / "portrait.jpg", retina[300:1100, 400:1000]),
        "half-pixel square 601x800": _jpeg(tmp_path / "odd.jpg", retina[300:1100, 400:1001]),
        "EXIF sideways 800x600": _jpeg(tmp_path / "sideways.jpg", np.rot90(retina[300:1100, 400:1000]), orientation=6),
    }
    steps = []
    for label, path in photos.items():
        steps += [
            {"eval": "window.__frame = window.demo.state.frame"},
            {"files": "#file", "paths": [str(path)]},
            {"wait": "window.demo.state.frame > window.__frame && window.demo.state.last.source === 'photo'"},
            {"snapshot": True, "label": label},
        ]
    with browser.serve(out) as url:
        shown = browser.run_steps(url + "?backend=wasm", steps, tmp_path)
    for label, path in photos.items():
        page = browser.snapshot_pixels(shown[label])
        ours = page_eval.page_pixels(str(path), shown[label]["size"])
        diff = np.abs(page - ours)
        assert diff.mean() <= PAGE_MEAN_ABS and diff.max() <= PAGE_MAX_ABS, (label, diff.mean(), diff.max())
        # The filter matters: the antialiased bilinear resize of the TFRecord path is far further off.
        bilinear = np.abs(page - images.centre_crop_resize(images.read_upright(path), shown[label]["size"]))
        assert bilinear.mean() > diff.mean(), (label, bilinear.mean(), diff.mean())
    assert not [c for c in shown["console"] if c.startswith("pageerror")], shown["console"]
