"""Data parallelism over every local device: batches split along their first axis, parameters replicated."""

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
    """Places a host batch (numpy arrays [batch_size, ...]) on the mesh, split by rows."""
    return jax.device_put(batch, batch_sharding(mesh))
