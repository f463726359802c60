"""The device mesh of a run and how arrays are laid out on it.

Mesh axes, outermost first: `slices` (data parallelism across TPU slices or GPU nodes, over the slow network),
`data` (data parallelism within one), `fsdp` (data parallelism that also shards parameters, gradients and optimizer
state) and `tensor` (attention and GDN heads, the MLP's hidden width and the vocabulary split across devices).

Parameters and activations name their axes logically ("embed", "heads", "batch", ...); RULES maps each logical
name to the mesh axes it is split over, and `config.mesh.rules` overrides entries. Model code calls `constrain`
and `shard_map` for its activations and kernels; they read the mesh and rules set by `activate` (the trainer
activates them while tracing its steps) and do nothing outside it, so the model runs unchanged on one device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hybridlm.model.config import ConfigError

SLICES, DATA, FSDP, TENSOR = "slices", "data", "fsdp", "tensor"
MESH_AXES = (SLICES, DATA, FSDP, TENSOR)
BATCH_AXES = (SLICES, DATA, FSDP)  # the mesh axes a global batch's rows are split over

Axes = tuple[str | None, ...]  # the logical names of an array's axes, one per axis (None: not split)

# Logical axis -> the mesh axes it is split over (empty: replicated).
RULES: dict[str, tuple[str, ...]] = {
    "batch": BATCH_AXES,  # rows of a batch
    "layers": (),  # the stacked layer groups
    "embed": (FSDP,),  # d_model, in parameters
    "vocab": (TENSOR,),
    "heads": (TENSOR,),  # attention query heads (num_heads x head_dim in projections)
    "kv_heads": (TENSOR,),  # attention key and value heads
    "mlp": (TENSOR,),  # the MLP's hidden width
    "gdn_key_heads": (TENSOR,),  # GDN query and key heads (num_key_heads x key_head_dim in projections)
    "gdn_value_heads": (TENSOR,),  # GDN value heads (and the per-head gates, decays and output width)
    "conv_taps": (),  # the short convolution's kernel positions
    "head_dim": (),  # within one head (the GDN output norm's weight)
    "norm": (),  # the weights of the norms over d_model
}


def rules_from_config(overrides: Mapping[str, Sequence[str]] | None) -> dict[str, tuple[str, ...]]:
    """RULES with `config.mesh.rules` entries (logical axis -> mesh axes) replacing theirs; raises ConfigError for an
    unknown logical or mesh axis."""
    rules = dict(RULES)
    for logical, mesh_axes in (overrides or {}).items():
        if logical not in RULES:
            raise ConfigError(
                f"config.mesh.rules.{logical}: no parameter or activation has the logical axis {logical!r}; "
                f"the logical axes are {tuple(RULES)}"
            )
        mesh_axes = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
        unknown = [axis for axis in mesh_axes if axis not in MESH_AXES]
        if unknown:
            raise ConfigError(
                f"config.mesh.rules.{logical}={mesh_axes!r} names the mesh axis {unknown[0]!r}; the mesh axes are "
                f"{MESH_AXES}"
            )
        rules[logical] = mesh_axes
    return rules


def mesh_shape(mesh_config: Any, device_count: int) -> dict[str, int]:
    """{axis: size} from `config.mesh` (at most one size -1: the devices left over); raises ConfigError unless the
    sizes multiply to `device_count`."""
    sizes = {axis: int(mesh_config[axis]) for axis in MESH_AXES}
    fill = [axis for axis, size in sizes.items() if size == -1]
    fixed = math.prod(size for size in sizes.values() if size != -1)
    shown = " x ".join(f"{axis}={size}" for axis, size in sizes.items())
    if len(fill) > 1 or any(size == 0 or size < -1 for size in sizes.values()):
        raise ConfigError(f"config.mesh ({shown}): sizes must be positive, with at most one -1 (the rest)")
    if fill:
        if device_count % fixed:
            raise ConfigError(
                f"config.mesh ({shown}): the fixed axes take {fixed} devices, which does not divide the "
                f"{device_count} devices; pick sizes whose product divides {device_count}"
            )
        sizes[fill[0]] = device_count // fixed
    if math.prod(sizes.values()) != device_count:
        raise ConfigError(
            f"config.mesh ({shown}): the axis sizes multiply to {math.prod(sizes.values())} but there are "
            f"{device_count} devices; make the product {device_count}, or set one axis to -1"
        )
    return sizes


def make_mesh(mesh_config: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The mesh of `config.mesh` over `devices` (default: all, which JAX orders by process). On TPUs with slices > 1
    the `slices` axis runs across TPU slices and the other axes stay within one, each following the interconnect
    (jax's mesh_utils); elsewhere the axes take the devices in order, outermost first, so `slices` (and then `data`)
    runs across processes: across the nodes of a GPU cluster."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_shape(mesh_config, len(devices))
    shape = tuple(sizes[axis] for axis in MESH_AXES)
    if sizes[SLICES] > 1 and devices[0].platform == "tpu":
        inner, outer = (1, *shape[1:]), (sizes[SLICES], 1, 1, 1)
        grid = mesh_utils.create_hybrid_device_mesh(inner, outer, devices, allow_split_physical_axes=True)
    else:
        grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    return Mesh(np.asarray(grid), MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def abstract_layout(mesh_config: Any, device_count: int) -> Layout:
    """The layout of `config.mesh` (sizes and rules) over `device_count` devices that need not be present: shardings
    on it give shapes per device, for planning."""
    sizes = mesh_shape(mesh_config, device_count)
    mesh = jax.sharding.AbstractMesh(
        tuple(sizes[axis] for axis in MESH_AXES), MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    )
    return Layout(mesh, rules_from_config(mesh_config.get("rules")))


def layout(mesh_config: Any) -> Layout:
    """The layout of `config.mesh` (sizes and rules) over the devices present."""
    return Layout(make_mesh(mesh_config), rules_from_config(mesh_config.get("rules")))


def mesh_spec(logical: Sequence[str | None], rules: Mapping[str, tuple[str, ...]]) -> PartitionSpec:
    """The PartitionSpec of an array whose axes have the logical names `logical` (None: replicated)."""
    entries = []
    for name in logical:
        axes = rules[name] if name is not None else ()
        entries.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
    return PartitionSpec(*entries)


def check_divisible(name: str, shape: Sequence[int], spec: PartitionSpec, mesh: Mesh) -> None:
    """Raises ConfigError when an axis of the array `name` does not split evenly over its mesh axes."""
    for dim, entry in zip(shape, spec):
        axes = () if entry is None else (entry,) if isinstance(entry, str) else entry
        parts = math.prod(mesh.shape[axis] for axis in axes)
        if dim % parts:
            raise ConfigError(
                f"{name} has an axis of size {dim}, which cannot split over the mesh axes {axes} ({parts} devices); "
                "change config.mesh or the config.mesh.rules entry of that axis"
            )


@dataclasses.dataclass(frozen=True)
class Layout:
    """A mesh and the rules that place logical axes on it."""

    mesh: Mesh
    rules: Mapping[str, tuple[str, ...]]

    def sharding(self, logical: Sequence[str | None]) -> NamedSharding:
        return NamedSharding(self.mesh, mesh_spec(logical, self.rules))

    def spec(self, logical: Sequence[str | None]) -> PartitionSpec:
        return mesh_spec(logical, self.rules)

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())


_ACTIVE = threading.local()


@contextlib.contextmanager
def activate(layout: Layout) -> Iterator[None]:
    """Makes `constrain` and `shard_map` lay arrays out on `layout` within the block (while a step is traced)."""
    previous = getattr(_ACTIVE, "layout", None)
    _ACTIVE.layout = layout
    try:
        yield
    finally:
        _ACTIVE.layout = previous


def active() -> Layout | None:
    """The layout `activate` set, or None."""
    return getattr(_ACTIVE, "layout", None)


def constrain(x: jax.Array, logical: Axes) -> jax.Array:
    """x with a sharding constraint from its axes' logical names (one per axis); x itself when no layout is active."""
    layout = active()
    return x if layout is None else jax.lax.with_sharding_constraint(x, layout.sharding(logical))


