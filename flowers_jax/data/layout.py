"""Where a config's data lives and what it says about itself: file globs, scans, dataset.json, class names.

The helpers both the pipeline (pipeline.py) and the dataset summary (info.py) need, in one module
that imports neither of them.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections

from flowers_jax.data import classes, counts
from flowers_jax.data._tf import tf
from flowers_jax.data.counts import SplitScan
from flowers_jax.data.tfrecords import DataError, layout_dir, split_pattern

METADATA_FILE = "dataset.json"


def num_classes(config: ml_collections.ConfigDict) -> int:
    """config.num_classes, or the competition's 104 when unset."""
    return int(config.get("num_classes", None) or classes.NUM_CLASSES)


def tfrecord_size(config: ml_collections.ConfigDict) -> int:
    """The stored image size S of tfrecords-jpeg-SxS: config.data.tfrecord_size, else image_size."""
    return int(config.data.tfrecord_size or config.data.image_size)


def split_glob(config: ml_collections.ConfigDict, split: str) -> str:
    """A split name of config.data ("train", "val", "test", or a path/glob) -> its file glob."""
    role = {"train": "train_split", "val": "val_split", "test": "test_split"}.get(split)
    name = config.data.get(role, split) if role else split
    return split_pattern(config.data.data_dir, tfrecord_size(config), name)


def scan(config: ml_collections.ConfigDict, split: str) -> SplitScan:
    """The (cached) scan of a split; see counts.py."""
    pattern = split_glob(config, split)
    return counts.scan_split(pattern, num_classes=num_classes(config), cache_dir=config.data.cache_dir)


def read_metadata(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """`<data_dir>/tfrecords-jpeg-SxS/dataset.json` (written by the converter), or {} when absent."""
    if not config.data.data_dir:
        return {}
    path = os.path.join(layout_dir(config.data.data_dir, tfrecord_size(config)), METADATA_FILE)
    if not tf.io.gfile.exists(path):
        return {}
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def write_metadata(
    out_dir: str,
    *,
    image_size: int,
    class_names: list[str],
    splits: dict[str, dict[str, Any]],
    source: dict[str, Any],
) -> str:
    """Writes `<out_dir>/dataset.json`: size, class names, per split its counts, shards and class counts."""
    d = {
        "format": "Kaggle 'Flower Classification with TPUs' TFRecords: id (bytes), class (int64; absent in test), "
        "image (JPEG)",
        "image_size": image_size,
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "splits": splits,
        "source": source,
    }
    path = os.path.join(out_dir, METADATA_FILE)
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(d, f, indent=1)
    return path


def class_names(config: ml_collections.ConfigDict, metadata: dict[str, Any] | None = None) -> tuple[str, ...]:
    """The class names of the configured data: the one rule every reader of class names uses.

    dataset.json's names when it has them (`metadata`: an already read dataset.json); else
    `classes.default_names(config.num_classes)` (Kaggle's own data has no dataset.json).

    Raises:
      DataError: when config.num_classes disagrees with the number of names in dataset.json.
    """
    names = tuple((read_metadata(config) if metadata is None else metadata).get("class_names") or ())
    n = config.get("num_classes", None)
    if names and n and n != len(names):
        raise DataError(f"config.num_classes is {n} but the data's dataset.json lists {len(names)} class names")
    return names or tuple(classes.default_names(n or classes.NUM_CLASSES))
