"""The tf.data pipeline on small synthetic TFRecords: one exact eval pass, host sharding, determinism,
exact resume, augmentation, dataset info and its cache."""

from __future__ import annotations

import itertools
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from flowers_jax.data import class_names, counts, fixtures, pipeline
from flowers_jax.data.counts import FileScan, SplitScan
from flowers_jax.data.info import DatasetInfo, dataset_info
from flowers_jax.data.pipeline import Host

NUM_CLASSES, SIZE = 5, 32
TRAIN_PER_CLASS, VAL_PER_CLASS, TEST = 8, 3, 7  # 40 train records in 4 shards, 15 val, 7 test


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    d = str(tmp_path_factory.mktemp("synthetic"))
    fixtures.write_synthetic_dataset(
        d,
        num_classes=NUM_CLASSES,
        image_size=SIZE,
        train_per_class=TRAIN_PER_CLASS,
        val_per_class=VAL_PER_CLASS,
        test_examples=TEST,
    )
    return d


def config(data_dir: str, **data_overrides):
    c = fixtures.data_only_config(data_dir, image_size=SIZE, batch_size=8, num_classes=NUM_CLASSES)
    for k, v in data_overrides.items():
        setattr(c.data, k, v)
    return c


def records(data_dir: str, split: str) -> dict[bytes, dict]:
    """Every record of a split read straight from the files: id -> {"label", "pixels"}."""
    out = {}
    for path in sorted(tf.io.gfile.glob(f"{data_dir}/tfrecords-jpeg-{SIZE}x{SIZE}/{split}/*.tfrec")):
        for r in tf.data.TFRecordDataset(path):
            ex = tf.train.Example.FromString(r.numpy()).features.feature
            jpeg = ex["image"].bytes_list.value[0]
            label = ex["class"].int64_list.value[0] if "class" in ex else None
            pixels = tf.io.decode_jpeg(jpeg, dct_method="INTEGER_ACCURATE").numpy()
            out[ex["id"].bytes_list.value[0]] = {"label": label, "pixels": pixels}
    return out


def batches(ds: tf.data.Dataset, n: int) -> list[dict[str, np.ndarray]]:
    return list(itertools.islice(ds.as_numpy_iterator(), n))


@pytest.mark.parametrize("split", ["val", "test"])
@pytest.mark.parametrize(("batch", "hosts"), [(4, 1), (16, 1), (3, 2), (4, 3), (2, 5)])
def test_eval_pass_counts_every_example_exactly_once(data_dir, split, batch, hosts):
    # 15 val / 7 test examples: not divisible by these batches; 5 hosts > 4 files shards by record.
    truth = records(data_dir, split)
    c = config(data_dir)
    seen, n_batches = [], set()
    for h in range(hosts):
        ds, num = pipeline.eval_dataset(c, split, host=Host(h, hosts), local_batch=batch)
        got = batches(ds, 1000)
        assert len(got) == num
        n_batches.add(num)
        for b in got:
            assert b["image"].shape == (batch, SIZE, SIZE, 3) and b["image"].dtype == np.float32
            assert ("label" in b) == (split == "val")
            real = b["mask"] == 1.0
            assert set(np.unique(b["mask"])) <= {0.0, 1.0}
            assert np.all(b["id"][~real] == b"") and np.all(b["image"][~real] == 0)
            for i in np.flatnonzero(real):
                seen.append(b["id"][i])
                # Eval images are the decoded pixels, untouched (records are already SIZE x SIZE).
                np.testing.assert_array_equal(b["image"][i], truth[b["id"][i]]["pixels"])
                if split == "val":
                    assert b["label"][i] == truth[b["id"][i]]["label"]
    assert sorted(seen) == sorted(truth)  # every example, each exactly once
    assert len(n_batches) == 1  # every host the same number of batches
    per_host_max = max(pipeline.host_share(pipeline.scan(c, split), Host(h, hosts)).num_examples for h in range(hosts))
    assert n_batches == {math.ceil(per_host_max / batch)}


