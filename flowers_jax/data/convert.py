"""Photos -> the competition's TFRecord layout, so anyone's flower photos train like Kaggle's.

    python -m flowers_jax.data.convert folder   --input PHOTOS --output DATA_DIR [--sizes 224,512]
    python -m flowers_jax.data.convert oxford102 --input oxford102/ --output DATA_DIR [--sizes 224]

`folder` reads <input>/<class>/**.jpg (split into train/val by --val-fraction, by a hash of each
file's path, so adding photos never moves the others), or <input>/{train,val,test}/<class>/**.jpg;
a flat <input>/test/*.jpg becomes an unlabelled test split. JPEG, PNG, BMP and GIF are read (other
files, e.g. HEIC, are counted and ignored). Class folders named after competition
classes (any case, "_" for " ") get the competition's indices; otherwise --classes folders numbers
the folders themselves.

`oxford102` reads the Oxford-102 layout: jpg/image_NNNNN.jpg with labels.csv, or the official
imagelabels.mat and setid.mat (trnid -> train, valid -> val, tstid -> test); the competition class
is the Oxford label - 1; ids are the Oxford names ("image_00001"). Test keeps its labels unless
--unlabelled-test (Kaggle's test has none).

`--hold-out-classes K` (either source) leaves K classes (drawn with --hold-out-seed among those
with training photos) out of train, val and test entirely, renumbers the others 0..C-K-1 with their
names, and writes the held-out classes' val and test photos, unlabelled, as `val_unknown` and
`test_unknown`: the open-set ("not one of my flowers") measurement of a model that never saw them.

Each photo is decoded as PIL and browsers do (accurate integer DCT, EXIF orientation applied when
Pillow is installed), centre-cropped to a square, resized (bilinear, antialiased) and stored as a
JPEG (quality 95; a JPEG already square at the size is stored byte for byte), shuffled into
--shards files per split, named as Kaggle's. Written beside them:
dataset.json (counts per split and class, class names, size, source) and ids.csv (id, split,
label, source file). Photos that do not decode are skipped and listed (--strict stops instead).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import logging
import os
import sys
import time

import numpy as np

from flowers_jax.data import augment, layout, tfrecords
from flowers_jax.data._tf import AUTOTUNE, tf
from flowers_jax.data.classes import class_names as competition_class_names
from flowers_jax.data.classes import normalise_name

log = logging.getLogger("flowers_jax.data.convert")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
SPLITS = ("train", "val", "test")
UNKNOWN_SPLITS = ("val_unknown", "test_unknown")  # written by --hold-out-classes


@dataclasses.dataclass(frozen=True)
class Photo:
    """One source photo. `label` is None for an unlabelled (test) photo."""

    path: str
    id: str
    split: str
    label: int | None
    source: str  # path relative to the input folder, for ids.csv


# --------------------------------------------------------------------------- sources


def _photos_in(folder: str) -> list[str]:
    """Image files in `folder` and its sub-folders, sorted; other files are counted in the log."""
    photos, others = [], {}
    for dirpath, _, filenames in tf.io.gfile.walk(folder):
        for f in filenames:
            ext = os.path.splitext(f)[1].lower()
            if ext in IMAGE_EXTENSIONS:
                photos.append(os.path.join(dirpath, f))
            elif not f.startswith("."):
                others[ext] = others.get(ext, 0) + 1
    if others:
        log.warning("%s: ignored files that are not JPEG/PNG/BMP/GIF: %s", folder, others)
    return sorted(photos)


def _subdirs(folder: str) -> list[str]:
    return sorted(d.rstrip("/") for d in tf.io.gfile.listdir(folder) if tf.io.gfile.isdir(os.path.join(folder, d)))


def _hash_unit(text: str) -> float:
    """A stable number in [0, 1) for `text`."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") / 2.0**64


