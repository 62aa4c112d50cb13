"""Extra training data through tensorflow-datasets, mapped into the competition's classes.

A source is anything tfds reads: a dataset folder (`folder:/path`, `tfds.builder_from_directory`),
a folder of photos (`imagefolder:/path`, `tfds.folder_dataset.ImageFolder`, laid out
<root>/<split>/<class>/*.jpg), or a registered dataset (`oxford_flowers102`, `tf_flowers`) already
prepared in its data_dir, or downloaded once when `config.data.download_extra` is True. Images are
read still encoded (tfds' SkipDecoding) and decoded by the pipeline like the competition's.

A mapping sends each source class to a competition class or to nothing; examples of unmapped
classes are dropped and counted (logged when the source is opened).
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.resources
import io
import json
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from flowers_jax.data._tf import tf
from flowers_jax.data.classes import class_index, normalise_name
from flowers_jax.data.tfrecords import DataError

log = logging.getLogger(__name__)

BUILTIN_MAPPINGS = ("oxford_flowers102", "tf_flowers")


@dataclasses.dataclass(frozen=True)
class ExtraSource:
    """An opened source. `to_class[source_label]` is the competition class, or -1 (dropped)."""

    name: str
    split: str
    weight: float
    builder: Any  # a tfds DatasetBuilder
    image_key: str
    label_key: str
    to_class: np.ndarray  # int32 [num_source_classes]
    source_class_names: tuple[str, ...]

    def host_dataset(self, host_index: int, host_count: int) -> tf.data.Dataset:
        """This host's share, in a fixed order: {"image": encoded bytes, "label": source label (int64), "id": bytes}."""
        decoders = {self.image_key: tfds.decode.SkipDecoding()}
        if isinstance(self.builder, tfds.folder_dataset.ImageFolder):
            # ImageFolder has no sub-split API: every host lists all photos and keeps its share.
            ds = self.builder.as_dataset(split=self.split, shuffle_files=False, decoders=decoders)
            ds = ds.shard(host_count, host_index)
            id_key = "image/filename"
        else:
            split = tfds.split_for_jax_process(self.split, process_index=host_index, process_count=host_count)
            read_config = tfds.ReadConfig(add_tfds_id=True)  # a unique, stable "tfds_id" per example
            ds = self.builder.as_dataset(split=split, shuffle_files=False, decoders=decoders, read_config=read_config)
            id_key = "tfds_id"
        return ds.map(lambda ex: {"image": ex[self.image_key], "label": ex[self.label_key], "id": ex[id_key]})

    def mapped_dataset(self, host_index: int, host_count: int, source_id: int) -> tf.data.Dataset:
        """Host share with competition labels: {"image", "label": int32, "id", "source": int32}; unmapped dropped."""
        table = tf.constant(self.to_class, tf.int32)

        def relabel(ex: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
            label = tf.gather(table, ex["label"])
            return {"image": ex["image"], "label": label, "id": ex["id"], "source": tf.constant(source_id)}

        ds = self.host_dataset(host_index, host_count).map(relabel)
        return ds.filter(lambda ex: ex["label"] >= 0)

    def count_mapped(self, host_index: int, host_count: int, num_classes: int) -> tuple[int, np.ndarray]:
        """(examples kept on this host, class counts [num_classes] of the kept), logging what is dropped."""
        labels_ds = self.host_dataset(host_index, host_count).map(lambda ex: ex["label"]).batch(4096)
        batches = list(labels_ds.as_numpy_iterator())
        labels = np.concatenate(batches) if batches else np.zeros([0], np.int64)
        mapped = self.to_class[labels]
        kept = mapped[mapped >= 0]
        dropped = np.bincount(labels[mapped < 0], minlength=len(self.source_class_names))
        dropped_names = {self.source_class_names[i]: int(n) for i, n in enumerate(dropped) if n}
        log.info(
            "extra source %s[%s] (host %d/%d): %d examples, %d mapped into the competition classes, %d dropped%s",
            self.name,
            self.split,
            host_index,
            host_count,
            len(labels),
            len(kept),
            len(labels) - len(kept),
            f" (unmapped classes: {dropped_names})" if dropped_names else "",
        )
        return len(kept), np.bincount(kept, minlength=num_classes)


def open_source(entry: Mapping[str, Any], *, class_names: list[str], download: bool = False) -> ExtraSource:
    """Opens one `config.data.extra_sources` entry (see defaults.py) and loads its class mapping.

    Raises:
      DataError: unknown/unprepared dataset, or a mapping that does not fit the source's classes.
    """
    name = entry["name"]
    split = entry.get("split", "train")
    weight = float(entry.get("weight", 0.0))
    if not 0.0 <= weight <= 1.0:
        raise DataError(f"extra source {name!r}: weight must be in [0, 1], got {weight}")
    image_key, label_key = entry.get("image_key", "image"), entry.get("label_key", "label")
    builder = _builder(name, entry.get("data_dir", "") or None, download=download)
    features = builder.info.features
    if label_key not in features or not isinstance(features[label_key], tfds.features.ClassLabel):
        raise DataError(f"extra source {name!r} has no ClassLabel feature {label_key!r}; its features: {features}")
    if split not in builder.info.splits:
        raise DataError(f"extra source {name!r} has no split {split!r}; it has {list(builder.info.splits)}")
    source_names = list(features[label_key].names)
    # A prepared folder of a registered dataset (folder:/.../oxford_flowers102/2.1.1) uses its builtin mapping too.
    dataset = builder.info.name if name.startswith(("folder:", "imagefolder:")) else name
    to_class = load_mapping(entry.get("mapping", "builtin"), source_names, class_names, dataset=dataset)
    return ExtraSource(name, split, weight, builder, image_key, label_key, to_class, tuple(source_names))


def _builder(name: str, data_dir: str | None, *, download: bool) -> Any:
    if name.startswith("folder:"):
        return tfds.builder_from_directory(name.removeprefix("folder:"))
    if name.startswith("imagefolder:"):
        return tfds.folder_dataset.ImageFolder(name.removeprefix("imagefolder:"))
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        if not download:
            raise DataError(
                f"TFDS dataset {name!r} is not prepared in {builder.data_dir!r}. On a machine with internet set "
                "config.data.download_extra=True (it downloads and prepares it once), or point the source at a "
                "prepared copy with name='folder:/path/to/<name>/<version>'."
            )
        builder.download_and_prepare()  # network: never reached in tests
    return builder


def load_mapping(spec: str, source_names: list[str], class_names: list[str], *, dataset: str = "") -> np.ndarray:
    """Source label -> competition class (or -1), int32 [len(source_names)].

    spec: "builtin" (the file shipped for `dataset`), "names" (same class name, ignoring case and
    punctuation), or a path to a .json object / .csv of two columns (source, target). Sources and
    targets are class names or integer indices; a null/empty target drops the class, as does leaving
    it out. Keys starting with "_" are comments.
    """
    if spec == "names":
        keys = {normalise_name(n): i for i, n in enumerate(class_names)}
        return np.array([keys.get(normalise_name(n), -1) for n in source_names], np.int32)
    if spec == "builtin":
        base = dataset.split("/")[0].split(":")[0]
        if base not in BUILTIN_MAPPINGS:
            raise DataError(
                f"no builtin class mapping for {dataset!r} (there are: {BUILTIN_MAPPINGS}); give mapping='path.json' "
                "or mapping='names'"
            )
        text = importlib.resources.files(__package__).joinpath(f"mappings/{base}.json").read_text("utf-8")
        pairs = list(json.loads(text).items())
    else:
        with tf.io.gfile.GFile(spec) as f:
            text = f.read()
        if spec.endswith(".json"):
            pairs = list(json.loads(text).items())
        else:
            rows = [r for r in csv.reader(io.StringIO(text)) if r and not r[0].startswith("#")]
            if rows and rows[0][0].strip().lower() in ("source", "from"):
                rows = rows[1:]
            pairs = [(r[0], r[1] if len(r) > 1 else "") for r in rows]
    to_class = np.full(len(source_names), -1, np.int32)
    where = f"mapping {spec!r}" + (f" for {dataset!r}" if dataset else "")
    for source, target in pairs:
        if str(source).startswith("_"):
            continue
        s = _resolve(str(source), source_names, f"{where}: source class")
        if target is None or str(target).strip() == "":
            continue
        to_class[s] = _resolve(str(target), class_names, f"{where}: target class")
    return to_class


def _resolve(key: str, names: list[str], what: str) -> int:
    key = key.strip()
    if key.lstrip("-").isdigit():
        i = int(key)
        if not 0 <= i < len(names):
            raise DataError(f"{what} index {i} is outside [0, {len(names)})")
        return i
    try:
        return class_index(key, names)
    except KeyError as e:
        raise DataError(f"{what}: {e.args[0]}") from None
