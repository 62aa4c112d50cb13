"""Bad input stops with an error naming the file, the record and what to do, or, with
skip_bad_records=True, is skipped and counted in the logs; never silently."""

from __future__ import annotations

import itertools
import logging
import os

import numpy as np
import pytest
import tensorflow as tf

from flowers_jax.data import fixtures, pipeline
from flowers_jax.data.info import dataset_info
from flowers_jax.data.tfrecords import DataError, serialize_example

SIZE, NUM_CLASSES = 16, 5


def good(i: int, label: int | None = 1) -> bytes:
    image = fixtures.synthetic_image(np.random.default_rng(i), label or 0, NUM_CLASSES, SIZE)
    return serialize_example(id=f"ok-{i}", image=fixtures.encode_jpeg(image), label=label)


def example(**features) -> bytes:
    """A tf.train.Example with exactly the given features (bytes or int)."""
    f = {}
    for k, v in features.items():
        if isinstance(v, int):
            f[k] = tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))
        else:
            f[k] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))
    return tf.train.Example(features=tf.train.Features(feature=f)).SerializeToString()


def write_split(data_dir: str, split: str, files: list[list[bytes]]) -> list[str]:
    out = f"{data_dir}/tfrecords-jpeg-{SIZE}x{SIZE}/{split}"
    os.makedirs(out, exist_ok=True)
    paths = []
    for k, recs in enumerate(files):
        path = f"{out}/{k:02d}-{SIZE}x{SIZE}-{len(recs)}.tfrec"
        with tf.io.TFRecordWriter(path) as w:
            for r in recs:
                w.write(r)
        paths.append(path)
    return paths


def config(data_dir: str, skip: bool = False):
    c = fixtures.data_only_config(data_dir, image_size=SIZE, batch_size=4, num_classes=NUM_CLASSES)
    c.data.skip_bad_records = skip
    return c


