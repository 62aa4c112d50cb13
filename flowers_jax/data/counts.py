"""One scan per split, cached beside the data: record and class counts, image sizes, bad records.

The scan reads every record once: it frames each file (a truncated or corrupted file shows as
bytes that no record accounts for), parses every record without assuming the schema, checks the
label range and decodes every image. Its result is cached as JSON beside the files
(`flowers_jax-scan-<key>.json`, the key covering file names, sizes, mtimes and num_classes), or
under `cache_dir` where that folder is read-only (Kaggle's /kaggle/input, a read-only bucket).

Knowing every bad record before training starts is what lets the pipeline both name them in an
error (file and record index) and, with skip_bad_records, drop them *before* shuffling, so batch
positions, and thus resuming at a step, stay exact.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import os
import re
import time
import uuid

import numpy as np

from flowers_jax.data._tf import AUTOTUNE, tf
from flowers_jax.data.tfrecords import RECORD_FRAMING_BYTES, SCAN_FEATURES, DataError, list_files

log = logging.getLogger(__name__)

SCAN_VERSION = 2  # 2: no image_sizes / duplicate_ids / num_classes (nothing read them)


@dataclasses.dataclass(frozen=True)
class BadRecord:
    """A record the pipeline cannot use. `index` counts records from 0 within `file`."""

    file: str
    index: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file} record {self.index}: {self.reason}"


@dataclasses.dataclass(frozen=True)
class FileScan:
    """One TFRecord file: `readable` records can be read; those at `bad` indices are unusable."""

    path: str
    size: int
    readable: int
    bad: tuple[int, ...]

    @property
    def good(self) -> int:
        return self.readable - len(self.bad)


@dataclasses.dataclass(frozen=True)
class SplitScan:
    """What a scan of one split found. `class_counts` is None for an unlabelled split."""

    pattern: str
    files: tuple[FileScan, ...]
    labelled: bool
    class_counts: tuple[int, ...] | None  # [num_classes]
    bad_records: tuple[BadRecord, ...]
    cache_path: str = ""  # where the scan is cached ("" when it could not be)

    @property
    def num_examples(self) -> int:
        """Usable records (bad ones excluded)."""
        return sum(f.good for f in self.files)

    @property
    def paths(self) -> list[str]:
        return [f.path for f in self.files]


def scan_split(pattern: str, *, num_classes: int, cache_dir: str = "") -> SplitScan:
    """Scans the TFRecord files matching `pattern` (or loads the cached scan).

    Raises:
      DataError: when nothing matches `pattern`.
    """
    paths = list_files(pattern)
    stats = [tf.io.gfile.stat(p) for p in paths]
    key_src = json.dumps(
        [
            SCAN_VERSION,
            num_classes,
            [(os.path.basename(p), s.length, s.mtime_nsec) for p, s in zip(paths, stats, strict=True)],
        ]
    )
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    name = f"flowers_jax-scan-{key}.json"
    beside = os.path.join(_common_dir(paths), name)
    fallback = os.path.join(cache_dir or _default_cache_dir(), _path_key(paths) + "-" + name)
    for candidate in (beside, fallback):
        if tf.io.gfile.exists(candidate):
            scan = _load(candidate, paths)
            if scan is not None:
                return scan

    start = time.perf_counter()
    scan = _scan(pattern, paths, [s.length for s in stats], num_classes)
    log.info(
        "scanned %s: %d records in %d files, %d usable, %d bad, in %.1f s",
        pattern,
        sum(f.readable for f in scan.files),
        len(paths),
        scan.num_examples,
        len(scan.bad_records),
        time.perf_counter() - start,
    )
    for candidate in (beside, fallback):
        try:
            _save(scan, candidate)
            return dataclasses.replace(scan, cache_path=candidate)
        except (tf.errors.OpError, OSError) as e:  # read-only data folder: use the local cache instead
            log.info("cannot cache the scan at %s (%s)", candidate, type(e).__name__)
    log.warning("the scan of %s could not be cached anywhere; it will run again next time", pattern)
    return scan


def _default_cache_dir() -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "flowers_jax")


def _common_dir(paths: list[str]) -> str:
    dirs = sorted({os.path.dirname(p) for p in paths})
    if len(dirs) == 1:
        return dirs[0]
    # os.path.commonpath would turn gs://bucket into gs:/bucket; compare path components instead.
    parts = [d.split("/") for d in dirs]
    common = []
    for level in zip(*parts, strict=False):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    return "/".join(common) or dirs[0]


def _path_key(paths: list[str]) -> str:
    return hashlib.sha256("\n".join(paths).encode()).hexdigest()[:12]


def _save(scan: SplitScan, path: str) -> None:
    d = dataclasses.asdict(scan)
    d.pop("cache_path")
    d["version"] = SCAN_VERSION
    for f in d["files"]:
        f["path"] = os.path.basename(f["path"])  # the cache stays valid when the folder moves
    for b in d["bad_records"]:
        b["file"] = os.path.basename(b["file"])
    tf.io.gfile.makedirs(os.path.dirname(path))
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"  # hosts of a pod may write the same cache at once
    with tf.io.gfile.GFile(tmp, "w") as f:
        json.dump(d, f, indent=1)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def _load(path: str, paths: list[str]) -> SplitScan | None:
    try:
        with tf.io.gfile.GFile(path) as f:
            d = json.load(f)
        full = {os.path.basename(p): p for p in paths}
        scan = SplitScan(
            pattern=d["pattern"],
            files=tuple(FileScan(full[f["path"]], f["size"], f["readable"], tuple(f["bad"])) for f in d["files"]),
            labelled=d["labelled"],
            class_counts=None if d["class_counts"] is None else tuple(d["class_counts"]),
            bad_records=tuple(BadRecord(full[b["file"]], b["index"], b["reason"]) for b in d["bad_records"]),
            cache_path=path,
        )
    except (KeyError, TypeError, ValueError, tf.errors.OpError) as e:
        log.warning("ignoring unreadable scan cache %s (%s)", path, e)
        return None
    return scan if d.get("version") == SCAN_VERSION else None


def _check(index: tf.Tensor, record: tf.Tensor) -> tuple[tf.Tensor, ...]:
    """What a scan needs of one record. Fails (and is dropped by ignore_errors) only for a record
    that is not an Example of the schema's types, or whose image does not decode."""
    f = tf.io.parse_single_example(record, SCAN_FEATURES)
    image = tf.concat([f["image"], [""]], 0)[0]
    shape = tf.cond(
        tf.size(f["image"]) > 0,
        lambda: tf.shape(tf.image.decode_image(image, channels=3, expand_animations=False)),
        lambda: tf.zeros([3], tf.int32),
    )
    label = tf.concat([f["class"], tf.constant([-1], tf.int64)], 0)[0]
    id_ = tf.concat([f["id"], [""]], 0)[0]
    return index, tf.size(f["id"]), tf.size(f["class"]), tf.size(f["image"]), label, id_, shape


