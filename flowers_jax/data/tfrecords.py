"""The competition's TFRecord schema and folder layout, read and written through tf.io.gfile.

Layout: `<data_dir>/tfrecords-jpeg-{S}x{S}/{train,val,test}/*.tfrec` (local path or gs://), each
record a tf.train.Example with `id` (bytes), `class` (int64; absent in test) and `image` (JPEG bytes).
Shards are named as Kaggle's are: `{shard:02d}-{S}x{S}-{records}.tfrec`.
"""

from __future__ import annotations

import os
import re

from flowers_jax.data._tf import tf

# Every TFRecord is framed by 16 bytes: uint64 length, its masked CRC32C, the data, the data's CRC.
RECORD_FRAMING_BYTES = 16
LAYOUT = "tfrecords-jpeg-{size}x{size}"
CONVERT_HINT = "python -m flowers_jax.data.convert --help"


class DataError(ValueError):
    """Missing or bad input data. The message names the file (and record) and says what to do."""


def is_path(split: str) -> bool:
    """True when `split` is a path or glob of TFRecord files rather than a split name."""
    return any(ch in split for ch in "/*?[") or split.endswith((".tfrec", ".tfrecord"))


def layout_dir(data_dir: str, tfrecord_size: int) -> str:
    """`<data_dir>/tfrecords-jpeg-SxS`: the folder of one image size."""
    return os.path.join(data_dir, LAYOUT.format(size=tfrecord_size))


def split_pattern(data_dir: str, tfrecord_size: int, split: str) -> str:
    """The glob of a split: a split name in the competition layout, or `split` itself if it is a path."""
    if is_path(split):
        return split
    if not data_dir:
        raise DataError(
            f"config.data.data_dir is empty, so split {split!r} cannot be found. Set it to the folder that holds "
            f"tfrecords-jpeg-{tfrecord_size}x{tfrecord_size}/ (Kaggle's competition data), or convert your own "
            f"photos first ({CONVERT_HINT})."
        )
    return os.path.join(layout_dir(data_dir, tfrecord_size), split, "*.tfrec")


def list_files(pattern: str) -> list[str]:
    """Sorted files matching `pattern` (a glob, or one file); a DataError saying what exists when none do."""
    files = sorted(tf.io.gfile.glob(pattern))
    files = [f for f in files if not tf.io.gfile.isdir(f)]
    if files:
        return files
    raise DataError(f"no files match {pattern!r}. {_what_is_there(pattern)}")


def _what_is_there(pattern: str) -> str:
    """Explains an empty glob: the nearest existing folder and the sizes/splits it offers."""
    wanted = os.path.dirname(pattern)
    folder = wanted
    while folder and not tf.io.gfile.exists(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    if not folder or not tf.io.gfile.exists(folder) or folder.rstrip("/").count("/") < 1 or folder.endswith(":/"):
        return f"Nothing of that path exists. Check config.data.data_dir, or convert photos first ({CONVERT_HINT})."
    entries = sorted(e.rstrip("/") for e in tf.io.gfile.listdir(folder))
    shown = f"{entries[:12]}{' and more' if len(entries) > 12 else ''}"
    hint = f"{folder!r} holds {shown}." if folder == wanted else f"{wanted!r} does not exist; {folder!r} holds {shown}."
    sizes = sorted(int(m.group(1)) for e in entries if (m := re.fullmatch(r"tfrecords-jpeg-(\d+)x\1", e)))
    if sizes:
        hint += (
            f" Image sizes available: {sizes}: set config.data.tfrecord_size to one of them (images are resized to "
            f"config.data.image_size when the two differ)."
        )
    else:
        hint += " Expected .tfrec files (Kaggle layout: <data_dir>/tfrecords-jpeg-SxS/{train,val,test}/*.tfrec)."
    return hint


def serialize_example(*, id: str | bytes, image: bytes, label: int | None) -> bytes:
    """One record of the competition schema; `label=None` leaves out `class`, as in the test split."""

    def _bytes(v: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    feature = {"id": _bytes(id.encode() if isinstance(id, str) else id), "image": _bytes(image)}
    if label is not None:
        feature["class"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


# Reading after a scan (counts.scan_split) has vouched for every record kept: fixed-length features are
# the fastest parse, and `class` defaults to -1 for unlabelled splits.
_FEATURES = {
    "id": tf.io.FixedLenFeature([], tf.string),
    "class": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    "image": tf.io.FixedLenFeature([], tf.string),
}
# Scanning: ragged features never fail on a missing feature, so the scan can say which one is missing.
SCAN_FEATURES = {
    "id": tf.io.RaggedFeature(tf.string),
    "class": tf.io.RaggedFeature(tf.int64),
    "image": tf.io.RaggedFeature(tf.string),
}


def parse_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Scalar record -> {"id": string, "image": string (encoded), "label": int32 (-1 when absent)}."""
    f = tf.io.parse_single_example(serialized, _FEATURES)
    return {"id": f["id"], "image": f["image"], "label": tf.cast(f["class"], tf.int32)}


def shard_name(shard: int, image_size: int, count: int) -> str:
    return f"{shard:02d}-{image_size}x{image_size}-{count}.tfrec"


class ShardWriter:
    """Writes records round-robin into `num_shards` files of `out_dir`, named as Kaggle's on close.

    Round-robin keeps every shard a sample of the whole order, so a host reading a few shards sees
    all classes as long as the records come shuffled. Shards are written under temporary names and
    renamed `{shard:02d}-{S}x{S}-{records}.tfrec` once their counts are known; empty shards are removed.

        with ShardWriter(out_dir, image_size=224, num_shards=16) as w:
            for record in records:
                w.write(record)
        w.paths  # the shard files written
    """

    def __init__(self, out_dir: str, *, image_size: int, num_shards: int):
        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        tf.io.gfile.makedirs(out_dir)
        self._out_dir, self._size = out_dir, image_size
        self._tmp = [
            os.path.join(out_dir, f"{k:02d}-{image_size}x{image_size}.tfrec.partial") for k in range(num_shards)
        ]
        self._writers = [tf.io.TFRecordWriter(p) for p in self._tmp]
        self._counts = [0] * num_shards
        self._next = 0
        self.paths: list[str] = []

    def write(self, record: bytes) -> None:
        self._writers[self._next].write(record)
        self._counts[self._next] += 1
        self._next = (self._next + 1) % len(self._writers)

    def close(self) -> list[str]:
        for writer in self._writers:
            writer.close()
        for k, (tmp, count) in enumerate(zip(self._tmp, self._counts, strict=True)):
            if count == 0:
                tf.io.gfile.remove(tmp)
                continue
            path = os.path.join(self._out_dir, shard_name(k, self._size, count))
            tf.io.gfile.rename(tmp, path, overwrite=True)
            self.paths.append(path)
        return self.paths

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
