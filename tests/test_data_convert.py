"""`python -m flowers_jax.data.convert` -> the competition schema -> the reader: same pixels, labels, ids."""

from __future__ import annotations

import csv
import io
import json
import os
import pathlib

import numpy as np
import pytest
import scipy.io
import tensorflow as tf
from PIL import Image

from flowers_jax.data import class_names, convert, fixtures, pipeline
from flowers_jax.data.tfrecords import DataError

SIZE = 32
SUNFLOWER, DANDELION = class_names().index("sunflower"), class_names().index("common dandelion")


def save(path, image: np.ndarray, fmt: str = "JPEG", **kwargs) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(image).save(path, format=fmt, quality=95, **kwargs)


def bands(h: int, w: int) -> np.ndarray:
    """A landscape/portrait photo whose centre square is green and whose margins are red and blue."""
    image = np.zeros((h, w, 3), np.uint8)
    side = min(h, w)
    y, x = (h - side) // 2, (w - side) // 2
    image[..., 0] = 200  # red margins ...
    image[y : y + side, x : x + side] = (30, 200, 40)  # ... around a green centre square
    if h > w:
        image[y + side :, :] = (20, 30, 220)  # blue below
    else:
        image[:, x + side :] = (20, 30, 220)  # blue right
    return image


def read_records(pattern: str) -> dict[str, dict]:
    out = {}
    for path in sorted(tf.io.gfile.glob(pattern)):
        for r in tf.data.TFRecordDataset(path):
            f = tf.train.Example.FromString(r.numpy()).features.feature
            label = f["class"].int64_list.value[0] if "class" in f else None
            out[f["id"].bytes_list.value[0].decode()] = {"label": label, "jpeg": f["image"].bytes_list.value[0]}
    return out


