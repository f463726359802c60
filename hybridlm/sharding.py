"""Data parallelism over every device: batches split along their first axis, parameters replicated."""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def data_parallel_mesh() -> Mesh:
    """A 1-D mesh over all devices (CPU, GPUs of a host, or the chips of a TPU slice)."""
    return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows of a [batch, ...] array split across the data axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def put_batch(batch: dict[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles the global batch from every process's rows (numpy arrays [batch_size // process_count, ...]),
    split by rows across the mesh; in a single process the rows are the whole batch."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda rows: jax.make_array_from_process_local_data(sharding, rows), batch)
