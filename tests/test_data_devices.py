"""Global batches on a device mesh: 8 simulated CPU devices in a subprocess (XLA flags act at start-up)."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from flowers_jax import data
from flowers_jax.data import fixtures, pipeline
from flowers_jax.data.iterators import Prefetcher

SCRIPT = textwrap.dedent(
    """
    import hashlib, itertools, json, sys
    import jax, numpy as np
    from jax.sharding import PartitionSpec as P
    from flowers_jax import data
    from flowers_jax.data import fixtures, pipeline

    assert jax.device_count() == 8, jax.devices()
    c = fixtures.data_only_config(sys.argv[1], image_size=16, batch_size=16, num_classes=5)
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    host = list(itertools.islice(pipeline.train_dataset(c, local_batch=16).as_numpy_iterator(), 3))
    with data.train_iterator(c, mesh=mesh) as it:
        dev = [next(it) for _ in range(3)]
    for h, b in zip(host, dev):
        assert sorted(b) == ["image", "label"]
        for k in b:
            assert b[k].sharding.spec == P("data"), b[k].sharding
            shards = sorted(b[k].addressable_shards, key=lambda s: s.index[0].start)
            assert [s.data.shape[0] for s in shards] == [2] * 8
            assert len({s.device for s in shards}) == 8
            np.testing.assert_array_equal(np.concatenate([np.asarray(s.data) for s in shards]), h[k])
    with data.train_iterator(c, mesh=mesh, start_step=2) as it:
        np.testing.assert_array_equal(np.asarray(next(it)["image"]), host[2]["image"])
    with data.eval_iterator(c, "val", mesh=mesh) as it:
        ev = list(it)
    assert len(ev) == 1 and ev[0]["mask"].sharding.spec == P("data") and isinstance(ev[0]["id"], np.ndarray)
    real = [i for i, m in zip(ev[0]["id"], np.asarray(ev[0]["mask"])) if m]
    assert len(real) == len(set(real)) == 15 and ev[0]["image"].shape == (16, 16, 16, 3)
    c.batch_size = 12
    try:
        data.train_iterator(c, mesh=mesh)
        raise AssertionError("a batch of 12 on 8 devices was accepted")
    except ValueError as e:
        assert "batch size 12 is not divisible by the 8 devices of mesh axis 'data'" in str(e), e
    digest = hashlib.sha256(b"".join(np.asarray(b["image"]).tobytes() for b in dev)).hexdigest()
    print(json.dumps({"digest": digest, "labels": [np.asarray(b["label"]).tolist() for b in dev]}))
    """
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    d = str(tmp_path_factory.mktemp("devices"))
    fixtures.write_synthetic_dataset(
        d, num_classes=5, image_size=16, train_per_class=8, val_per_class=3, test_examples=2
    )
    return d


def test_batches_sharded_over_eight_devices_match_the_host_stream_of_another_process(data_dir, tmp_path):
    script = tmp_path / "mesh8.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    run = subprocess.run(
        [sys.executable, str(script), data_dir], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    # This process (1 device) builds the same host stream: the data are a function of the seed only.
    c = fixtures.data_only_config(data_dir, image_size=16, batch_size=16, num_classes=5)
    host = list(itertools.islice(pipeline.train_dataset(c, local_batch=16).as_numpy_iterator(), 3))
    assert got["labels"] == [b["label"].tolist() for b in host]
    assert got["digest"] == hashlib.sha256(b"".join(b["image"].tobytes() for b in host)).hexdigest()


def test_one_device_iterators(data_dir):
    c = fixtures.data_only_config(data_dir, image_size=16, batch_size=8, num_classes=5)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    with data.train_iterator(c, mesh=mesh, start_step=3) as it:
        batch = next(it)
    assert isinstance(batch["image"], jax.Array) and batch["image"].shape == (8, 16, 16, 3)
    assert batch["image"].dtype == np.float32 and batch["label"].dtype == np.int32
    with data.eval_iterator(c, "test", mesh=mesh) as it:
        (only,) = list(it)
    assert "label" not in only and np.asarray(only["mask"]).tolist() == [1, 1] + [0] * 6
    assert only["id"].tolist() == [b"test-00000", b"test-00001"] + [b""] * 6
    with pytest.raises(ValueError, match="axis 'data'"):
        data.train_iterator(c, mesh=jax.sharding.Mesh(np.array(jax.devices()[:1]), ("batch",)))


def test_prefetcher_hands_over_errors_and_stops():
    def items():
        yield 1
        raise RuntimeError("reader failed")

    it = Prefetcher(items(), lambda x: x * 10, size=2)
    assert next(it) == 10
    with pytest.raises(RuntimeError, match="reader failed"):
        next(it)
    with pytest.raises(StopIteration):
        next(it)
    endless = Prefetcher(itertools.count(), lambda x: x, size=2)
    assert [next(endless) for _ in range(3)] == [0, 1, 2]
    endless.close()
    assert not endless._thread.is_alive()
