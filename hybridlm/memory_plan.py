"""How much memory a run needs on each device, before launching it: `python -m experiments --show=NAME --plan`.

The train state (parameters, AdamW's two float32 moments per parameter and the step counters) and the gradients are
counted exactly from the abstract state's shapes and dtypes, each leaf's PartitionSpec (hybridlm.partitioning's
rules) and the mesh's axis sizes for any device count; nothing is allocated and no device is needed. Activations and
the other temporaries of the train step depend on the compiler, so they come from XLA's own memory analysis of the
compiled step (`compiled.memory_analysis()`), which needs the planned devices: the step is compiled only when the
devices present are the planned kind and count (on a CPU-only machine, the CPU's compile of the step, labelled so).
Otherwise the plan says they were not measured and gives a floor: the layer groups' inputs the backward keeps under
every remat policy.

The verdict compares the total per device with the device's memory: `memory_stats()["bytes_limit"]` of a device
present of the planned kind, else DEVICE_MEMORY's size of the kind (on GPUs times the fraction JAX's allocator takes,
XLA_PYTHON_CLIENT_MEM_FRACTION, default 0.75).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec
from ml_collections import config_dict

from hybridlm import partitioning, train_state
from hybridlm.model import ModelConfig
from hybridlm.model.config import ConfigError
from hybridlm.model.lm import ACTIVATIONS
from hybridlm.optim import make_optimizer

_MIB, _GIB = 2**20, 2**30

# Memory of one JAX device, by the start of `jax.Device.device_kind` (the longest matching prefix wins). GPUs: the
# total nvidia-smi reports (NVIDIA's nominal sizes in parentheses); TPUs: the chip's HBM (v4 and v5p are one device per
# chip, "TPU v5 lite" is v5e, "TPU v5" v5p, "TPU v6 lite" v6e).
DEVICE_MEMORY: dict[str, int] = {
    "NVIDIA H200": 143_771 * _MIB,  # 141 GB
    "NVIDIA H100": 81_559 * _MIB,  # 80 GB
    "NVIDIA A100": 81_920 * _MIB,  # 80 GB
    "NVIDIA A100-SXM4-40GB": 40_960 * _MIB,
    "NVIDIA A100-PCIE-40GB": 40_960 * _MIB,
    "NVIDIA B200": 183_359 * _MIB,  # ~180 GB
    "TPU v4": 32 * _GIB,
    "TPU v4 lite": 8 * _GIB,
    "TPU v5 lite": 16 * _GIB,
    "TPU v5": 95 * _GIB,
    "TPU v6 lite": 32 * _GIB,
}
GPU_MEM_FRACTION = 0.75  # JAX's GPU allocator takes this much of the card unless XLA_PYTHON_CLIENT_MEM_FRACTION is set
_FRACTION_VARIABLES = ("XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_CLIENT_MEM_FRACTION")

PARAMETERS, GRADIENTS, OPTIMIZER = "parameters", "gradients", "optimizer_state"


@dataclasses.dataclass(frozen=True)
class StateLeaf:
    """One array of the train state: where it is ("params/embed/embedding"), its shape, dtype and mesh spec."""

    path: str
    shape: tuple[int, ...]
    dtype: jnp.dtype
    spec: PartitionSpec

    def bytes_per_device(self, mesh_sizes: Mapping[str, int]) -> int:
        """The bytes of this array's shard on one device of a mesh with these axis sizes."""
        shard = 1
        for i, dim in enumerate(self.shape):
            entry = self.spec[i] if i < len(self.spec) else None
            axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
            shard *= -(-dim // math.prod(mesh_sizes[axis] for axis in axes))
        return shard * jnp.dtype(self.dtype).itemsize

    def splits_evenly(self, mesh_sizes: Mapping[str, int]) -> bool:
        """Whether every axis divides evenly over its mesh axes (the trainer refuses a mesh where one does not)."""
        for i, dim in enumerate(self.shape):
            entry = self.spec[i] if i < len(self.spec) else None
            axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
            if dim % math.prod(mesh_sizes[axis] for axis in axes):
                return False
        return True


@dataclasses.dataclass(frozen=True)
class StepMemory:
    """XLA's memory analysis of the compiled train step, bytes per device."""

    arguments: int  # the train state and the batch
    outputs: int  # the new state and the metrics
    aliased: int  # outputs written over donated arguments (the state)
    temporaries: int  # activations kept for the backward, gradients, workspace
    platform: str  # where it was compiled: "cpu", "gpu", "tpu"

    @property
    def peak(self) -> int:
        return self.arguments + self.outputs - self.aliased + self.temporaries


@dataclasses.dataclass(frozen=True)
class DeviceMemory:
    """What one device offers XLA, and where the number comes from."""

    usable: int
    source: str
    gpu_fraction: float | None = None  # the share of a GPU that JAX's allocator takes, when `usable` assumes one


@dataclasses.dataclass(frozen=True)
class Plan:
    """Bytes per device of one run on `device_count` devices of `device_kind` (see the module docstring)."""

    name: str
    device_kind: str
    device_count: int
    mesh: dict[str, int]
    batch_size: int
    rows_per_device: int
    seq_len: int
    remat: str
    scan_layers: bool
    param_count: int
    param_dtype: str
    state: dict[str, int]  # PARAMETERS, GRADIENTS, OPTIMIZER
    kept_inputs: int  # the layer groups' inputs the backward keeps under every remat policy (a floor on activations)
    num_groups: int
    step: StepMemory | None  # None: not measured
    not_measured: str | None  # why not, and how to measure
    memory: DeviceMemory | None  # None: unknown device kind
    advice: tuple[str, ...]

    @property
    def state_bytes(self) -> int:
        """Parameters and optimizer state: what stays on the device between steps."""
        return self.state[PARAMETERS] + self.state[OPTIMIZER]

    @property
    def total(self) -> int:
        """The compiler's peak when measured, else a floor: state, gradients and the kept layer-group inputs."""
        if self.step is not None:
            return self.step.peak
        return self.state_bytes + self.state[GRADIENTS] + self.kept_inputs

    @property
    def fits(self) -> bool | None:
        """True or False; None when the device's memory is unknown, or the floor fits and nothing was measured."""
        if self.memory is None:
            return None
        if self.total > self.memory.usable:
            return False
        return True if self.step is not None else None


def abstract_state(config: config_dict.ConfigDict, model_config: ModelConfig, device_count: int) -> Any:
    """The train state as the trainer lays it out on `config.mesh` over `device_count` devices (which need not be
    present), as ShapeDtypeStructs; raises ConfigError for a mesh that does not fit the device count or a parameter
    that does not split evenly."""
    optimizer = make_optimizer(config.optim, config.train.num_steps)
    layout = partitioning.abstract_layout(config.mesh, device_count)
    return train_state.abstract_state(model_config, optimizer, layout)


def state_leaves(state: Any) -> list[StateLeaf]:
    """The leaves of an abstract train state (ShapeDtypeStructs with NamedShardings, e.g. `abstract_state` or
    TrainProgram.abstract_state())."""
    leaves = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        sharding = leaf.sharding
        spec = sharding.spec if isinstance(sharding, NamedSharding) else PartitionSpec()
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        leaves.append(StateLeaf(name, tuple(leaf.shape), jnp.dtype(leaf.dtype), spec))
    return leaves


def state_bytes(leaves: list[StateLeaf], mesh_sizes: Mapping[str, int]) -> dict[str, int]:
    """Bytes per device of the parameters, their gradients (the same shapes, dtypes and layout) and the optimizer
    state (AdamW's moments and every counter, the step's included)."""
    params = sum(leaf.bytes_per_device(mesh_sizes) for leaf in leaves if leaf.path.startswith("params/"))
    other = sum(leaf.bytes_per_device(mesh_sizes) for leaf in leaves if not leaf.path.startswith("params/"))
    return {PARAMETERS: params, GRADIENTS: params, OPTIMIZER: other}


def state_bytes_per_device(config: config_dict.ConfigDict, device_count: int) -> dict[str, int]:
    """{"parameters", "gradients", "optimizer_state"}: bytes per device of a run of `config` on `device_count`
    devices laid out by `config.mesh`, from shapes and sharding rules alone (no device needed)."""
    model_config = _model_config(config)
    sizes = partitioning.mesh_shape(config.mesh, device_count)
    return state_bytes(state_leaves(abstract_state(config, model_config, device_count)), sizes)


def device_memory(device_kind: str) -> DeviceMemory | None:
    """The memory XLA may use on one device of `device_kind`: a present device's `memory_stats()["bytes_limit"]`
    when this machine has that kind, else DEVICE_MEMORY (times the GPU allocator's fraction on NVIDIA GPUs); for
    "cpu", this machine's RAM shared by its CPU devices; None for a kind the table does not know."""
    present = jax.devices()[0]
    if present.device_kind == device_kind:
        stats = present.memory_stats() or {}
        if stats.get("bytes_limit"):
            return DeviceMemory(int(stats["bytes_limit"]), f"memory_stats() bytes_limit of {present}")
    matches = [kind for kind in DEVICE_MEMORY if device_kind.startswith(kind)]
    if matches:
        size = DEVICE_MEMORY[max(matches, key=len)]
        if not device_kind.startswith("NVIDIA"):
            return DeviceMemory(size, f"{device_kind} HBM")
        fraction, variable = _gpu_fraction()
        return DeviceMemory(
            int(size * fraction), f"{fraction:g} x {_human(size)} ({device_kind}; {variable}={fraction:g})", fraction
        )
    if device_kind.lower() == "cpu":
        host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        shared = jax.local_device_count() if present.platform == "cpu" else 1
        return DeviceMemory(host // shared, "this machine's RAM" + (f" / {shared} devices" if shared > 1 else ""))
    return None


def measure_step(config: config_dict.ConfigDict, model_config: ModelConfig) -> tuple[StepMemory, list[StateLeaf]]:
    """Compiles the train step on the devices present (hybridlm.trainer.TrainProgram, nothing allocated) and returns
    XLA's memory analysis of it with the leaves of the trainer's own abstract state."""
    from hybridlm.trainer import TrainProgram  # Imported here: planning without a compile does not need it.

    program = TrainProgram(config, model_config)
    shape = (config.data.batch_size, config.data.seq_len)
    batch = {
        key: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=program.batch_sharding)
        for key in ("inputs", "targets", "segment_ids")
    }
    state = program.abstract_state()
    analysis = program.train_step.lower(state, batch).compile().memory_analysis()
    step = StepMemory(
        arguments=int(analysis.argument_size_in_bytes),
        outputs=int(analysis.output_size_in_bytes),
        aliased=int(analysis.alias_size_in_bytes),
        temporaries=int(analysis.temp_size_in_bytes),
        platform=jax.devices()[0].platform,
    )
    return step, state_leaves(state)


def plan(
    config: config_dict.ConfigDict, device_kind: str, device_count: int, name: str | None = None, measure: bool = True
) -> Plan:
    """The memory plan of a run of `config` on `device_count` devices of `device_kind`. The step is compiled (and its
    activations measured) only when `measure` and this machine's devices are that kind and count."""
    model_config = _model_config(config)
    sizes = partitioning.mesh_shape(config.mesh, device_count)
    batch_parts = math.prod(sizes[axis] for axis in partitioning.BATCH_AXES)
    batch_size, seq_len = int(config.data.batch_size), int(config.data.seq_len)
    if batch_size % batch_parts:
        raise ConfigError(
            f"config.data.batch_size={batch_size} does not split over the batch axes slices x data x fsdp "
            f"({batch_parts} devices); make it a multiple of {batch_parts}"
        )
    rows = batch_size // batch_parts
    leaves = state_leaves(abstract_state(config, model_config, device_count))
    present = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
    step, not_measured = None, None
    if not measure:
        not_measured = "planned without compiling the step"
    elif jax.device_count() != device_count or jax.devices()[0].device_kind != device_kind:
        not_measured = (
            f"the devices here are {present}; run this command on {device_count} x {device_kind} to measure them"
        )
    else:
        step, leaves = measure_step(config, model_config)
    rules = partitioning.rules_from_config(config.mesh.get("rules"))
    kept_inputs = StateLeaf(  # the scan over layer groups keeps each group's input [B, T, d_model] for the backward
        "kept layer-group inputs",
        (model_config.num_groups, batch_size, seq_len, model_config.d_model),
        model_config.compute_dtype,
        PartitionSpec(None, *partitioning.mesh_spec(ACTIVATIONS, rules)),
    )
    params = [leaf for leaf in leaves if leaf.path.startswith("params/")]
    result = Plan(
        name=name or "config",
        device_kind=device_kind,
        device_count=device_count,
        mesh=sizes,
        batch_size=batch_size,
        rows_per_device=rows,
        seq_len=seq_len,
        remat=model_config.remat,
        scan_layers=model_config.scan_layers,
        param_count=sum(math.prod(leaf.shape) for leaf in params),
        param_dtype=str(model_config.params_dtype),
        state=state_bytes(leaves, sizes),
        kept_inputs=kept_inputs.bytes_per_device(sizes),
        num_groups=model_config.num_groups,
        step=step,
        not_measured=not_measured,
        memory=device_memory(device_kind),
        advice=(),
    )
    return dataclasses.replace(result, advice=_advice(result, leaves))


def format_plan(plan: Plan) -> str:
    """The plan as one screen of text: bytes per device, the device's memory, the verdict and what to change."""
    mesh = " ".join(f"{axis}={size}" for axis, size in plan.mesh.items())
    state = plan.state
    lines = [
        f"memory plan: {plan.name} on {plan.device_count} x {plan.device_kind} (mesh {mesh})",
        f"batch {plan.batch_size}: {plan.rows_per_device} row{'s' * (plan.rows_per_device != 1)} x {plan.seq_len} "
        f"tokens per device; remat {plan.remat}; {_count(plan.param_count)} {plan.param_dtype} parameters",
        "per device:",
        _row("parameters", state[PARAMETERS], "split by config.mesh and its rules"),
        _row("optimizer state", state[OPTIMIZER], "AdamW's 2 moments per parameter, and counters"),
        _row("  state", plan.state_bytes, "parameters + optimizer state, kept between steps"),
    ]
    if plan.step is not None:
        step = plan.step
        where = f"this {step.platform.upper()}"
        lines += [
            _row("gradients", state[GRADIENTS], "like the parameters; inside the temporaries"),
            _row("temporaries", step.temporaries, f"activations, gradients, workspace: XLA's compile for {where}"),
            _row("total", step.peak, f"arguments {_human(step.arguments)} + outputs {_human(step.outputs)} - "
                 f"donated {_human(step.aliased)} + temporaries"),
        ]
        if step.platform == "cpu":
            lines.append("  (measured on the CPU: a GPU or TPU compiles the step differently; run the plan there)")
    else:
        lines += [
            _row("gradients", state[GRADIENTS], "like the parameters"),
            _row("activations", plan.kept_inputs, f"not measured; at least the {plan.num_groups} layer groups' "
                 "inputs the backward keeps", prefix=">="),
            _row("total", plan.total, "state + gradients + that floor", prefix=">="),
        ]
    if plan.memory is None:
        lines.append(f"device memory: unknown for {plan.device_kind!r}; known: {', '.join(DEVICE_MEMORY)}, cpu")
    else:
        lines.append(_row("device memory", plan.memory.usable, plan.memory.source, indent=""))
    lines.append(_verdict(plan))
    if plan.not_measured:
        lines.append(f"activations not measured: {plan.not_measured}")
    if plan.advice:
        lines.append("to fit:" if plan.fits is False else "if it does not fit:")
        lines += [f"  - {advice}" for advice in plan.advice]
    return "\n".join(lines)


def _verdict(plan: Plan) -> str:
    if plan.memory is None:
        return "fits: unknown (no memory size for this device kind)"
    usable = plan.memory.usable
    if plan.fits:
        return f"fits: yes, {_human(usable - plan.total)} to spare"
    state_and_grads = plan.state_bytes + plan.state[GRADIENTS]
    if plan.fits is None:
        return (
            f"fits: maybe: the floor takes {_human(plan.total)} of {_human(usable)}; the rest of the activations "
            "is not measured"
        )
    if plan.step is None and state_and_grads > usable:
        return (
            f"fits: NO: parameters, gradients and AdamW state alone take {_human(state_and_grads)} of "
            f"{_human(usable)}"
        )
    return f"fits: NO: needs {'at least ' if plan.step is None else ''}{_human(plan.total)} of {_human(usable)}"


def _advice(plan: Plan, leaves: list[StateLeaf]) -> tuple[str, ...]:
    """What to change when the plan does not (or may not) fit."""
    if plan.fits is True or plan.memory is None:
        return ()
    advice = []
    if plan.remat != "full":
        advice.append(
            f"--config.model.remat=full (now {plan.remat}): layer groups keep only their inputs for the backward"
        )
    if not plan.scan_layers:
        advice.append(
            "--config.model.scan_layers=true (now false): the layer groups in one loop take less memory than unrolled"
        )
    if plan.rows_per_device > 1:
        parts = plan.batch_size // plan.rows_per_device
        half = parts * (plan.rows_per_device // 2)
        advice.append(
            f"a smaller batch, --config.data.batch_size={half}: activations scale with the rows per device (now "
            f"{plan.rows_per_device})"
        )
    sizes = plan.mesh
    state_and_grads = plan.state_bytes + plan.state[GRADIENTS]
    if sizes["data"] > 1:
        wider = {**sizes, "data": 1, "fsdp": sizes["fsdp"] * sizes["data"]}
        if all(leaf.splits_evenly(wider) for leaf in leaves):
            bytes_ = state_bytes(leaves, wider)
            advice.append(
                f"more fsdp, --config.mesh.data=1 --config.mesh.fsdp={wider['fsdp']}: state + gradients "
                f"{_human(sum(bytes_.values()))} per device (now {_human(state_and_grads)})"
            )
    else:
        for factor in (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024):
            wider = {**sizes, "fsdp": sizes["fsdp"] * factor}
            if not all(leaf.splits_evenly(wider) for leaf in leaves):
                continue
            bytes_ = sum(state_bytes(leaves, wider).values())
            if bytes_ <= plan.memory.usable / 2 or factor == 1024:
                advice.append(
                    f"more fsdp, --devices={plan.device_count * factor} --config.mesh.fsdp={wider['fsdp']}: "
                    f"state + gradients {_human(bytes_)} per device (now {_human(state_and_grads)}; 1/fsdp)"
                )
                break
    advice.append(
        "tensor parallelism, --config.mesh.tensor=T: splits heads, MLP width and vocabulary (weights and "
        "activations) T ways"
    )
    fraction = plan.memory.gpu_fraction
    if fraction is not None and fraction < 0.95:
        advice.append(f"{_gpu_fraction()[1]}=0.95 (now {fraction:g}): lets XLA use more of the card")
    return tuple(advice)


def _gpu_fraction() -> tuple[float, str]:
    """The fraction of a GPU JAX's allocator takes, and the variable that sets it."""
    for variable in _FRACTION_VARIABLES:
        if os.environ.get(variable):
            return float(os.environ[variable]), variable
    return GPU_MEM_FRACTION, _FRACTION_VARIABLES[0]


def _model_config(config: config_dict.ConfigDict) -> ModelConfig:
    try:
        return ModelConfig.from_config(config.model)
    except TypeError as e:
        raise ConfigError(f"config.model does not describe a model: {e}") from None


def _row(label: str, size: int, note: str, prefix: str = "", indent: str = "  ") -> str:
    return f"{indent}{label:<{18 - len(indent)}}{prefix:>3}{_human(size):>10}   {note}"


def _human(size: float) -> str:
    """Bytes in decimal units (GB = 1e9 bytes)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(size) >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def _count(count: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f}{unit}"
    return str(count)
