"""Input data: Kaggle-format TFRecords in, device-sharded batches out.

    from flowers_jax import data
    c.data = data.data_config()                                   # config defaults (no TensorFlow import)
    info = data.dataset_info(config)                              # counts, class names, class counts
    for batch in data.train_iterator(config, mesh=mesh, start_step=step): ...   # infinite, resumable
    for batch in data.eval_iterator(config, "val", mesh=mesh): ...              # one padded, masked pass

Modules: classes (the 104 names), defaults (config), tfrecords (schema, layout, writer), counts
(scan + cache: counts, bad records), layout (a config's globs, scans, dataset.json, class names),
augment (decode/augment one image), pipeline (host tf.data), iterators (global sharded batches,
prefetch), tfds_sources (extra TFDS data), info (DatasetInfo), fixtures (synthetic data), convert
(`python -m flowers_jax.data.convert`).

TensorFlow is imported on first use of anything but `data_config` and `class_names`, so loading a
config stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from flowers_jax.data.classes import class_names
from flowers_jax.data.defaults import data_config

if TYPE_CHECKING:
    from flowers_jax.data.counts import BadRecord, SplitScan
    from flowers_jax.data.info import DatasetInfo, dataset_info
    from flowers_jax.data.iterators import eval_iterator, train_iterator
    from flowers_jax.data.tfrecords import DataError

_LAZY = {
    "BadRecord": "counts",
    "DataError": "tfrecords",
    "DatasetInfo": "info",
    "SplitScan": "counts",
    "dataset_info": "info",
    "eval_iterator": "iterators",
    "train_iterator": "iterators",
}

__all__ = [
    "BadRecord",
    "DataError",
    "DatasetInfo",
    "SplitScan",
    "class_names",
    "data_config",
    "dataset_info",
    "eval_iterator",
    "train_iterator",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
