"""What the training and evaluation code needs to know about the data before reading it."""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from flowers_jax.data import layout
from flowers_jax.data.counts import SplitScan
from flowers_jax.data.tfrecords import DataError, is_path


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Class names and the scans of the configured splits; `splits` holds the roles found
    ("train", "val", "test"), each a `counts.SplitScan` (`class_counts`: [num_classes], None when
    unlabelled)."""

    class_names: tuple[str, ...]
    splits: dict[str, SplitScan]

    def num_examples(self, split: str) -> int:
        return self._split(split).num_examples

    def has_labels(self, split: str) -> bool:
        return self._split(split).labelled

    def steps_per_epoch(self, global_batch_size: int, split: str = "train") -> int:
        """Training steps that see each of `split`'s examples about once (batches are never partial)."""
        return max(1, self.num_examples(split) // global_batch_size)

    def class_weights(self, split: str = "train") -> np.ndarray:
        """Balanced class weights float32 [num_classes]: n / (num_present_classes * count); 0 for absent classes."""
        if self._split(split).class_counts is None:
            raise DataError(f"split {split!r} has no labels, so no class weights")
        c = np.asarray(self._split(split).class_counts, np.int64)
        present = c > 0
        w = np.zeros(len(c), np.float32)
        w[present] = c.sum() / (present.sum() * c[present])
        return w

    def _split(self, split: str) -> SplitScan:
        if split not in self.splits:
            raise DataError(f"no split {split!r} in the data; found {sorted(self.splits)}")
        return self.splits[split]


def dataset_info(config: ml_collections.ConfigDict) -> DatasetInfo:
    """Scans (or loads the cached scans of) the configured train/val/test splits.

    A split named in config.data but absent on disk is left out of `splits`; a split given as a
    path or glob must exist. Class names: `layout.class_names`.

    Raises:
      DataError: when no split exists, a path/glob split matches nothing, or config.num_classes
        disagrees with dataset.json.
    """
    names = layout.class_names(config)
    splits, errors = {}, []
    for role in ("train", "val", "test"):
        name = config.data.get(f"{role}_split", "")
        if not name:
            continue
        try:
            splits[role] = layout.scan(config, role)
        except DataError as e:
            if is_path(name):
                raise
            errors.append(str(e))
    if not splits:
        raise DataError("no split of the configured data exists:\n" + "\n".join(errors))
    return DatasetInfo(names, splits)