def folder_photos(
    root: str, *, val_fraction: float = 0.1, test_fraction: float = 0.0, classes: str = "auto"
) -> tuple[list[Photo], list[str], dict]:
    """Photos of a folder of class sub-folders (see the module docstring); returns (photos, class names, source).

    classes: "kaggle" (folder names must be competition class names), "folders" (the sorted folder
    names become the classes), or "auto" (kaggle when every name matches, folders when none does,
    an error naming the odd ones out when some do).
    """
    top = _subdirs(root)
    if not top:
        raise tfrecords.DataError(f"{root!r} has no sub-folders; expected <input>/<class>/*.jpg")
    split_layout = "train" in top and all(d in SPLITS for d in top)
    class_dirs: dict[str, list[tuple[str, str]]] = {}  # split ("" = to be drawn) -> [(class folder name, path)]
    flat_test: list[str] = []
    if split_layout:
        for split in top:
            sub = _subdirs(os.path.join(root, split))
            if split == "test" and not sub:
                flat_test = _photos_in(os.path.join(root, split))  # an unlabelled test split
            class_dirs[split] = [(c, os.path.join(root, split, c)) for c in sub]
    else:
        class_dirs[""] = [(c, os.path.join(root, c)) for c in top]

    folder_names = sorted({c for dirs in class_dirs.values() for c, _ in dirs})
    names = competition_class_names()
    keys = {normalise_name(n): i for i, n in enumerate(names)}
    unmatched = [c for c in folder_names if normalise_name(c) not in keys]
    if classes == "auto":
        if unmatched and len(unmatched) < len(folder_names):
            raise tfrecords.DataError(
                f"some class folders are competition classes and some are not: {unmatched} match none of the 104 "
                "names. Rename them (see flowers_jax/data/kaggle_104_classes.txt), or pass --classes folders to "
                "use the folder names as the class list."
            )
        classes = "folders" if unmatched else "kaggle"
    if classes == "kaggle":
        if unmatched:
            raise tfrecords.DataError(f"class folders {unmatched} match none of the 104 competition class names")
        index = {c: keys[normalise_name(c)] for c in folder_names}
    else:
        names = folder_names
        index = {c: i for i, c in enumerate(folder_names)}

    photos = []
    for split, dirs in class_dirs.items():
        for c, path in dirs:
            for p in _photos_in(path):
                rel = os.path.relpath(p, root)
                if split:
                    s = split
                else:
                    u = _hash_unit(rel)
                    s = "val" if u < val_fraction else "test" if u < val_fraction + test_fraction else "train"
                photos.append(Photo(p, _path_id(rel), s, index[c], rel))
    for p in flat_test:
        rel = os.path.relpath(p, root)
        photos.append(Photo(p, _path_id(rel), "test", None, rel))
    source = {"folder": {"input": root, "classes": classes, "val_fraction": val_fraction, "split_layout": split_layout}}
    return photos, names, source


def _path_id(rel: str) -> str:
    """Stable 12-hex-digit id of a photo from its path relative to the input folder."""
    return hashlib.sha256(rel.replace(os.sep, "/").encode()).hexdigest()[:12]


def oxford_photos(root: str, *, labelled_test: bool = True) -> tuple[list[Photo], list[str], dict]:
    """Photos of the Oxford-102 layout present under `root`; competition class = Oxford label - 1."""
    csv_path, mat_labels, mat_sets = (os.path.join(root, f) for f in ("labels.csv", "imagelabels.mat", "setid.mat"))
    rows: dict[str, tuple[int, str]] = {}  # "jpg/image_00001.jpg" -> (oxford label 1..102, split)
    how = []
    if tf.io.gfile.exists(mat_labels) and tf.io.gfile.exists(mat_sets):
        import scipy.io  # a dependency of jax

        with tf.io.gfile.GFile(mat_labels, "rb") as f:
            labels = scipy.io.loadmat(io.BytesIO(f.read()))["labels"].ravel()
        with tf.io.gfile.GFile(mat_sets, "rb") as f:
            sets = scipy.io.loadmat(io.BytesIO(f.read()))
        for key, split in (("trnid", "train"), ("valid", "val"), ("tstid", "test")):
            for i in sets[key].ravel():
                rows[f"jpg/image_{int(i):05d}.jpg"] = (int(labels[int(i) - 1]), split)
        how.append("imagelabels.mat + setid.mat (trnid -> train, valid -> val, tstid -> test)")
    if tf.io.gfile.exists(csv_path):
        with tf.io.gfile.GFile(csv_path) as f:
            table = list(csv.DictReader(f))
        disagree = [
            r["filename"]
            for r in table
            if r["filename"] in rows and rows[r["filename"]] != (int(r["label"]), r["split"])
        ]
        if disagree:
            raise tfrecords.DataError(
                f"labels.csv and the .mat files disagree on {len(disagree)} images: {disagree[:5]}"
            )
        for r in table:
            if r.get("present", "1") == "1":
                rows.setdefault(r["filename"], (int(r["label"]), r["split"]))
        how.append("labels.csv")
        if not rows:
            raise tfrecords.DataError(
                f"{csv_path}: all {len(table)} rows have present=0 (no photo is marked as present), and there "
                "are no imagelabels.mat + setid.mat beside it; mark the photos you have with present=1"
            )
    if not rows:
        raise tfrecords.DataError(
            f"{root!r} has neither labels.csv nor imagelabels.mat + setid.mat (Oxford-102 layout)"
        )
    present = set()
    for folder in {os.path.dirname(rel) for rel in rows}:  # one listing per folder, not one call per image
        if tf.io.gfile.isdir(os.path.join(root, folder)):
            present.update(os.path.join(folder, f) for f in tf.io.gfile.listdir(os.path.join(root, folder)))
    photos, missing = [], 0
    for rel, (label, split) in sorted(rows.items()):
        path = os.path.join(root, rel)
        if rel not in present:
            missing += 1
            continue
        keep_label = label - 1 if (split != "test" or labelled_test) else None
        photos.append(Photo(path, os.path.splitext(os.path.basename(rel))[0], split, keep_label, rel))
    if missing:
        log.info("%d images listed in the label files are not in %s (skipped)", missing, root)
    source = {
        "oxford102": {
            "input": root,
            "read_from": how,
            "label_map": "competition class = Oxford label - 1",
            "labelled_test": labelled_test,
            "listed_but_missing": missing,
        }
    }
    return photos, competition_class_names(), source


