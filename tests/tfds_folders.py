"""A TFDS dataset folder of synthetic photos, for the TFDS source tests (tests/test_data_tfds.py)."""

from __future__ import annotations

import os

import numpy as np

from flowers_jax.data import classes, fixtures
from flowers_jax.data._tf import tf


def write_tfds_folder(
    root: str,
    *,
    name: str,
    class_names: list[str],
    per_class: int,
    image_size: int,
    split: str = "train",
    seed: int = 0,
    num_shards: int = 2,
) -> str:
    """A TFDS dataset folder (tfds.builder_from_directory reads it) of synthetic photos; returns its path.

    Features: "image" (tfds Image, stored as PNG) and "label" (ClassLabel of `class_names`). Labels
    are drawn with the colours of `fixtures.synthetic_image`, by each name's competition index when it has
    one, so mapped examples look like the competition's examples of that class.
    """
    import tensorflow_datasets as tfds

    builder_dir = os.path.join(root, name, "1.0.0")
    tf.io.gfile.makedirs(builder_dir)
    features = tfds.features.FeaturesDict(
        {"image": tfds.features.Image(shape=(None, None, 3)), "label": tfds.features.ClassLabel(names=class_names)}
    )
    rng = np.random.default_rng(seed)
    known = {n: i for i, n in enumerate(classes.class_names())}
    labels = np.tile(np.arange(len(class_names)), per_class)
    for shard in range(num_shards):
        path = os.path.join(builder_dir, f"{name}-{split}.tfrecord-{shard:05d}-of-{num_shards:05d}")
        with tf.io.TFRecordWriter(path) as writer:
            for label in labels[shard::num_shards]:
                colour_class = known.get(class_names[label], 104 + int(label))
                image = fixtures.synthetic_image(rng, colour_class, 104, image_size)
                writer.write(features.serialize_example({"image": image, "label": int(label)}))
    tfds.folder_dataset.write_metadata(
        data_dir=builder_dir,
        features=features,
        split_infos=None,
        filename_template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
    )
    return builder_dir
