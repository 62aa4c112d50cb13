"""Hosts and devices: `jax.distributed` start-up and the data-parallel mesh.

One code path for 1 CPU, 8 fake CPU devices, a GPU, a TPU VM and a TPU pod:
a 1-D mesh over every device of every host, axis "data". Batches are sharded
along it and the train state is replicated, so `jax.jit` inserts the gradient
all-reduce and BatchNorm sees global batch statistics (docs/design.md, §mesh).
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

DATA_AXIS = "data"


def _on_multiworker_tpu() -> bool:
    # Cloud TPU VMs of a multi-worker slice list every worker's hostname here.
    return "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")


def initialize(
    mode: str = "auto",
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Starts `jax.distributed` when the run spans several processes.

    Args:
      mode: "auto" (initialise when a coordinator is given or on a multi-worker
        TPU slice, where JAX finds everything by itself), "on", or "off".
      coordinator_address, num_processes, process_id: for clusters JAX cannot
        detect, e.g. several processes on one machine ("127.0.0.1:PORT").
    """
    if mode == "off":
        return
    explicit = coordinator_address is not None
    if mode == "auto" and not explicit and not _on_multiworker_tpu():
        return
    if explicit and (num_processes is None or process_id is None):
        raise ValueError("--coordinator_address needs --num_processes and --process_id as well")
    if explicit:
        # Cross-process collectives on CPU devices need an implementation (gloo ships
        # with jaxlib); the setting only concerns the CPU backend.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )
    log.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())


def make_mesh() -> Mesh:
    """A 1-D "data" mesh over all devices of all processes."""
    return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))
