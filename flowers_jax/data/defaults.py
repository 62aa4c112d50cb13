"""Defaults of a run config's `data` section: `c.data = data_config()` in configs/default.py.

Only ml_collections is imported here, so loading a config stays cheap (no TensorFlow).
The global batch size is `config.batch_size` and the seed `config.seed` (top level, shared with
training); evaluation uses `config.eval_batch_size` when the config has one.
"""

from __future__ import annotations

import ml_collections


def augment_config() -> ml_collections.ConfigDict:
    """Training augmentation. Each switch is independent; 0 turns a range off."""
    a = ml_collections.ConfigDict()
    # Random-resized crop (Inception style), done while decoding: only the crop window of the JPEG
    # is decoded. `crop_scale` is the range of the crop's area as a fraction of the image, and
    # `crop_ratio` the range of its aspect ratio. Fine-tuning on already-cropped flower photos
    # wants milder crops than ImageNet's (0.08, 1.0).
    a.random_resized_crop = True
    a.crop_scale = (0.35, 1.0)
    a.crop_ratio = (3 / 4, 4 / 3)
    # The earlier Keras recipe (RandomFlip("horizontal"), RandomRotation, RandomZoom, RandomContrast),
    # with Keras' meaning of each factor: rotation is a fraction of a full turn (0.1 = +-36 degrees),
    # zoom a fraction of the size (0.1 = 90%..110%), contrast the factor range 1 +- contrast.
    a.flip = True
    a.rotation = 0.1
    a.zoom = 0.1
    a.contrast = 0.1
    a.fill_mode = "reflect"  # pixels that rotation/zoom bring in: "reflect" | "nearest" | "constant" | "wrap"
    return a


def data_config() -> ml_collections.ConfigDict:
    """Defaults for `config.data` (see README "Data" for every field)."""
    c = ml_collections.ConfigDict()
    # Competition layout: <data_dir>/tfrecords-jpeg-{S}x{S}/{train,val,test}/*.tfrec, local or gs://.
    c.data_dir = ""
    c.image_size = 224  # what the model sees (square)
    c.tfrecord_size = 0  # which tfrecords-jpeg-SxS folder to read; 0 = image_size. Images are resized if they differ.
    # A split is a name ("train", "val", "test") in the layout above, or a path/glob of .tfrec files.
    c.train_split = "train"
    c.val_split = "val"
    c.test_split = "test"

    c.shuffle_buffer = 2048  # raw (still encoded) records; about 60 MB at 224 px
    c.file_cycle_length = 16  # files read at once (interleaved) per host
    c.dct_method = "INTEGER_ACCURATE"  # JPEG decoding as PIL/browsers do; "" = TF's faster approximate default
    c.augment = augment_config()

    # Extra training data read through tensorflow-datasets, mapped into the 104 classes and mixed in.
    # Each entry: dict(name=..., split="train", mapping=..., weight=0.2, data_dir="") where name is
    #   "folder:/path/to/builder_dir"   a TFDS dataset folder (tfds.builder_from_directory), offline
    #   "imagefolder:/path/to/photos"   photos in <root>/<split>/<class>/*.jpg (tfds ImageFolder), offline
    #   "oxford_flowers102", "tf_flowers", ...  a registered TFDS dataset; prepared in data_dir, or
    #                                           downloaded once when `download_extra` is True
    # mapping: a .json/.csv file mapping source class (name or index) -> competition class (name or
    # index), or "builtin" for the mappings shipped for oxford_flowers102 and tf_flowers, or "names"
    # to match class names. Examples whose class is not mapped are dropped and counted.
    # weight: fraction of each training batch (in expectation) drawn from that source; the
    # competition data gets the rest.
    c.extra_sources = ()
    c.download_extra = False

    # Bad records (corrupt JPEG, truncated file, missing feature, label out of range): False = stop
    # with an error naming file and record; True = skip them and log each one and the count.
    c.skip_bad_records = False
    # Class counts, record counts and bad records are computed once per split and cached beside the
    # data; where that folder is read-only, under cache_dir ("" = ~/.cache/flowers_jax).
    c.cache_dir = ""
    # Keep decoded eval images in host memory after the first pass (Kaggle's val at 224: ~560 MB per
    # process), so later evaluations skip reading and decoding.
    c.cache_eval = False
    c.prefetch_to_device = 2  # batches a background thread places on the devices ahead of use
    return c