def shard_map(f: Callable[..., Any], in_axes: Sequence[Axes], out_axes: Any) -> Callable[..., Any]:
    """`f` run on each device's shards (jax.shard_map) when a layout is active, else `f` itself. For kernels XLA
    cannot partition (Pallas, cuDNN): each device's call sees its own rows and heads.

    in_axes: per positional argument (arrays only), the logical names of its axes (None: not split); out_axes: the
    same for the outputs, as a pytree of such tuples.
    """
    layout = active()
    if layout is None:
        return f
    in_specs = tuple(layout.spec(axes) for axes in in_axes)
    out_specs = jax.tree.map(layout.spec, out_axes, is_leaf=lambda a: isinstance(a, tuple))
    return jax.shard_map(f, mesh=layout.mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)


def parameter_shardings(logical_specs: Any, shapes: Any, layout: Layout) -> Any:
    """NamedShardings for a pytree of parameters, from their logical PartitionSpecs (nnx.get_partition_spec) and
    shapes (arrays or ShapeDtypeStructs); raises ConfigError for one whose axes do not split evenly."""

    def sharding(path: tuple[Any, ...], logical: PartitionSpec, shape: Any) -> NamedSharding:
        spec = mesh_spec(tuple(logical), layout.rules)
        check_divisible("parameter " + jax.tree_util.keystr(path, simple=True, separator="/"), shape.shape, spec,
                        layout.mesh)
        return NamedSharding(layout.mesh, spec)

    return jax.tree_util.tree_map_with_path(
        sharding, logical_specs, shapes, is_leaf=lambda x: isinstance(x, PartitionSpec)
    )


def traced_on(layout: Layout, f: Callable[..., Any]) -> Callable[..., Any]:
    """`f` with `layout` active while it runs: jit it, and its trace lays activations and kernels out on the mesh."""

    @functools.wraps(f)
    def run(*args: Any, **kwargs: Any) -> Any:
        with activate(layout):
            return f(*args, **kwargs)

    return run


def put_batch(batch: dict[str, Any], sharding: NamedSharding) -> dict[str, jax.Array]:
    """The global batch assembled from every process's rows (numpy arrays [batch_size // process_count, ...]) with
    `sharding`; in a single process the rows are the whole batch."""
    return jax.tree.map(lambda rows: jax.make_array_from_process_local_data(sharding, rows), batch)