JPEG = fixtures.encode_jpeg(fixtures.synthetic_image(np.random.default_rng(0), 2, NUM_CLASSES, SIZE))
CASES = {
    # name: (bad record, what the error says about it)
    "corrupt_jpeg": (example(id=b"bad", image=JPEG[: len(JPEG) // 2], **{"class": 1}), "image does not decode"),
    "not_an_image": (example(id=b"bad", image=b"this is not a JPEG", **{"class": 1}), "image does not decode"),
    "missing_image": (example(id=b"bad", **{"class": 1}), "missing feature 'image'"),
    "missing_id": (example(image=JPEG, **{"class": 1}), "missing feature 'id'"),
    "missing_class": (example(id=b"bad", image=JPEG), "missing feature 'class'"),
    "label_too_large": (example(id=b"bad", image=JPEG, **{"class": NUM_CLASSES}), "label 5 is outside [0, 5)"),
    "label_negative": (example(id=b"bad", image=JPEG, **{"class": -1}), "label -1 is outside [0, 5)"),
    "wrong_type": (example(id=b"bad", image=JPEG, **{"class": b"daisy"}), "not a tf.train.Example with id (bytes)"),
    "not_an_example": (b"\x00\x01garbage", "not a tf.train.Example"),
}


def bad_dataset(tmp_path, bad: bytes) -> tuple[str, str]:
    """train: two files, the bad record is record 2 of the second; val: clean. Returns (data_dir, bad file)."""
    d = str(tmp_path)
    paths = write_split(d, "train", [[good(i) for i in range(4)], [good(4), good(5), bad, good(6)]])
    write_split(d, "val", [[good(10 + i) for i in range(3)]])
    return d, paths[1]


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_record_stops_with_file_record_and_advice(tmp_path, case):
    bad, reason = CASES[case]
    d, bad_file = bad_dataset(tmp_path, bad)
    with pytest.raises(DataError) as e:
        pipeline.train_dataset(config(d), local_batch=4)
    msg = str(e.value)
    assert f"{bad_file} record 2: {reason}" in msg
    assert "skip_bad_records=True" in msg and "1 bad record(s)" in msg


@pytest.mark.parametrize("case", ["corrupt_jpeg", "missing_class", "label_too_large", "not_an_example"])
def test_bad_record_is_skipped_and_counted(tmp_path, case, caplog):
    bad, reason = CASES[case]
    d, bad_file = bad_dataset(tmp_path, bad)
    with caplog.at_level(logging.WARNING, logger="flowers_jax.data"):
        ds = pipeline.train_dataset(config(d, skip=True), local_batch=7)  # 7 good records: 1 batch = 1 epoch
        ids = [sorted(b["id"]) for b in itertools.islice(ds.as_numpy_iterator(), 3)]
    assert ids == [[f"ok-{i}".encode() for i in range(7)]] * 3  # every good record once per epoch, never the bad
    assert f"skipping bad record in the training split: {bad_file} record 2: {reason}" in caplog.text
    assert "skipped 1 bad record(s) in the training split; 7 usable records remain" in caplog.text


def test_truncated_file(tmp_path, caplog):
    d = str(tmp_path)
    (path,) = write_split(d, "val", [[good(i) for i in range(5)]])
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:-10])  # the last record loses its end
    size = len(data) - 10
    with pytest.raises(DataError, match=rf"{path} record 4: the file is truncated or corrupted at byte \d+ of {size}"):
        pipeline.eval_dataset(config(d), "val", local_batch=4)
    with caplog.at_level(logging.WARNING, logger="flowers_jax.data"):
        ds, n = pipeline.eval_dataset(config(d, skip=True), "val", local_batch=4)
        got = list(ds.as_numpy_iterator())
    ids = [x for b in got for x, m in zip(b["id"], b["mask"], strict=True) if m]
    assert n == 1 and sorted(ids) == [f"ok-{i}".encode() for i in range(4)]
    assert f"{path} record 4: the file is truncated" in caplog.text and "skipped 1 bad record(s)" in caplog.text
    assert len(dataset_info(config(d, skip=True)).splits["val"].bad_records) == 1


def test_bad_records_in_an_eval_split_are_named(tmp_path):
    d = str(tmp_path)
    write_split(d, "train", [[good(i) for i in range(4)]])
    (path,) = write_split(d, "val", [[good(10), CASES["corrupt_jpeg"][0]]])
    with pytest.raises(DataError, match=rf"in split 'val' .*\n  {path} record 1: image does not decode"):
        pipeline.eval_dataset(config(d), "val", local_batch=4)


def test_skipped_records_keep_resuming_exact(tmp_path):
    d, _ = bad_dataset(tmp_path, CASES["corrupt_jpeg"][0])
    c = config(d, skip=True)
    full = list(itertools.islice(pipeline.train_dataset(c, local_batch=3).as_numpy_iterator(), 8))
    resumed = list(itertools.islice(pipeline.train_dataset(c, local_batch=3, start_step=5).as_numpy_iterator(), 3))
    for a, b in zip(full[5:], resumed, strict=True):
        np.testing.assert_array_equal(a["id"], b["id"])
        np.testing.assert_array_equal(a["image"], b["image"])


def test_empty_glob_says_what_exists(tmp_path):
    d = str(tmp_path)
    write_split(d, "train", [[good(0)]])
    c = config(d)
    with pytest.raises(
        DataError,
        match=r"no files match .*tfrecords-jpeg-16x16/val/\*\.tfrec.*val' does not exist; .*16x16' holds \['train'\]",
    ):
        pipeline.eval_dataset(c, "val", local_batch=4)
    c.data.image_size = 224  # a size that was not converted: the error lists the sizes there are
    with pytest.raises(DataError, match=r"Image sizes available: \[16\]: set config.data.tfrecord_size"):
        pipeline.train_dataset(c, local_batch=4)
    with pytest.raises(DataError, match=r"no files match '/nowhere/\*\.tfrec'\. Nothing of that path exists"):
        pipeline.eval_dataset(c, "/nowhere/*.tfrec", local_batch=4)
    c.data.data_dir = ""
    with pytest.raises(DataError, match=r"config.data.data_dir is empty"):
        pipeline.train_dataset(c, local_batch=4)


def test_glob_matching_files_that_are_not_tfrecords(tmp_path):
    d = str(tmp_path)
    write_split(d, "train", [[good(0)]])
    photo = f"{d}/photos/daisy.tfrec"
    os.makedirs(os.path.dirname(photo))
    with open(photo, "wb") as f:
        f.write(JPEG)
    with pytest.raises(
        DataError, match=rf"{photo} record 0: the file cannot be read as TFRecords \(not a TFRecord file"
    ):
        pipeline.eval_dataset(config(d), f"{d}/photos/*", local_batch=4)


def test_unlabelled_training_split_is_refused(tmp_path):
    d = str(tmp_path)
    write_split(d, "train", [[good(i, label=None) for i in range(3)]])
    with pytest.raises(DataError, match="has no labels"):
        pipeline.train_dataset(config(d), local_batch=2)
