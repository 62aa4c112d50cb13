"""Small synthetic datasets on disk, for tests and smoke runs (configs/smoke.py).

Images are learnable: each class has its own colour and stripe pattern (orientation and
frequency), plus a random phase and pixel noise, so a tiny model visibly learns in a few steps.
"""

from __future__ import annotations

import colorsys
import math
import os

import ml_collections
import numpy as np

from flowers_jax.data import layout, tfrecords
from flowers_jax.data._tf import tf
from flowers_jax.data.classes import default_names
from flowers_jax.data.defaults import data_config


def synthetic_image(rng: np.random.Generator, label: int, num_classes: int, size: int) -> np.ndarray:
    """uint8 [size, size, 3]: class `label`'s colour and stripes, a random phase, and noise."""
    r, g, b = colorsys.hsv_to_rgb((label * 0.618034) % 1.0, 0.85, 0.9)  # golden-ratio hues stay apart
    colour = np.array([r, g, b], np.float32) * 255.0
    angle = math.pi * ((label * 0.381966) % 1.0)
    freq = 2.0 + (label % 5) * 1.5
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    stripes = np.sin(2 * math.pi * freq * (xx * math.cos(angle) + yy * math.sin(angle)) + rng.uniform(0, 2 * math.pi))
    image = colour * (0.7 + 0.3 * stripes[..., None]) + rng.normal(0.0, 12.0, (size, size, 3))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    return tf.io.encode_jpeg(image, quality=quality).numpy()


def write_synthetic_dataset(
    data_dir: str,
    *,
    num_classes: int,
    image_size: int,
    train_per_class: int,
    val_per_class: int,
    test_examples: int,
    seed: int = 0,
    num_shards: int = 4,
) -> None:
    """Writes `<data_dir>/tfrecords-jpeg-{S}x{S}/{train,val,test}/*.tfrec` and dataset.json.

    Several shards per split; train and val labelled (classes interleaved), test without `class`.
    Ids are "<split>-<index>" (e.g. "val-00012"). Class names: `classes.default_names(num_classes)`.
    """
    rng = np.random.default_rng(seed)
    out = tfrecords.layout_dir(data_dir, image_size)
    names = default_names(num_classes)
    splits = {}
    for split, labels in (
        ("train", np.tile(np.arange(num_classes), train_per_class)),
        ("val", np.tile(np.arange(num_classes), val_per_class)),
        ("test", rng.integers(0, num_classes, test_examples)),
    ):
        labelled = split != "test"
        with tfrecords.ShardWriter(os.path.join(out, split), image_size=image_size, num_shards=num_shards) as w:
            for i, label in enumerate(labels):
                jpeg = encode_jpeg(synthetic_image(rng, int(label), num_classes, image_size))
                label_or_none = int(label) if labelled else None
                w.write(tfrecords.serialize_example(id=f"{split}-{i:05d}", image=jpeg, label=label_or_none))
        splits[split] = {
            "num_examples": len(labels),
            "num_shards": len(w.paths),
            "labelled": labelled,
            "class_counts": np.bincount(labels, minlength=num_classes).tolist() if labelled else None,
        }
    layout.write_metadata(
        out, image_size=image_size, class_names=names, splits=splits, source={"synthetic": {"seed": seed}}
    )


def data_only_config(
    data_dir: str, *, image_size: int, batch_size: int, num_classes: int = 104, seed: int = 0
) -> ml_collections.ConfigDict:
    """The smallest run config the data functions accept: batch_size, seed, num_classes and `data`."""
    c = ml_collections.ConfigDict()
    c.batch_size = batch_size
    c.seed = seed
    c.num_classes = num_classes
    c.data = data_config()
    c.data.data_dir = data_dir
    c.data.image_size = image_size
    return c


def use_workdir_data(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Points a config with `synthetic_data` (the smoke run) at its dataset, <workdir>/data; returns that path.

    Such runs write their data into the workdir, so training, eval and export find it there
    rather than in `config.data.data_dir`.
    """
    data_dir = os.path.join(workdir, "data")
    with config.unlocked():
        config.data.data_dir = data_dir
    return data_dir