def hold_out_classes(
    photos: list[Photo], class_names: list[str], k: int, *, seed: int = 0
) -> tuple[list[Photo], list[str], dict]:
    """Leaves `k` classes out: see the module docstring. Returns (photos, known class names, source info)."""
    with_train = sorted({p.label for p in photos if p.split == "train" and p.label is not None})
    if not 0 < k < len(with_train):
        raise tfrecords.DataError(
            f"--hold-out-classes {k}: need 0 < K < {len(with_train)} (the classes that have training photos)"
        )
    held = sorted(int(c) for c in np.random.default_rng(seed).choice(with_train, size=k, replace=False))
    known = [c for c in with_train if c not in held]
    index = {c: i for i, c in enumerate(known)}
    out = []
    for p in photos:
        if p.label in index:
            out.append(dataclasses.replace(p, label=index[p.label]))
        elif p.label in held and p.split != "train":
            out.append(dataclasses.replace(p, split=f"{p.split}_unknown", label=None))
    source = {
        "held_out_classes": {
            "k": k,
            "seed": seed,
            "held_out": [{"class": c, "name": class_names[c]} for c in held],
            "known_from_original": known,
            "unknown_splits": list(UNKNOWN_SPLITS),
        }
    }
    return out, [class_names[c] for c in known], source


# --------------------------------------------------------------------------- conversion


def _orientations(photos: list[Photo]) -> np.ndarray:
    """EXIF orientation (1..8) of each photo, 1 when unknown. TF's decoders ignore EXIF."""
    try:
        from PIL import Image
    except ImportError:
        log.warning("Pillow is not installed: EXIF orientation is ignored (pip install pillow to apply it)")
        return np.ones(len(photos), np.int32)
    out = np.ones(len(photos), np.int32)
    for i, p in enumerate(photos):
        try:
            with tf.io.gfile.GFile(p.path, "rb") as f, Image.open(f) as im:  # reads the header only
                out[i] = int(im.getexif().get(0x0112, 1) or 1)
        except Exception:  # an unreadable photo is reported by the decoding step
            pass
    return out