def test_two_hosts_read_disjoint_shares_that_cover_the_split(data_dir):
    c = config(data_dir)
    truth = records(data_dir, "train")
    epoch_ids = []
    for h in range(2):
        share = pipeline.host_share(pipeline.scan(c, "train"), Host(h, 2))
        assert share.num_examples == 20 and not share.by_record
        got = batches(pipeline.train_dataset(c, host=Host(h, 2), local_batch=4), 10)  # two epochs of 5 batches
        first, second = (np.concatenate([b["id"] for b in got[i : i + 5]]) for i in (0, 5))
        assert len(set(first)) == 20 and set(first) == set(second)  # an epoch is a permutation of the share
        assert list(first) != list(second)  # and each epoch has its own order
        for b in got:
            assert all(b["label"][i] == truth[x]["label"] for i, x in enumerate(b["id"]))
        epoch_ids.append(set(first))
    assert not epoch_ids[0] & epoch_ids[1]
    assert epoch_ids[0] | epoch_ids[1] == set(truth)


def test_more_hosts_than_files_shards_by_record(data_dir):
    c = config(data_dir)
    split = pipeline.scan(c, "train")
    shares = [pipeline.host_share(split, Host(h, 6)) for h in range(6)]
    assert all(s.by_record for s in shares)
    ids = []
    for h, share in enumerate(shares):
        got = batches(pipeline.train_dataset(c, host=Host(h, 6), local_batch=share.num_examples), 1)
        ids += list(got[0]["id"])
    assert sorted(ids) == sorted(records(data_dir, "train"))


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_training_stream_is_deterministic_for_a_seed(data_dir):
    c = config(data_dir)
    a = batches(pipeline.train_dataset(c, local_batch=8), 7)
    b = batches(pipeline.train_dataset(c, local_batch=8), 7)
    assert_same_batches(a, b)
    c.seed = 1
    other = batches(pipeline.train_dataset(c, local_batch=8), 7)
    assert [list(x["id"]) for x in a] != [list(x["id"]) for x in other]