def _explain_failure(path: str, index: int) -> str:
    """Why `_check` failed on one record: re-run eagerly to catch TF's own message (rare path)."""
    record = next(iter(tf.data.TFRecordDataset(path).skip(index).take(1)))
    try:
        f = tf.io.parse_single_example(record, SCAN_FEATURES)
    except tf.errors.OpError as e:
        return f"not a tf.train.Example with id (bytes), class (int64), image (bytes): {_short(e)}"
    try:
        tf.image.decode_image(f["image"][0], channels=3, expand_animations=False)
    except tf.errors.OpError as e:
        return f"image does not decode (corrupt or not a JPEG/PNG): {_short(e)}"
    return "record could not be read"  # pragma: no cover - _check and this disagree


def _short(e: tf.errors.OpError) -> str:
    """TF's error message without its op-location wrapping ("{{function_node ...}} ... [Op:X] name:")."""
    text = (e.message or type(e).__name__).strip().splitlines()[0]
    text = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", text)
    return re.sub(r"\s*\[Op:[^\]]*\].*$", "", text).strip()


def _frame(path: str, size: int) -> tuple[int, BadRecord | None]:
    """Pass 1 over one file, framing: (records readable before the first unreadable one, the
    unreadable tail as a bad record, or None when the records account for all `size` bytes)."""
    count, nbytes = (
        tf.data.TFRecordDataset(path)
        .ignore_errors()
        .reduce(
            (np.int64(0), np.int64(0)),
            lambda acc, r: (acc[0] + 1, acc[1] + tf.cast(tf.strings.length(r), tf.int64) + RECORD_FRAMING_BYTES),
        )
    )
    readable, offset = int(count), int(nbytes)
    if offset == size:
        return readable, None
    fix = "Copy the file again or re-create it (python -m flowers_jax.data.convert)."
    if readable == 0:
        reason = f"the file cannot be read as TFRecords (not a TFRecord file, or corrupt from byte 0 of {size}). "
    else:
        reason = (
            f"the file is truncated or corrupted at byte {offset} of {size}: record {readable} and any after "
            "it cannot be read. "
        )
    return readable, BadRecord(path, readable, reason + fix)


