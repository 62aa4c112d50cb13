"""Device-level iterators: host batches -> global jax.Arrays sharded on mesh axis "data", prefetched.

Each process reads its own share of the data (pipeline.Host from jax.process_index/process_count)
and contributes its rows of the global batch through jax.make_array_from_process_local_data.
A background thread keeps `config.data.prefetch_to_device` batches on the devices ahead of the
training step; flax's prefetch_to_device is for pmap-style (replica-stacked) arrays, so this small
thread is written here.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from flowers_jax.data import pipeline
from flowers_jax.data.pipeline import Host

log = logging.getLogger(__name__)

DATA_AXIS = "data"


def batch_layout(mesh: Mesh, global_batch: int) -> tuple[NamedSharding, int, Host]:
    """(sharding of a batch, this process's rows of it, this process's Host) for `mesh`.

    Raises:
      ValueError: no "data" axis, a batch not divisible by its size, or a layout where processes
        would hold unequal shares of the batch.
    """
    if DATA_AXIS not in mesh.axis_names:
        raise ValueError(
            f"the mesh has axes {mesh.axis_names}; the input pipeline shards batches on axis {DATA_AXIS!r}"
        )
    n = mesh.shape[DATA_AXIS]
    if global_batch <= 0 or global_batch % n:
        raise ValueError(
            f"batch size {global_batch} is not divisible by the {n} devices of mesh axis {DATA_AXIS!r}; "
            f"use a multiple of {n} (config.batch_size, or config.eval_batch_size for evaluation)"
        )
    sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    rows = {(s[0].start or 0, s[0].stop) for s in sharding.addressable_devices_indices_map((global_batch,)).values()}
    local_batch = sum((stop if stop is not None else global_batch) - start for start, stop in rows)
    host = Host(jax.process_index(), jax.process_count())
    if local_batch * host.count != global_batch:
        raise ValueError(
            f"this mesh gives process {host.index} {local_batch} of {global_batch} batch rows; the input pipeline "
            f"needs every one of the {host.count} processes to hold an equal share"
        )
    return sharding, local_batch, host


def _to_device(batch: dict[str, np.ndarray], sharding: NamedSharding, global_batch: int, keep_on_host=()) -> dict:
    out = {}
    for k, v in batch.items():
        if k in keep_on_host:
            out[k] = v
        else:
            out[k] = jax.make_array_from_process_local_data(sharding, v, (global_batch, *v.shape[1:]))
    return out


class Prefetcher(Iterator[dict[str, Any]]):
    """Runs `transform` over `items` (host batches -> device batches) in a daemon thread, `size` items ahead.

    Errors of the thread are raised by `__next__`. `close()`, leaving a `with` block, or dropping
    the iterator stops the thread (it holds no reference to the Prefetcher, so it can be collected).
    """

    def __init__(self, items: Iterator[Any], transform: Callable[[Any], Any], size: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, size))
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(
            target=_produce, args=(items, transform, self._queue, self._stop), daemon=True, name="data-prefetch"
        )
        self._thread.start()

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self._done = True
            raise StopIteration
        if isinstance(item, _Failure):
            self._done = True
            raise item.error
        return item

    def close(self) -> None:
        self._stop.set()
        self._done = True
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=5)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        self._stop.set()


_END = object()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def _produce(items: Iterator[Any], transform: Callable[[Any], Any], q: queue.Queue, stop: threading.Event) -> None:
    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    try:
        for item in items:
            if not put(transform(item)):
                return
    except BaseException as e:  # handed to the consumer, which raises it
        put(_Failure(e))
        return
    put(_END)


def train_iterator(config: ml_collections.ConfigDict, *, mesh: Mesh, start_step: int = 0) -> Prefetcher:
    """Infinite, shuffled, augmented global training batches, from `start_step` on.

    Yields {"image": float32 [B, S, S, 3] RGB in [0, 255] (not normalised), "label": int32 [B]}, jax.Arrays
    sharded along mesh axis "data"; B = config.batch_size, S = config.data.image_size. For a given
    config.seed the stream is fixed, and train_iterator(config, mesh=m, start_step=k) yields exactly
    what an uninterrupted iterator yields from its step k on.
    """
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    sharding, local_batch, host = batch_layout(mesh, config.batch_size)
    ds = pipeline.train_dataset(config, host=host, local_batch=local_batch, start_step=start_step)
    ds = ds.map(lambda b: {"image": b["image"], "label": b["label"]})
    return Prefetcher(
        ds.as_numpy_iterator(),
        lambda b: _to_device(b, sharding, config.batch_size),
        size=config.data.prefetch_to_device,
    )


def eval_iterator(config: ml_collections.ConfigDict, split: str, *, mesh: Mesh) -> Prefetcher:
    """Exactly one pass over `split` ("val", "test", or a path/glob of .tfrec files).

    Yields {"image": float32 [B, S, S, 3], "label": int32 [B] (labelled splits only), "mask": float32 [B]
    (1 real example, 0 padding)} as jax.Arrays sharded on "data", and "id": numpy bytes [B / processes],
    this process's rows only (b"" for padding). B = config.eval_batch_size if set, else config.batch_size.
    Every process yields the same number of batches; the last ones are padded and masked.
    """
    global_batch = config.get("eval_batch_size", None) or config.batch_size
    sharding, local_batch, host = batch_layout(mesh, global_batch)
    ds, _ = pipeline.cached_eval_dataset(config, split, host=host, local_batch=local_batch)
    return Prefetcher(
        ds.as_numpy_iterator(),
        lambda b: _to_device(b, sharding, global_batch, keep_on_host=("id",)),
        size=config.data.prefetch_to_device,
    )