def pil_pixels(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(4):  # already 32 x 32 JPEGs: stored as they are
        save(f"{root}/sunflower/sq{i}.jpg", fixtures.synthetic_image(rng, SUNFLOWER, 104, SIZE))
    for i in range(3):  # landscape JPEGs and portrait PNGs: centre-cropped and resized
        save(f"{root}/sunflower/wide{i}.jpg", bands(60, 100))
        save(f"{root}/Common_Dandelion/tall{i}.png", bands(90, 50), fmt="PNG")
    with open(f"{root}/Common_Dandelion/broken.jpg", "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 this is no photo")
    return str(root)


def test_folder_round_trip_keeps_pixels_labels_and_ids(photos, tmp_path, capsys, caplog):
    out = str(tmp_path / "data")
    assert (
        convert.main(["folder", "--input", photos, "--output", out, "--sizes", str(SIZE), "--val-fraction", "0.3"]) == 0
    )
    layout = f"{out}/tfrecords-jpeg-{SIZE}x{SIZE}"
    meta = json.loads(pathlib.Path(f"{layout}/dataset.json").read_text())
    with open(f"{layout}/ids.csv") as f:
        ids = {r["id"]: r for r in csv.DictReader(f)}
    assert len(ids) == 10 and meta["source"]["skipped_undecodable"] == [f"{photos}/Common_Dandelion/broken.jpg"]
    assert "1 photo(s) could not be decoded and were skipped" in caplog.text
    assert meta["class_names"] == class_names() and meta["image_size"] == SIZE
    assert sum(s["num_examples"] for s in meta["splits"].values()) == 10
    assert meta["splits"]["train"]["class_counts"][SUNFLOWER] + meta["splits"]["val"]["class_counts"][SUNFLOWER] == 7

    c = fixtures.data_only_config(out, image_size=SIZE, batch_size=4)
    for split in ("train", "val"):
        stored = read_records(f"{layout}/{split}/*.tfrec")
        assert set(stored) == {i for i, r in ids.items() if r["split"] == split}
        assert meta["splits"][split]["num_examples"] == len(stored)
        ds, _ = pipeline.eval_dataset(c, split, local_batch=4)
        seen = set()
        for b in ds.as_numpy_iterator():
            for image, label, id_, m in zip(b["image"], b["label"], b["id"], b["mask"], strict=True):
                if not m:
                    continue
                id_ = id_.decode()
                seen.add(id_)
                source = os.path.join(photos, ids[id_]["source"])
                expected_label = SUNFLOWER if "/sunflower/" in source else DANDELION
                assert label == stored[id_]["label"] == expected_label == int(ids[id_]["label"])
                # The reader yields exactly what an accurate decoder (PIL) makes of the stored JPEG ...
                np.testing.assert_array_equal(image, pil_pixels(stored[id_]["jpeg"]))
                if os.path.basename(source).startswith("sq"):
                    # ... which, for a JPEG already at the size, is the photo itself, byte for byte.
                    assert stored[id_]["jpeg"] == pathlib.Path(source).read_bytes()
                else:
                    # ... and otherwise the photo's green centre square, without the red/blue margins.
                    r, g, b_ = image.reshape(-1, 3).mean(0)
                    assert g > 180 and r < 50 and b_ < 60, (source, r, g, b_)
        assert seen == set(stored)


def test_conversion_is_deterministic_and_splits_are_stable(photos, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    convert.main(["folder", "--input", photos, "--output", a, "--sizes", "16", "--val-fraction", "0.3"])
    convert.main(["folder", "--input", photos, "--output", b, "--sizes", "16", "--val-fraction", "0.3"])
    files = sorted(os.path.relpath(p, a) for p in tf.io.gfile.glob(f"{a}/tfrecords-jpeg-16x16/*/*.tfrec"))
    assert files == sorted(os.path.relpath(p, b) for p in tf.io.gfile.glob(f"{b}/tfrecords-jpeg-16x16/*/*.tfrec"))
    for f in files:
        assert pathlib.Path(f"{a}/{f}").read_bytes() == pathlib.Path(f"{b}/{f}").read_bytes()
    # Refuses to write over a converted size, unless asked.
    assert convert.main(["folder", "--input", photos, "--output", a, "--sizes", "16"]) == 2
    assert convert.main(["folder", "--input", photos, "--output", a, "--sizes", "16", "--overwrite"]) == 0


def test_strict_stops_on_a_photo_that_does_not_decode(photos, tmp_path):
    found, names, _ = convert.folder_photos(photos)
    with pytest.raises(DataError, match=r"(?s)1 photo\(s\) could not be decoded \(nothing was written.*broken\.jpg"):
        convert.convert(found, names, str(tmp_path), sizes=[16], strict=True)


def test_exif_orientation_is_applied(tmp_path):
    stored = np.zeros((20, 40, 3), np.uint8)  # as stored: red top half, blue bottom half
    stored[:10] = (220, 20, 20)
    stored[10:] = (20, 20, 220)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": red ends up on the right
    save(f"{tmp_path}/photos/daisy/rotated.jpg", stored, exif=exif)
    convert.main(["folder", "--input", f"{tmp_path}/photos", "--output", f"{tmp_path}/out", "--sizes", "16"])
    (record,) = read_records(f"{tmp_path}/out/tfrecords-jpeg-16x16/*/*.tfrec").values()
    image = pil_pixels(record["jpeg"]).astype(float)
    assert image[:, :8, 2].mean() > 150 and image[:, 8:, 0].mean() > 150  # blue left, red right


def test_split_layout_and_class_names(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "photos"
    for split in ("train", "val"):
        for name in ("roses", "tulips"):
            save(f"{root}/{split}/{name}/a.jpg", fixtures.synthetic_image(rng, 0, 5, 20))
    save(f"{root}/test/unknown.jpg", fixtures.synthetic_image(rng, 0, 5, 20))
    with pytest.raises(DataError, match=r"\['roses', 'tulips'\] match none of the 104"):
        convert.folder_photos(str(root), classes="kaggle")
    found, names, _ = convert.folder_photos(str(root))  # auto: no name matches, so the folders are the classes
    assert names == ["roses", "tulips"]
    assert sorted((p.split, p.label) for p in found) == [
        ("test", None),
        ("train", 0),
        ("train", 1),
        ("val", 0),
        ("val", 1),
    ]
    save(f"{root}/train/rose/b.jpg", fixtures.synthetic_image(rng, 0, 5, 20))  # one matches, two do not
    with pytest.raises(DataError, match=r"some class folders are competition classes.*--classes folders"):
        convert.folder_photos(str(root))


def write_oxford(root, *, with_csv: bool = True) -> dict[int, tuple[int, str]]:
    """A miniature Oxford-102 layout: 12 of 16 listed images present. Returns {image number: (label, split)}."""
    labels = np.array([1 + (i * 7) % 102 for i in range(16)], np.uint8)
    sets = {"trnid": [1, 2, 3, 4, 5], "valid": [6, 7, 8, 9], "tstid": [10, 11, 12, 13, 14, 15, 16]}
    scipy.io.savemat(f"{root}/imagelabels.mat", {"labels": labels[None]})
    scipy.io.savemat(f"{root}/setid.mat", {k: np.array(v, np.uint16)[None] for k, v in sets.items()})
    truth, rows = {}, []
    split_of = {
        i: s for s, ids in (("train", sets["trnid"]), ("val", sets["valid"]), ("test", sets["tstid"])) for i in ids
    }
    rng = np.random.default_rng(2)
    for i in range(1, 17):
        present = i % 4 != 0
        if present:
            save(f"{root}/jpg/image_{i:05d}.jpg", fixtures.synthetic_image(rng, int(labels[i - 1]), 104, 24 + i))
            truth[i] = (int(labels[i - 1]), split_of[i])
        rows.append([f"jpg/image_{i:05d}.jpg", int(present), int(labels[i - 1]), split_of[i]])
    if with_csv:
        with open(f"{root}/labels.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["filename", "present", "label", "split"])
            w.writerows(rows)
    return truth


@pytest.mark.parametrize("with_csv", [True, False])
def test_oxford_layout(tmp_path, with_csv):
    truth = write_oxford(tmp_path, with_csv=with_csv)
    out = str(tmp_path / "out")
    assert convert.main(["oxford102", "--input", str(tmp_path), "--output", out, "--sizes", "16"]) == 0
    for split in ("train", "val", "test"):
        got = read_records(f"{out}/tfrecords-jpeg-16x16/{split}/*.tfrec")
        want = {f"image_{i:05d}": label - 1 for i, (label, s) in truth.items() if s == split}
        assert {k: v["label"] for k, v in got.items()} == want  # competition class = Oxford label - 1


def test_oxford_unlabelled_test_and_disagreeing_label_files(tmp_path):
    write_oxford(tmp_path)
    out = str(tmp_path / "out")
    convert.main(["oxford102", "--input", str(tmp_path), "--output", out, "--sizes", "16", "--unlabelled-test"])
    assert all(r["label"] is None for r in read_records(f"{out}/tfrecords-jpeg-16x16/test/*.tfrec").values())
    c = fixtures.data_only_config(out, image_size=16, batch_size=2)
    _, n = pipeline.eval_dataset(c, "test", local_batch=2)
    assert n == 3 and not pipeline.scan(c, "test").labelled
    with open(f"{tmp_path}/labels.csv") as f:
        text = f.read()
    with open(f"{tmp_path}/labels.csv", "w") as f:
        f.write(text.replace("jpg/image_00002.jpg,1,8,train", "jpg/image_00002.jpg,1,9,train"))
    with pytest.raises(
        DataError, match=r"labels.csv and the .mat files disagree on 1 images: \['jpg/image_00002.jpg'\]"
    ):
        convert.oxford_photos(str(tmp_path))


def test_oxford_hold_out_classes(tmp_path):
    """--hold-out-classes K: K classes gone from train/val/test, the rest renumbered with their names,
    the held-out classes' val/test photos in val_unknown/test_unknown without labels."""
    truth = write_oxford(tmp_path)
    out = str(tmp_path / "out")
    args = ["oxford102", "--input", str(tmp_path), "--output", out, "--sizes", "16", "--hold-out-classes", "2"]
    assert convert.main(args) == 0
    meta = json.loads(pathlib.Path(f"{out}/tfrecords-jpeg-16x16/dataset.json").read_text())
    held = {h["class"] for h in meta["source"]["held_out_classes"]["held_out"]}
    known = meta["source"]["held_out_classes"]["known_from_original"]
    assert len(held) == 2 and not held & set(known) and meta["num_classes"] == len(known)
    assert meta["class_names"] == [class_names()[c] for c in known]
    for split in ("train", "val", "test"):
        got = read_records(f"{out}/tfrecords-jpeg-16x16/{split}/*.tfrec")
        want = {
            f"image_{i:05d}": known.index(lab - 1) for i, (lab, s) in truth.items() if s == split and lab - 1 in known
        }
        assert {k: v["label"] for k, v in got.items()} == want
    for split in ("val", "test"):
        want = {f"image_{i:05d}" for i, (lab, s) in truth.items() if s == split and lab - 1 in held}
        if want:
            got = read_records(f"{out}/tfrecords-jpeg-16x16/{split}_unknown/*.tfrec")
            assert set(got) == want and all(r["label"] is None for r in got.values())
    with pytest.raises(DataError, match="need 0 < K <"):
        convert.hold_out_classes(convert.oxford_photos(str(tmp_path))[0], class_names(), 99)


def test_oxford_labels_csv_with_nothing_present_says_so(tmp_path):
    (tmp_path / "labels.csv").write_text("filename,present,label,split\njpg/image_00001.jpg,0,1,train\n")
    with pytest.raises(DataError, match=r"all 1 rows have present=0"):
        convert.oxford_photos(str(tmp_path))
