"""Extra TFDS data (folders the tests write; never a registered dataset's download) mapped into the
competition classes and mixed into the training stream at the configured weight."""

from __future__ import annotations

import itertools
import json
import logging
import os

import numpy as np
import pytest
import tfds_folders

from flowers_jax.data import class_names, fixtures, pipeline, tfds_sources
from flowers_jax.data.pipeline import Host
from flowers_jax.data.tfrecords import DataError

NUM_CLASSES, SIZE = 5, 24  # the synthetic competition data has the first 5 competition classes
SWEET_PEA, GERANIUM = class_names().index("sweet pea"), class_names().index("wild geranium")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> tuple[str, str]:
    """(competition data_dir with 5 classes x 6, TFDS folder with sweet pea, wild geranium, cactus x 10 each)."""
    root = tmp_path_factory.mktemp("tfds")
    data_dir = str(root / "competition")
    fixtures.write_synthetic_dataset(
        data_dir, num_classes=5, image_size=SIZE, train_per_class=6, val_per_class=1, test_examples=1
    )
    builder_dir = tfds_folders.write_tfds_folder(
        str(root / "tfds"),
        name="extra_flowers",
        class_names=["sweet pea", "wild geranium", "cactus"],
        per_class=10,
        image_size=40,
    )
    return data_dir, builder_dir


def config(data_dir: str, *sources: dict):
    c = fixtures.data_only_config(data_dir, image_size=SIZE, batch_size=8, num_classes=NUM_CLASSES)
    c.data.extra_sources = tuple(sources)
    return c


def take(ds, n: int) -> list[dict[str, np.ndarray]]:
    return list(itertools.islice(ds.as_numpy_iterator(), n))


def test_tfds_folder_is_mixed_in_at_the_configured_weight(dirs, caplog):
    data_dir, builder_dir = dirs
    c = config(data_dir, dict(name=f"folder:{builder_dir}", split="train", mapping="names", weight=0.3))
    with caplog.at_level(logging.INFO, logger="flowers_jax.data"):
        got = take(pipeline.train_dataset(c, local_batch=8), 100)
    # Dropped and counted: the 10 cactus examples have no competition class.
    assert "30 examples, 20 mapped into the competition classes, 10 dropped (unmapped classes: {'cactus': 10})" in (
        caplog.text
    )
    source = np.concatenate([b["source"] for b in got])
    label = np.concatenate([b["label"] for b in got])
    ids = np.concatenate([b["id"] for b in got])
    share = (source == 1).mean()
    assert abs(share - 0.3) < 4 * np.sqrt(0.3 * 0.7 / len(source))  # 800 draws: 0.3 +- 0.065
    assert set(label[source == 1]) == {SWEET_PEA, GERANIUM}  # mapped by name, cactus never
    assert set(label[source == 0]) <= set(range(5))
    assert all(i.startswith(b"extra_flowers-train.tfrecord") for i in ids[source == 1])  # tfds ids
    # Every mapped extra example comes once per pass over the 20.
    first = ids[source == 1][:20]
    assert len(set(first)) == 20
    # The decoded extra images (40 px PNG) come out at the pipeline's size, in range.
    assert got[0]["image"].shape == (8, SIZE, SIZE, 3) and 0 <= got[0]["image"].min() <= got[0]["image"].max() <= 255


def test_mixed_stream_is_deterministic_and_resumes_exactly(dirs):
    data_dir, builder_dir = dirs
    c = config(data_dir, dict(name=f"folder:{builder_dir}", mapping="names", weight=0.5))
    full = take(pipeline.train_dataset(c, host=Host(1, 2), local_batch=4), 16)
    again = take(pipeline.train_dataset(c, host=Host(1, 2), local_batch=4), 16)
    for k in (0, 3, 11):
        resumed = full[:k] + take(pipeline.train_dataset(c, host=Host(1, 2), local_batch=4, start_step=k), 16 - k)
        for a, b, r in zip(full, again, resumed, strict=True):
            for key in a:
                np.testing.assert_array_equal(a[key], b[key])
                np.testing.assert_array_equal(a[key], r[key])


def test_image_folder_source_with_a_mapping_file(dirs, tmp_path, caplog):
    data_dir, _ = dirs
    photos = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for name in ("Sweet_Peas", "weeds"):
        (photos / "train" / name).mkdir(parents=True)
        for i in range(4):
            image = fixtures.synthetic_image(rng, SWEET_PEA, NUM_CLASSES, 30)
            (photos / "train" / name / f"{i}.jpg").write_bytes(fixtures.encode_jpeg(image))
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"_comment": "weeds are dropped", "Sweet_Peas": "sweet pea", "weeds": None}))
    c = config(data_dir, dict(name=f"imagefolder:{photos}", mapping=str(mapping), weight=1.0))
    with caplog.at_level(logging.INFO, logger="flowers_jax.data"):
        got = take(pipeline.train_dataset(c, local_batch=4), 3)
    assert (
        "8 examples, 4 mapped into the competition classes, 4 dropped (unmapped classes: {'weeds': 4})" in caplog.text
    )
    assert all(set(b["source"]) == {1} and set(b["label"]) == {SWEET_PEA} for b in got)  # weight 1: only extra
    assert all(i.endswith(b".jpg") and b"/Sweet_Peas/" in i for b in got for i in b["id"])