def _apply_orientation(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """Rotates/flips uint8 [h, w, 3] upright, as PIL's ImageOps.exif_transpose does."""
    branches = {
        2: lambda: tf.image.flip_left_right(image),
        3: lambda: tf.image.rot90(image, 2),
        4: lambda: tf.image.flip_up_down(image),
        5: lambda: tf.image.transpose(image),
        6: lambda: tf.image.rot90(image, 3),
        7: lambda: tf.image.rot90(tf.image.transpose(image), 2),
        8: lambda: tf.image.rot90(image, 1),
    }
    return tf.switch_case(tf.clip_by_value(orientation - 1, 0, 7), [lambda: image] + [branches[k] for k in range(2, 9)])


def square_jpeg(data: tf.Tensor, orientation: tf.Tensor, *, size: int, quality: int) -> tf.Tensor:
    """Encoded photo -> JPEG bytes of its upright centre square resized to `size` x `size`.

    An upright JPEG already `size` x `size` is kept byte for byte (re-encoding would only lose quality).
    """
    shape = augment.image_shape(data)
    as_is = tf.logical_and(tf.io.is_jpeg(data), tf.logical_and(orientation <= 1, tf.reduce_all(shape[:2] == size)))

    def convert() -> tf.Tensor:
        image = _apply_orientation(
            augment.decode(data, "INTEGER_ACCURATE", augment.centre_crop_window(shape)), orientation
        )
        if_needed = tf.logical_or(tf.shape(image)[0] != size, tf.shape(image)[1] != size)
        image = tf.cond(
            if_needed,
            lambda: tf.cast(
                tf.clip_by_value(tf.round(tf.image.resize(image, [size, size], antialias=True)), 0, 255), tf.uint8
            ),
            lambda: image,
        )
        return tf.io.encode_jpeg(image, quality=quality)

    return tf.cond(as_is, lambda: data, convert)


def _encoded(paths: list[str], orientations: np.ndarray, *, size: int, quality: int) -> tf.data.Dataset:
    """(index, JPEG bytes) per photo, in order, decoded and encoded in parallel."""

    def encode(k: tf.Tensor, path: tf.Tensor, orientation: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return k, square_jpeg(tf.io.read_file(path), orientation, size=size, quality=quality)

    ds = tf.data.Dataset.from_tensor_slices((paths, orientations)).enumerate()
    return ds.map(lambda k, x: encode(k, *x), num_parallel_calls=AUTOTUNE, deterministic=True)


@dataclasses.dataclass(frozen=True)
class _WrittenSplit:
    summary: dict  # dataset.json's entry of the split
    written: list[Photo]  # in the order written
    failed: list[str]  # paths of the photos that did not decode


def _write_split(
    photos: list[Photo],
    orientations: np.ndarray,
    split_dir: str,
    *,
    size: int,
    quality: int,
    num_shards: int,
    num_classes: int,
) -> _WrittenSplit:
    """Writes one split's photos (EXIF `orientations` [len(photos)]) as shards into `split_dir`."""
    # A fixed shuffle, so that every shard holds every class (hosts read whole shards).
    order = np.random.default_rng(0).permutation(len(photos))
    ds = _encoded([photos[i].path for i in order], orientations[order], size=size, quality=quality)
    written = []
    with tfrecords.ShardWriter(split_dir, image_size=size, num_shards=min(num_shards, len(order))) as w:
        # A photo that does not decode is dropped by ignore_errors and found missing below.
        for k, jpeg in ds.ignore_errors().as_numpy_iterator():
            p = photos[order[k]]
            w.write(tfrecords.serialize_example(id=p.id, image=jpeg, label=p.label))
            written.append(p)
    labels = [p.label for p in written if p.label is not None]
    labelled = any(p.label is not None for p in photos)
    summary = {
        "num_examples": len(written),
        "num_shards": len(w.paths),
        "labelled": labelled,
        "class_counts": np.bincount(labels, minlength=num_classes).tolist() if labelled else None,
    }
    ids = {p.id for p in written}
    return _WrittenSplit(summary, written, [p.path for p in (photos[i] for i in order) if p.id not in ids])


def convert(
    photos: list[Photo],
    class_names: list[str],
    output: str,
    *,
    sizes: list[int],
    num_shards: int = 16,
    quality: int = 95,
    overwrite: bool = False,
    strict: bool = False,
    source: dict | None = None,
) -> dict[int, dict[str, int]]:
    """Writes `photos` at each size into the layout under `output`; returns {size: {split: records}}.

    Raises:
      DataError: the target folder exists (without `overwrite`), or a photo does not decode with `strict`.
    """
    if not photos:
        raise tfrecords.DataError("no photos found to convert")
    ids = [p.id for p in photos]
    if len(set(ids)) != len(ids):
        raise tfrecords.DataError("two photos share an id; this is a bug of the source reader")
    orientations = _orientations(photos)
    written: dict[int, dict[str, int]] = {}
    for size in sizes:
        out = tfrecords.layout_dir(output, size)
        if tf.io.gfile.exists(out) and tf.io.gfile.listdir(out):
            if not overwrite:
                raise tfrecords.DataError(f"{out!r} already exists; pass --overwrite to replace it")
            tf.io.gfile.rmtree(out)
        start = time.perf_counter()
        splits, id_rows, failed = {}, [], []
        for split in SPLITS + UNKNOWN_SPLITS:
            members = [i for i, p in enumerate(photos) if p.split == split]
            if members:
                written_split = _write_split(
                    [photos[i] for i in members],
                    orientations[members],
                    os.path.join(out, split),
                    size=size,
                    quality=quality,
                    num_shards=num_shards,
                    num_classes=len(class_names),
                )
                splits[split] = written_split.summary
                id_rows += [(p.id, split, "" if p.label is None else p.label, p.source) for p in written_split.written]
                failed += written_split.failed
        if failed:
            listing = "\n  ".join(failed[:20]) + (f"\n  ... and {len(failed) - 20} more" if len(failed) > 20 else "")
            if strict:
                tf.io.gfile.rmtree(out)
                raise tfrecords.DataError(
                    f"{len(failed)} photo(s) could not be decoded (nothing was written; without --strict they are "
                    f"skipped):\n  {listing}"
                )
            log.warning("%d photo(s) could not be decoded and were skipped:\n  %s", len(failed), listing)
        source_meta = dict(source or {}, skipped_undecodable=failed, jpeg_quality=quality)
        layout.write_metadata(out, image_size=size, class_names=class_names, splits=splits, source=source_meta)
        with tf.io.gfile.GFile(os.path.join(out, "ids.csv"), "w") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "split", "label", "source"])
            writer.writerows(sorted(id_rows, key=lambda r: ((SPLITS + UNKNOWN_SPLITS).index(r[1]), r[0])))
        written[size] = {s: v["num_examples"] for s, v in splits.items()}
        log.info(
            "wrote %s: %s in %.1f s",
            out,
            ", ".join(f"{s} {v['num_examples']} records in {v['num_shards']} shards" for s, v in splits.items()),
            time.perf_counter() - start,
        )
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flowers_jax.data.convert", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="source", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--input", required=True, help="the photos' folder")
    common.add_argument("--output", required=True, help="data_dir to write tfrecords-jpeg-SxS/ into (local or gs://)")
    common.add_argument("--sizes", default="224", help="comma-separated square sizes, e.g. 192,224,331,512")
    common.add_argument("--shards", type=int, default=16, help="files per split (default 16, as Kaggle's)")
    common.add_argument("--quality", type=int, default=95, help="JPEG quality of the stored images")
    common.add_argument("--overwrite", action="store_true", help="replace an existing tfrecords-jpeg-SxS folder")
    common.add_argument("--strict", action="store_true", help="stop when a photo does not decode (default: skip it)")
    common.add_argument(
        "--hold-out-classes", type=int, default=0, help="leave K classes out (open-set measurement; see above)"
    )
    common.add_argument("--hold-out-seed", type=int, default=0, help="which K classes --hold-out-classes draws")
    f = sub.add_parser("folder", parents=[common], help="<input>/<class>/*.jpg or <input>/{train,val,test}/<class>/")
    f.add_argument("--val-fraction", type=float, default=0.1, help="share of photos for val (flat layout only)")
    f.add_argument("--test-fraction", type=float, default=0.0, help="share of photos for a labelled test split")
    f.add_argument("--classes", choices=["auto", "kaggle", "folders"], default="auto")
    o = sub.add_parser("oxford102", parents=[common], help="Oxford-102: jpg/ + labels.csv or imagelabels.mat/setid.mat")
    o.add_argument("--unlabelled-test", action="store_true", help="leave 'class' out of test, as Kaggle's test")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    try:
        if args.source == "folder":
            photos, names, source = folder_photos(
                args.input, val_fraction=args.val_fraction, test_fraction=args.test_fraction, classes=args.classes
            )
        else:
            photos, names, source = oxford_photos(args.input, labelled_test=not args.unlabelled_test)
        if args.hold_out_classes:
            photos, names, held = hold_out_classes(photos, names, args.hold_out_classes, seed=args.hold_out_seed)
            source = dict(source, **held)
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
        written = convert(
            photos,
            names,
            args.output,
            sizes=sizes,
            num_shards=args.shards,
            quality=args.quality,
            overwrite=args.overwrite,
            strict=args.strict,
            source=source,
        )
    except tfrecords.DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for size, per_split in written.items():
        print(f"{tfrecords.layout_dir(args.output, size)}: " + ", ".join(f"{s} {n}" for s, n in per_split.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
