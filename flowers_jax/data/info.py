"""What the training and evaluation code needs to know about the data before reading it."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import ml_collections
import numpy as np

from flowers_jax.data import pipeline
from flowers_jax.data._tf import tf
from flowers_jax.data.classes import class_names as competition_class_names
from flowers_jax.data.tfrecords import DataError, is_path, layout_dir

METADATA_FILE = "dataset.json"


@dataclasses.dataclass(frozen=True)
class SplitInfo:
    """One split as scanned. `class_counts` is int64 [num_classes], None for an unlabelled split."""

    name: str
    pattern: str
    num_examples: int  # usable records (bad ones excluded)
    num_files: int
    labelled: bool
    class_counts: np.ndarray | None
    num_bad_records: int
    image_sizes: dict[str, int]  # "HxW" of the stored images -> records


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Counts and names of the configured data; `splits` holds the roles found ("train", "val", "test")."""

    class_names: tuple[str, ...]
    image_size: int  # what the pipeline yields
    tfrecord_size: int  # what the records hold
    splits: dict[str, SplitInfo]
    metadata: dict[str, Any]  # dataset.json, when the data has one

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def num_examples(self, split: str) -> int:
        return self._split(split).num_examples

    def has_labels(self, split: str) -> bool:
        return self._split(split).labelled

    def steps_per_epoch(self, global_batch_size: int, split: str = "train") -> int:
        """Training steps that see each of `split`'s examples about once (batches are never partial)."""
        return max(1, self.num_examples(split) // global_batch_size)

    def class_weights(self, split: str = "train") -> np.ndarray:
        """Balanced class weights float32 [num_classes]: n / (num_present_classes * count); 0 for absent classes."""
        c = self._split(split).class_counts
        if c is None:
            raise DataError(f"split {split!r} has no labels, so no class weights")
        present = c > 0
        w = np.zeros(len(c), np.float32)
        w[present] = c.sum() / (present.sum() * c[present])
        return w

    def _split(self, split: str) -> SplitInfo:
        if split not in self.splits:
            raise DataError(f"no split {split!r} in the data; found {sorted(self.splits)}")
        return self.splits[split]


def read_metadata(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """`<data_dir>/tfrecords-jpeg-SxS/dataset.json` (written by the converter), or {} when absent."""
    if not config.data.data_dir:
        return {}
    path = os.path.join(layout_dir(config.data.data_dir, pipeline.tfrecord_size(config)), METADATA_FILE)
    if not tf.io.gfile.exists(path):
        return {}
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def dataset_info(config: ml_collections.ConfigDict) -> DatasetInfo:
    """Scans (or loads the cached scans of) the configured train/val/test splits.

    A split named in config.data but absent on disk is left out of `splits`; a split given as a
    path or glob must exist. Class names come from dataset.json when it has them, else the 104.

    Raises:
      DataError: when no split exists, or a path/glob split matches nothing.
    """
    metadata = read_metadata(config)
    names = tuple(metadata.get("class_names") or ())
    n = config.get("num_classes", None)
    if names and n and n != len(names):
        raise DataError(f"config.num_classes is {n} but the data's dataset.json lists {len(names)} class names")
    if not names:  # Kaggle's own data has no dataset.json: the competition's names (as many as num_classes)
        names = tuple(competition_class_names()[: n or None]) + tuple(f"class_{i}" for i in range(104, n or 104))
    splits = {}
    errors = []
    for role in ("train", "val", "test"):
        name = config.data.get(f"{role}_split", "")
        if not name:
            continue
        try:
            s = pipeline.scan(config, role)
        except DataError as e:
            if is_path(name):
                raise
            errors.append(str(e))
            continue
        splits[role] = SplitInfo(
            name=name,
            pattern=s.pattern,
            num_examples=s.num_examples,
            num_files=len(s.files),
            labelled=s.labelled,
            class_counts=None if s.class_counts is None else np.array(s.class_counts, np.int64),
            num_bad_records=len(s.bad_records),
            image_sizes=s.image_sizes,
        )
    if not splits:
        raise DataError("no split of the configured data exists:\n" + "\n".join(errors))
    return DatasetInfo(names, config.data.image_size, pipeline.tfrecord_size(config), splits, metadata)


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
