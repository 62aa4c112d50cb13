"""Readers of a workdir (eval, predict, export, calibrate) never touch what the trainer writes."""

from __future__ import annotations

import numpy as np
import pytest

from flowers_jax import checkpoint


def test_lookup_leaves_a_save_in_flight_alone(tmp_path):
    saver = checkpoint.Checkpoints(str(tmp_path), async_save=False)
    saver.save("latest", 3, {"w": np.arange(4.0)}, {"note": "step 3"})
    saver.wait()
    # What an async save of step 4 looks like while it is being written.
    in_flight = tmp_path / "checkpoints" / "latest" / "4.orbax-checkpoint-tmp-1700000000"
    (in_flight / "state").mkdir(parents=True)
    manager, step = checkpoint.find(str(tmp_path), "latest")
    assert step == 3 and checkpoint.restore_meta(manager, step) == {"note": "step 3"}
    assert in_flight.is_dir(), "a read-only look-up deleted the trainer's save in flight"
    saver.close()
    # Nor does a look-up create folders.
    (tmp_path / "checkpoints" / "best").rmdir()
    with pytest.raises(checkpoint.CheckpointError, match="no best checkpoint yet"):
        checkpoint.find(str(tmp_path), "best")
    assert not (tmp_path / "checkpoints" / "best").exists()