def _records(path: str, readable: int) -> tuple[list[tuple], list[BadRecord]]:
    """Pass 2 over one file, content: ([(index, n_id, n_class, n_image, label, id)] of the records
    that parse and decode, [the records that do not]). Failures are dropped by ignore_errors and
    found as the indices that did not come out."""
    ds = tf.data.TFRecordDataset(path).take(readable).enumerate()
    ds = ds.map(_check, num_parallel_calls=AUTOTUNE, deterministic=True).ignore_errors().batch(256)
    # _check's last output, the decoded shape, is dropped here: it is there so that the decode runs.
    rows = [row[:6] for batch in ds.as_numpy_iterator() for row in zip(*batch, strict=True)]
    seen = {int(r[0]) for r in rows}
    return rows, [BadRecord(path, i, _explain_failure(path, i)) for i in sorted(set(range(readable)) - seen)]


def _record_problem(row: tuple, *, labelled: bool, num_classes: int) -> str | None:
    """Why a record that decodes is still unusable (a missing or repeated feature, a label out of range)."""
    _, n_id, n_class, n_image, label, _ = row
    if n_image != 1:
        return "missing feature 'image'" if n_image == 0 else f"feature 'image' holds {n_image} values, not 1"
    if n_id != 1:
        return "missing feature 'id'" if n_id == 0 else f"feature 'id' holds {n_id} values, not 1"
    if labelled and n_class != 1:
        if n_class == 0:
            return "missing feature 'class' (other records of this split have one)"
        return f"feature 'class' holds {n_class} values, not 1"
    if labelled and not 0 <= label < num_classes:
        return f"label {label} is outside [0, {num_classes}); fix the record or set num_classes"
    return None


def _scan(pattern: str, paths: list[str], sizes: list[int], num_classes: int) -> SplitScan:
    rows, readable, bad = {}, {}, []  # rows[path]: see _records
    for path, size in zip(paths, sizes, strict=True):
        readable[path], tail = _frame(path, size)
        rows[path], undecodable = _records(path, readable[path])
        bad += ([tail] if tail else []) + undecodable
    labelled = any(r[2] > 0 for file_rows in rows.values() for r in file_rows)
    class_counts = np.zeros(num_classes, np.int64)
    ids: collections.Counter[bytes] = collections.Counter()
    for path, file_rows in rows.items():
        for row in file_rows:
            if problem := _record_problem(row, labelled=labelled, num_classes=num_classes):
                bad.append(BadRecord(path, int(row[0]), problem))
                continue
            if labelled:
                class_counts[row[4]] += 1
            ids[row[5]] += 1
    bad.sort(key=lambda b: (paths.index(b.file), b.index))
    # The unreadable tail of a truncated file is not among its `readable` records: keep only those.
    files = tuple(
        FileScan(p, size, readable[p], tuple(b.index for b in bad if b.file == p and b.index < readable[p]))
        for p, size in zip(paths, sizes, strict=True)
    )
    duplicates = sum(n - 1 for n in ids.values() if n > 1)
    if duplicates:
        log.warning("%s: %d records repeat an id already used in the split", pattern, duplicates)
    return SplitScan(
        pattern=pattern,
        files=files,
        labelled=labelled,
        class_counts=tuple(int(c) for c in class_counts) if labelled else None,
        bad_records=tuple(bad),
    )


def check_bad_records(scan: SplitScan, *, skip: bool, what: str) -> None:
    """Stops on bad records (`skip=False`) with an error naming them, or logs each one and the count.

    Raises:
      DataError: listing file, record index and reason of the bad records, and what to do.
    """
    if not scan.bad_records:
        return
    listing = "\n".join(f"  {b}" for b in scan.bad_records[:20])
    more = f"\n  ... and {len(scan.bad_records) - 20} more" if len(scan.bad_records) > 20 else ""
    if not skip:
        raise DataError(
            f"{len(scan.bad_records)} bad record(s) in {what} ({scan.pattern}):\n{listing}{more}\n"
            "Fix or remove them (python -m flowers_jax.data.convert re-creates records from photos), or set "
            "config.data.skip_bad_records=True to skip them; each skipped record is logged and counted."
        )
    for b in scan.bad_records:
        log.warning("skipping bad record in %s: %s", what, b)
    log.warning(
        "skipped %d bad record(s) in %s; %d usable records remain", len(scan.bad_records), what, scan.num_examples
    )