def test_stream_ignores_a_global_tf_seed_and_reshuffles_each_epoch(data_dir):
    # keras.utils.set_random_seed(0) in the same process (a notebook habit) once broke the shuffle.
    c = config(data_dir)
    c.data.augment.random_resized_crop = False
    plain = batches(pipeline.train_dataset(c, local_batch=8), 10)
    tf.random.set_seed(0)
    try:
        seeded = batches(pipeline.train_dataset(c, local_batch=8), 10)
    finally:
        tf.random.set_seed(None)
    assert_same_batches(plain, seeded)
    ids = [i for x in plain for i in x["id"]]
    epoch = len(set(ids[: len(ids) // 2]))
    assert sorted(ids[:epoch]) == sorted(ids[epoch : 2 * epoch])  # each epoch is every example once
    assert ids[:epoch] != ids[epoch : 2 * epoch]  # in another order


@pytest.mark.parametrize("host", [Host(0, 1), Host(1, 2)])
def test_resuming_at_a_step_yields_exactly_the_uninterrupted_batches(data_dir, host):
    c = config(data_dir)
    local = 8 // host.count  # 5 steps per epoch for either host
    full = batches(pipeline.train_dataset(c, host=host, local_batch=local), 13)
    for k in (1, 5, 7, 12):  # within the first epoch, at an epoch boundary, beyond, late
        resumed = batches(pipeline.train_dataset(c, host=host, local_batch=local, start_step=k), 13 - k)
        assert_same_batches(full[k:], resumed)


def test_augmentation_is_in_range_and_random(data_dir):
    c = config(data_dir)
    b = batches(pipeline.train_dataset(c, local_batch=8), 2)
    for x in b:
        assert x["image"].shape == (8, SIZE, SIZE, 3) and x["image"].dtype == np.float32
        assert x["label"].dtype == np.int32
        assert x["image"].min() >= 0.0 and x["image"].max() <= 255.0  # raw [0, 255]: never normalised
        assert x["image"].max() > 100  # and not rescaled to [0, 1]
    truth = records(data_dir, "train")
    x = b[0]
    assert not any(np.array_equal(x["image"][i], truth[x["id"][i]]["pixels"]) for i in range(8))


def test_flip_alone_gives_the_image_or_its_mirror(data_dir):
    c = config(data_dir)
    c.data.augment.update(random_resized_crop=False, rotation=0.0, zoom=0.0, contrast=0.0, flip=True)
    truth = records(data_dir, "train")
    flipped = 0
    for b in batches(pipeline.train_dataset(c, local_batch=8), 5):
        for image, id_ in zip(b["image"], b["id"], strict=True):
            original = truth[id_]["pixels"].astype(np.float32)
            if np.array_equal(image, original[:, ::-1]):
                flipped += 1
            else:
                np.testing.assert_array_equal(image, original)
    assert 5 <= flipped <= 35  # 40 draws of a fair coin


def test_records_of_another_size_are_resized(data_dir):
    c = config(data_dir)
    c.data.image_size, c.data.tfrecord_size = 24, SIZE
    ds, _ = pipeline.eval_dataset(c, "val", local_batch=15)
    b = batches(ds, 1)[0]
    truth = records(data_dir, "val")
    expected = tf.image.resize(truth[b["id"][0]]["pixels"], [24, 24], antialias=True).numpy()
    np.testing.assert_allclose(b["image"][0], expected, atol=1e-4)
    assert batches(pipeline.train_dataset(c, local_batch=4), 1)[0]["image"].shape == (4, 24, 24, 3)


def test_dataset_info_counts_and_caches_beside_the_data(data_dir, monkeypatch):
    c = config(data_dir)
    info = dataset_info(c)
    assert {k: info.num_examples(k) for k in info.splits} == {"train": 40, "val": 15, "test": 7}
    assert info.has_labels("train") and info.has_labels("val") and not info.has_labels("test")
    np.testing.assert_array_equal(info.splits["train"].class_counts, [8] * 5)
    assert info.splits["test"].class_counts is None
    assert info.class_names == tuple(class_names()[:5])  # from dataset.json
    assert info.steps_per_epoch(8) == 5
    np.testing.assert_allclose(info.class_weights(), np.ones(5))
    cached = [f for f in os.listdir(f"{data_dir}/tfrecords-jpeg-{SIZE}x{SIZE}/train") if f.endswith(".json")]
    assert len(cached) == 1 and cached[0].startswith("flowers_jax-scan-")

    def no_rescan(*args, **kwargs):
        raise AssertionError("scanned again although a cached scan exists")

    monkeypatch.setattr(counts, "_scan", no_rescan)
    assert dataset_info(c).num_examples("train") == 40


def test_scan_cache_falls_back_when_the_data_folder_is_read_only(data_dir, tmp_path, monkeypatch):
    c = config(data_dir)
    real_save = counts._save

    def save(scan, path):
        if path.startswith(data_dir):
            raise PermissionError(f"read-only: {path}")
        real_save(scan, path)

    monkeypatch.setattr(counts, "_save", save)
    monkeypatch.setattr(counts, "_load", lambda *a: None)  # ignore the cache already beside the data
    scan = counts.scan_split(pipeline.split_glob(c, "val"), num_classes=NUM_CLASSES, cache_dir=str(tmp_path))
    assert scan.cache_path.startswith(str(tmp_path)) and os.path.exists(scan.cache_path)
    assert scan.num_examples == 15


def test_class_weights_are_balanced():
    files = (FileScan("train-0.tfrec", size=0, readable=30, bad=()),)
    train = SplitScan("train/*", files, labelled=True, class_counts=(20, 10, 0), bad_records=())
    info = DatasetInfo(class_names=("a", "b", "c"), splits={"train": train})
    w = info.class_weights()
    np.testing.assert_allclose(w, [30 / (2 * 20), 30 / (2 * 10), 0.0])
    np.testing.assert_allclose((w * np.array([20, 10, 0])).sum(), 30)


def test_cache_eval_keeps_decoded_images_for_the_next_evaluation(data_dir, tmp_path):
    import shutil

    copy = str(tmp_path / "copy")
    shutil.copytree(data_dir, copy)
    c = config(copy, cache_eval=True)
    ds, n = pipeline.cached_eval_dataset(c, "val", local_batch=4)
    first = batches(ds, 100)
    shutil.rmtree(f"{copy}/tfrecords-jpeg-{SIZE}x{SIZE}/val")  # the next pass cannot read the files ...
    ds2, n2 = pipeline.cached_eval_dataset(c, "val", local_batch=4)
    assert ds2 is ds and n2 == n == 4
    assert_same_batches(first, batches(ds2, 100))  # ... and needs not: it comes from memory
