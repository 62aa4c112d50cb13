"""Host-level tf.data pipelines: the infinite training stream and one evaluation pass.

Training stream of one host, for a source with G usable records on this host:

  epoch e = the host's files in an order drawn from (seed, e), interleaved record by record,
            shuffled by a buffer seeded by (seed, e)             [raw, still-encoded records]
  stream  = epoch 0, epoch 1, ...  (bad records dropped before shuffling when skip_bad_records)
  mixed   = competition stream and extra TFDS streams, chosen per example by a stateless draw of
            (seed, position) with the configured weights      [tf.data choose_from_datasets]
  batches = decode + augment (seeded by (seed, position)), batch

Everything is a function of the seed and the position, so the batches from step k on can be rebuilt
without replaying steps 0..k-1: the mix's first k*b draws are counted (cheap arithmetic) to find
where each source stream is; a source stream at position p starts at epoch p // G and skips
p % G raw records (reading, not decoding them). That is what makes resuming exact, for the same
batch size and number of processes (another topology reads other shares: a new, equally
deterministic order). tf.data's shuffle buffer combines its seed with TensorFlow's global seed,
which flowers_jax never sets: code that calls tf.random.set_seed must do so identically on resume.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from typing import Any

import ml_collections
import numpy as np

from flowers_jax.data import augment, counts, layout, tfds_sources
from flowers_jax.data._tf import AUTOTUNE, tf
from flowers_jax.data.counts import FileScan, SplitScan
from flowers_jax.data.layout import num_classes, scan, split_glob
from flowers_jax.data.tfrecords import DataError, parse_example

log = logging.getLogger(__name__)

_FOREVER = 2**62  # epochs: a stream that never ends in practice
_CHOICE_BLOCK = 16384  # source choices are drawn this many at a time


@dataclasses.dataclass(frozen=True)
class Host:
    """Which share of the data this process reads: `index` of `count` (jax.process_index/count)."""

    index: int = 0
    count: int = 1


def derive_seed(seed: int, *names: object) -> int:
    """A 31-bit seed from `seed` and names: stable across processes (unlike Python's hash of a str)."""
    digest = hashlib.sha256(repr((int(seed), *names)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


# --------------------------------------------------------------------------- which records a host reads


@dataclasses.dataclass(frozen=True)
class HostShare:
    """The records one host reads: whole files when there are at least as many files as hosts;
    otherwise every file, keeping records whose index over the whole split is `host.index` mod
    `host.count` (every host reads all bytes then, so the converter writes 16 shards by default)."""

    files: tuple[FileScan, ...]
    host: Host
    by_record: bool
    offsets: tuple[int, ...]  # first split-wide record index of each file (by_record only)
    num_examples: int


def host_share(split: SplitScan, host: Host) -> HostShare:
    """The records of `split` that `host` reads (see HostShare)."""
    files = split.files
    if len(files) >= host.count:
        mine = files[host.index :: host.count]
        return HostShare(mine, host, False, (0,) * len(mine), sum(f.good for f in mine))
    offsets = tuple(int(x) for x in np.cumsum([0] + [f.readable for f in files])[:-1])
    n = 0
    for f, off in zip(files, offsets, strict=True):
        bad = set(f.bad)
        n += sum(1 for i in range(f.readable) if (off + i) % host.count == host.index and i not in bad)
    return HostShare(files, host, True, offsets, n)


def _read_share(share: HostShare, order: tf.Tensor, *, cycle_length: int) -> tf.data.Dataset:
    """Raw records of `share`'s files in `order` (positions into share.files), interleaved, bad ones dropped."""
    paths = tf.constant([f.path for f in share.files])
    readable = tf.constant([f.readable for f in share.files], tf.int64)
    offsets = tf.constant(share.offsets, tf.int64)
    bad_keys = [(k << 32) | i for k, f in enumerate(share.files) for i in f.bad]
    table = None
    if bad_keys:
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(bad_keys, tf.int64), tf.ones(len(bad_keys), tf.int64)), 0
        )

    def read(k: tf.Tensor) -> tf.data.Dataset:
        # take(readable): a truncated file's unreadable tail is never touched (the scan recorded it).
        ds = tf.data.TFRecordDataset(paths[k]).take(readable[k]).enumerate()
        if share.by_record:
            h, n = share.host.index, share.host.count
            ds = ds.filter(lambda i, r: (offsets[k] + i) % n == h)
        if table is not None:
            ds = ds.filter(lambda i, r: table.lookup(tf.bitwise.left_shift(tf.cast(k, tf.int64), 32) | i) == 0)
        return ds.map(lambda i, r: r)

    return tf.data.Dataset.from_tensor_slices(order).interleave(
        read,
        cycle_length=max(1, min(cycle_length, len(share.files))),
        block_length=1,
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )


# --------------------------------------------------------------------------- training


def _epochs(make_epoch, *, size: int, start: int) -> tf.data.Dataset:
    """Stream of epochs make_epoch(0), make_epoch(1), ... from element `start` on (0 <= start, size > 0)."""
    first_epoch, offset = divmod(start, size)
    return tf.data.Dataset.range(first_epoch, _FOREVER).flat_map(make_epoch).skip(offset)


def _block_shuffle(ds: tf.data.Dataset, block: int, seed: int, epoch: tf.Tensor) -> tf.data.Dataset:
    """`ds` (scalar elements or dicts of them) shuffled within consecutive blocks of `block` elements.

    Written by hand rather than `Dataset.shuffle(seed=seed + epoch)`: a tensor seed there goes
    through `tf.random.get_seed`, which raises "Using a symbolic tf.Tensor as a Python bool"
    whenever the process has set TF's global seed to 0 (`keras.utils.set_random_seed(0)`, as
    notebooks do). Stateless permutations of each block depend on (seed, epoch, block) only, so
    an epoch's order is the same in every run, which exact resume needs.
    """

    def permute(i: tf.Tensor, window: Any) -> tf.data.Dataset:
        n = tf.shape(tf.nest.flatten(window)[0])[0]
        order = tf.random.experimental.stateless_shuffle(
            tf.range(n), seed=tf.stack([tf.constant(seed, tf.int64), epoch * (1 << 20) + i])
        )
        return tf.data.Dataset.from_tensor_slices(tf.nest.map_structure(lambda t: tf.gather(t, order), window))

    return ds.batch(block).enumerate().flat_map(permute)


def _competition_stream(share: HostShare, config: ml_collections.ConfigDict, *, start: int) -> tf.data.Dataset:
    seed = derive_seed(config.seed, "tfrecords", share.host.index)
    n_files = len(share.files)

    def epoch(e: tf.Tensor) -> tf.data.Dataset:
        file_seed = tf.stack([tf.constant(seed, tf.int64), e])
        order = tf.random.experimental.stateless_shuffle(tf.range(n_files), seed=file_seed)
        raw = _read_share(share, order, cycle_length=config.data.file_cycle_length)
        return _block_shuffle(raw, config.data.shuffle_buffer, seed, e)

    raw = _epochs(epoch, size=share.num_examples, start=start)
    return raw.map(lambda r: {**parse_example(r), "source": tf.constant(0)}, num_parallel_calls=AUTOTUNE)


def _extra_stream(
    src: tfds_sources.ExtraSource,
    source_id: int,
    size: int,
    config: ml_collections.ConfigDict,
    host: Host,
    *,
    start: int,
) -> tf.data.Dataset:
    seed = derive_seed(config.seed, "tfds", src.name, src.split, host.index)
    base = src.mapped_dataset(host.index, host.count, source_id)

    def epoch(e: tf.Tensor) -> tf.data.Dataset:
        return _block_shuffle(base, config.data.shuffle_buffer, seed, e)

    return _epochs(epoch, size=size, start=start)


def _choice_block(cum_weights: np.ndarray, seed: int, block: tf.Tensor) -> tf.Tensor:
    """Source index of each of the _CHOICE_BLOCK examples of `block`: int64 [_CHOICE_BLOCK]."""
    u = tf.random.stateless_uniform([_CHOICE_BLOCK], seed=tf.stack([tf.constant(seed, tf.int64), block]))
    return tf.searchsorted(tf.constant(cum_weights, tf.float32), u, side="right", out_type=tf.int64)


def _choices(cum_weights: np.ndarray, seed: int, *, start: int) -> tf.data.Dataset:
    first_block, offset = divmod(start, _CHOICE_BLOCK)
    blocks = tf.data.Dataset.range(first_block, _FOREVER)
    ds = blocks.flat_map(lambda b: tf.data.Dataset.from_tensor_slices(_choice_block(cum_weights, seed, b)))
    return ds.skip(offset)


def choice_counts(cum_weights: np.ndarray, seed: int, n: int) -> np.ndarray:
    """How many of the first `n` choices went to each source: int64 [num_sources]."""
    k = len(cum_weights) + 1
    total = np.zeros(k, np.int64)
    for b in range(math.ceil(n / _CHOICE_BLOCK)):
        c = _choice_block(cum_weights, seed, tf.constant(b, tf.int64)).numpy()
        total += np.bincount(c[: n - b * _CHOICE_BLOCK], minlength=k)
    return total


def train_dataset(
    config: ml_collections.ConfigDict, *, host: Host | None = None, local_batch: int, start_step: int = 0
) -> tf.data.Dataset:
    """This host's infinite training batches from `start_step` on.

    Yields {"image": float32 [local_batch, S, S, 3] in [0, 255], "label": int32 [local_batch],
    "source": int32 [local_batch] (0 = competition TFRecords, i = config.data.extra_sources[i - 1]),
    "id": string [local_batch] (the record's id; "<tfds id>" or the file name for extra sources)}.
    """
    host = host or Host()
    split = scan(config, "train")
    counts.check_bad_records(split, skip=config.data.skip_bad_records, what="the training split")
    if not split.labelled:
        raise DataError(f"the training split {split.pattern!r} has no labels (no record has a 'class' feature)")
    share = host_share(split, host)
    names = list(layout.class_names(config))
    extra = [
        tfds_sources.open_source(e, class_names=names, download=config.data.download_extra)
        for e in config.data.extra_sources
    ]
    weights = np.array([1.0 - sum(s.weight for s in extra)] + [s.weight for s in extra])
    if weights[0] < -1e-9:
        raise DataError(f"the extra sources' weights add up to {1 - weights[0]:.3f} > 1")
    sizes = [share.num_examples] + [s.count_mapped(host.index, host.count, len(names))[0] for s in extra]
    for i, (w, n) in enumerate(zip(weights, sizes, strict=True)):
        if w > 0 and n == 0:
            what = "the competition training split" if i == 0 else f"extra source {extra[i - 1].name!r}"
            raise DataError(f"{what} has no usable examples on host {host.index} of {host.count}")

    start = start_step * local_batch
    log.info(
        "training data: %d usable records; host %d of %d reads %d (%s) in batches of %d, from step %d",
        split.num_examples,
        host.index,
        host.count,
        share.num_examples,
        f"records {host.index} mod {host.count}"
        if share.by_record
        else f"{len(share.files)} of {len(split.files)} files",
        local_batch,
        start_step,
    )
    if len(extra) == 0:
        ds = _competition_stream(share, config, start=start)
    else:
        cum = np.cumsum(np.maximum(weights, 0.0))[:-1] / max(weights.clip(0).sum(), 1e-12)
        choice_seed = derive_seed(config.seed, "mix", host.index)
        starts = choice_counts(cum, choice_seed, start)
        streams = [_competition_stream(share, config, start=int(starts[0])) if weights[0] > 0 else _never()]
        streams += [
            _extra_stream(s, i + 1, sizes[i + 1], config, host, start=int(starts[i + 1])) if s.weight > 0 else _never()
            for i, s in enumerate(extra)
        ]
        # choose_from_datasets is the machinery of tf.data's sample_from_datasets; the choice stream is
        # our own stateless one so that its first n draws can be counted when resuming.
        ds = tf.data.Dataset.choose_from_datasets(streams, _choices(cum, choice_seed, start=start))

    aug_seed = derive_seed(config.seed, "augment", host.index)
    size, aug, dct = config.data.image_size, config.data.augment, config.data.dct_method

    def decode(position: tf.Tensor, ex: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        seed = tf.stack([tf.constant(aug_seed, tf.int64), position])
        image = augment.decode_train(ex["image"], seed, size=size, aug=aug, dct_method=dct)
        return {"image": image, "label": ex["label"], "source": ex["source"], "id": ex["id"]}

    ds = ds.enumerate(start=start).map(decode, num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.batch(local_batch, drop_remainder=True).prefetch(AUTOTUNE)
    return ds.with_options(_options())


def _never() -> tf.data.Dataset:
    """Placeholder for a weight-0 source: choose_from_datasets never asks it for an element."""
    return tf.data.Dataset.from_tensors(
        {"image": tf.constant(b""), "label": tf.constant(0, tf.int32), "source": tf.constant(0), "id": tf.constant(b"")}
    ).repeat()


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    # Input pipelines do better with single-threaded ops and tf.data's own parallelism.
    options.threading.max_intra_op_parallelism = 1
    return options


# --------------------------------------------------------------------------- evaluation


def eval_dataset(
    config: ml_collections.ConfigDict, split: str, *, host: Host | None = None, local_batch: int
) -> tuple[tf.data.Dataset, int]:
    """One pass over `split` for this host, padded: returns (dataset, number of batches).

    Every host gets the same number of batches (the largest host's count), padded with
    fully-masked examples, so collectives across hosts never wait on a host that has finished.
    Yields {"image": float32 [local_batch, S, S, 3], "label": int32 [local_batch] (labelled splits only),
    "mask": float32 [local_batch] (1 real, 0 padding), "id": string [local_batch] (b"" for padding)}.
    """
    host = host or Host()
    split_scan = scan(config, split)
    counts.check_bad_records(split_scan, skip=config.data.skip_bad_records, what=f"split {split!r}")
    share = host_share(split_scan, host)
    per_host = [host_share(split_scan, Host(h, host.count)).num_examples for h in range(host.count)]
    num_batches = max(math.ceil(n / local_batch) for n in per_host)
    size, dct = config.data.image_size, config.data.dct_method
    labelled = split_scan.labelled

    def decode(r: tf.Tensor) -> dict[str, tf.Tensor]:
        ex = parse_example(r)
        out = {"image": augment.decode_eval(ex["image"], size=size, dct_method=dct), "mask": tf.constant(1.0)}
        out["id"] = ex["id"]
        if labelled:
            out["label"] = ex["label"]
        return out

    order = tf.range(len(share.files))
    ds = _read_share(share, order, cycle_length=config.data.file_cycle_length)
    ds = ds.map(decode, num_parallel_calls=AUTOTUNE, deterministic=True)
    if config.data.cache_eval:
        ds = ds.cache()
    pad = {"image": tf.zeros([size, size, 3]), "mask": tf.constant(0.0), "id": tf.constant(b"")}
    if labelled:
        pad["label"] = tf.constant(0, tf.int32)
    ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat(num_batches * local_batch - share.num_examples))
    ds = ds.batch(local_batch, drop_remainder=True).prefetch(AUTOTUNE)
    return ds.with_options(_options()), num_batches


# tf.data's cache() lives in its dataset object: cached eval datasets are kept here so that the next
# evaluation (a new eval_iterator) iterates the same object and reads decoded images from memory.
_CACHED_EVAL: dict[tuple, tuple[tf.data.Dataset, int]] = {}


def cached_eval_dataset(
    config: ml_collections.ConfigDict, split: str, *, host: Host | None = None, local_batch: int
) -> tuple[tf.data.Dataset, int]:
    """`eval_dataset`, built once per (data, split, host, batch) when config.data.cache_eval is set."""
    if not config.data.cache_eval:
        return eval_dataset(config, split, host=host, local_batch=local_batch)
    host = host or Host()
    key = (split_glob(config, split), config.data.image_size, config.data.dct_method, host, local_batch)
    key += (config.data.skip_bad_records, num_classes(config))
    if key not in _CACHED_EVAL:
        _CACHED_EVAL[key] = eval_dataset(config, split, host=host, local_batch=local_batch)
    return _CACHED_EVAL[key]