def test_mapping_files(tmp_path):
    source = ["Daisy", "dandelion", "roses", "cactus"]
    names = class_names()
    csv_map = tmp_path / "map.csv"
    csv_map.write_text("source,target\n# comment\nDaisy,daisy\n1,common dandelion\nroses,73\ncactus,\n")
    np.testing.assert_array_equal(tfds_sources.load_mapping(str(csv_map), source, names), [48, 49, 73, -1])
    np.testing.assert_array_equal(tfds_sources.load_mapping("names", source, names), [48, -1, -1, -1])
    tf_flowers = ["dandelion", "daisy", "tulips", "sunflowers", "roses"]  # tfds' order
    np.testing.assert_array_equal(
        tfds_sources.load_mapping("builtin", tf_flowers, names, dataset="tf_flowers"),
        [names.index(n) for n in ("common dandelion", "daisy", "common tulip", "sunflower", "rose")],
    )
    oxford = tfds_sources.load_mapping("builtin", [str(i) for i in range(102)], names, dataset="oxford_flowers102")
    np.testing.assert_array_equal(oxford, np.arange(102))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"roses": "rosa"}))
    with pytest.raises(DataError, match=r"target class: unknown class name 'rosa'; did you mean \['rose'"):
        tfds_sources.load_mapping(str(bad), source, names)
    bad.write_text(json.dumps({"tulip": "common tulip"}))
    with pytest.raises(DataError, match=r"source class: unknown class name 'tulip'"):
        tfds_sources.load_mapping(str(bad), source, names)
    with pytest.raises(DataError, match="no builtin class mapping"):
        tfds_sources.load_mapping("builtin", source, names, dataset="extra_flowers")


def test_a_prepared_folder_of_a_registered_dataset_uses_its_builtin_mapping(tmp_path):
    builder_dir = tfds_folders.write_tfds_folder(
        str(tmp_path),
        name="tf_flowers",
        class_names=["dandelion", "daisy", "tulips", "sunflowers", "roses"],
        per_class=1,
        image_size=8,
    )
    src = tfds_sources.open_source(dict(name=f"folder:{builder_dir}", weight=0.1), class_names=class_names())
    assert [class_names()[i] for i in src.to_class] == [
        "common dandelion",
        "daisy",
        "common tulip",
        "sunflower",
        "rose",
    ]


def test_unprepared_registered_dataset_says_how_to_get_it(tmp_path):
    # tfds.builder() of a registered name is offline; only download_and_prepare() would use the network.
    entry = dict(name="tf_flowers", data_dir=str(tmp_path), weight=0.2)
    with pytest.raises(DataError, match=r"'tf_flowers' is not prepared in .*download_extra=True"):
        tfds_sources.open_source(entry, class_names=class_names(), download=False)


def test_weights_above_one_are_refused(dirs):
    data_dir, builder_dir = dirs
    c = config(data_dir, *[dict(name=f"folder:{builder_dir}", mapping="names", weight=0.6)] * 2)
    with pytest.raises(DataError, match="add up to 1.200 > 1"):
        pipeline.train_dataset(c, local_batch=4)


def test_choice_counts_match_the_stream():
    cum = np.array([0.25, 0.75])  # three sources: 0.25, 0.5, 0.25
    n = pipeline._CHOICE_BLOCK + 123  # crosses a block boundary
    got = np.array(list(pipeline._choices(cum, 7, start=0).take(n).as_numpy_iterator()))
    np.testing.assert_array_equal(pipeline.choice_counts(cum, 7, n), np.bincount(got, minlength=3))
    np.testing.assert_allclose(np.bincount(got) / n, [0.25, 0.5, 0.25], atol=0.02)
    tail = np.array(list(pipeline._choices(cum, 7, start=n - 50).take(50).as_numpy_iterator()))
    np.testing.assert_array_equal(tail, got[-50:])


def test_tfds_folder_metadata_written_by_the_tests_is_what_tfds_reads(dirs):
    _, builder_dir = dirs
    import tensorflow_datasets as tfds

    b = tfds.builder_from_directory(builder_dir)
    assert b.info.splits["train"].num_examples == 30
    assert b.info.features["label"].names == ["sweet pea", "wild geranium", "cactus"]
    assert os.path.exists(os.path.join(builder_dir, "dataset_info.json"))
