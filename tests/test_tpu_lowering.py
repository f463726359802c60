"""TPU readiness without a TPU: the sharded tiny_hybrid train step, with the Mosaic GDN kernels and splash attention
(impl "pallas_tpu"), lowered for the TPU platform on the CPU over a mesh of 8 devices (data=2 x fsdp=2 x tensor=2).

A subprocess (this file run as a script, with XLA_FLAGS=--xla_force_host_platform_device_count=8 so that the CPU
has 8 devices) builds `hybridlm.trainer.TrainProgram` for tiny_hybrid as configured (seq 128, batch 8, float32) on
that mesh, traces `train_step` on `abstract_state()` and a sharded batch, and lowers it with
`lowering_platforms=("tpu",)`. The tests read the StableHLO text it writes (Shardy dialect, `sdy.*`):

- it is an SPMD module over 8 partitions of the mesh slices=1 x data=2 x fsdp=2 x tensor=2;
- the Mosaic kernels are there (`tpu_custom_call`, by kernel name): per GDN layer the forward (`_prep_kernel`,
  `_scan_kernel`) and the backward state scans (`_states_kernel`, `_states_bwd_kernel`), and splash's forward, dkv
  and dq kernels for the attention layer;
- every `tpu_custom_call` runs inside an `sdy.manual_computation` over all four mesh axes (the shard_map of
  `GatedDeltaNet._rule` / `Attention._kernel`): directly in its region, or in a function called only from such
  regions;
- the GDN kernels' manual computations take q, k, v with the sharding [batch axes, -, tensor, -] and the local
  shapes [B / 4, T, H / 2, K or V] (g and beta [B / 4, T, H / 2]), and none of their operands of rank >= 3 is
  replicated over `tensor`: no device receives all heads at the shard_map's boundary;
- the step's inputs and outputs carry the train state's and the batch's shardings (`TrainProgram.state_shardings`,
  `batch_sharding`) as `sdy.sharding`.

The lowered module is not partitioned yet: the collectives are inserted by XLA's partitioner when the step is
compiled, which needs a TPU here. So "GDN's q, k and v are never all-gathered over heads" is checked on the step
compiled for the CPU, on the same mesh, with the kernels swapped for their XLA versions (GDN "chunked", attention
"xla") inside the same shard_maps: the parts XLA partitions (projections, convolutions, norms, the optimizer) are
the same program, only the manual regions' bodies differ. In that compiled HLO no all-gather or all-to-all whose
replica groups span the `tensor` axis belongs to a GDN op (metadata op_name under the `gdn` scope); the FSDP
gathers of GDN weights (groups spanning `fsdp`) are expected. This is a check of XLA's CPU partitioning of the step,
not of the TPU compiler's, which may still move data differently.

The step is traced under `pallas_kernels.target_platform("tpu")`, which makes the kernel entry points accept the
TPU kernels on a CPU host.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEVICES = 8
MESH = {"slices": 1, "data": 2, "fsdp": 2, "tensor": 2}  # the order of hybridlm.partitioning.MESH_AXES
BATCH_AXES = ("slices", "data", "fsdp")
GDN_KERNELS = ("_prep_kernel", "_scan_kernel", "_states_kernel", "_states_bwd_kernel")
SPLASH_KERNELS = (
    "splash_mha_fwd_segmented_residuals",
    "splash_mha_dkv_segmented_no_residuals",
    "splash_mha_dq_segmented_no_residuals",
)


# ---------------------------------------------------------------------------------------------------------------
# The subprocess: build, lower for the TPU, compile the XLA-kernel twin for the CPU, write what the tests read.


def _sdy_sharding(spec, ndim: int) -> str:
    """A PartitionSpec as Shardy prints an argument's dimension shardings: [{"a"}, {"b", "c"}, {}]."""
    dims = []
    for i in range(ndim):
        entry = spec[i] if i < len(spec) else None
        axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        dims.append("{" + ", ".join(f'"{axis}"' for axis in axes) + "}")
    return "[" + ", ".join(dims) + "]"


def _write_artifacts(out: pathlib.Path) -> None:
    import time

    import jax
    import jax.numpy as jnp

    import experiments
    import pallas_kernels
    from hybridlm import config_checks, trainer

    assert jax.device_count() == DEVICES, f"expected {DEVICES} CPU devices, got {jax.devices()}"

    def build(gdn_impl: str, attention_impl: str):
        config = experiments.get_config("tiny_hybrid")
        config.model.gdn.impl, config.model.attention_impl = gdn_impl, attention_impl
        config.mesh.update(**MESH)
        program = trainer.TrainProgram(config, config_checks.validate(config))
        shape = (config.data.batch_size, config.data.seq_len)
        batch = {
            key: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=program.batch_sharding)
            for key in ("inputs", "targets", "segment_ids")
        }
        return config, program, program.abstract_state(), batch

    start = time.perf_counter()
    config, program, state, batch = build("pallas_tpu", "pallas_tpu")
    with pallas_kernels.target_platform("tpu"):
        lowered = program.train_step.trace(state, batch).lower(lowering_platforms=("tpu",))
    (out / "tpu.mlir").write_text(lowered.as_text())
    lowered_s = time.perf_counter() - start

    start = time.perf_counter()
    _, cpu_program, cpu_state, cpu_batch = build("chunked", "xla")
    compiled = cpu_program.train_step.trace(cpu_state, cpu_batch).lower().compile()
    (out / "cpu.hlo").write_text(compiled.as_text())
    compiled_s = time.perf_counter() - start

    gdn, pattern = config.model.gdn, config.model.layer_pattern
    layers = [pattern[i % len(pattern)] for i in range(config.model.num_layers)]
    assert tuple(program.mesh.axis_names) == tuple(MESH) and dict(program.mesh.shape) == MESH
    facts = {
        "batch": config.data.batch_size,
        "seq": config.data.seq_len,
        "gdn_layers": layers.count("gdn"),
        "attention_layers": layers.count("attn"),
        "gdn_heads": gdn.num_value_heads,
        "key_dim": gdn.key_head_dim,
        "value_dim": gdn.value_head_dim,
        # Partition p of the module is mesh.devices.flat[p]: the jit's device assignment is the mesh's flat order.
        "mesh_shape": list(program.mesh.devices.shape),
        "arg_shardings": [_sdy_sharding(x.sharding.spec, x.ndim) for x in jax.tree.leaves((state, batch))],
        "state_shardings": {
            "result[0]" + jax.tree_util.keystr(path): _sdy_sharding(x.sharding.spec, x.ndim)
            for path, x in jax.tree_util.tree_leaves_with_path(state)
        },
        "seconds": {"lower_tpu": round(lowered_s, 1), "compile_cpu": round(compiled_s, 1)},
    }
    (out / "facts.json").write_text(json.dumps(facts, indent=1))


# ---------------------------------------------------------------------------------------------------------------
# Reading the lowered StableHLO text.


class Module:
    """The lines of a lowered module, its functions, its manual computations and the Mosaic calls in them."""

    def __init__(self, text: str):
        self.text = text
        self.lines = text.splitlines()
        self.functions: dict[str, tuple[int, int]] = {}  # name -> (first line, last line)
        self.manual: list[dict] = []  # {"span", "manual_axes", "operands": [(sharding, local type)]}
        for i, line in enumerate(self.lines):
            found = re.match(r"  func\.func (?:public |private )?@([\w.$-]+)\(", line)
            if found:
                self.functions[found[1]] = (i, self._close(i, 2))
            if "sdy.manual_computation(" in line:
                indent = len(line) - len(line.lstrip())
                axes = re.search(r" manual_axes=\{([^}]*)\}", line)
                head, _, body = line.partition(" manual_axes=")
                inputs = head.split(" in_shardings=[", 1)[1].split(" out_shardings=")[0]
                shardings = re.findall(r"<@mesh, (\[[^>]*\])>", inputs)
                locals_ = re.findall(r"%\w+: (tensor<[^>]*>)", body)
                self.manual.append(
                    {
                        "span": (i, self._close(i, indent)),
                        "manual_axes": set(re.findall(r'"(\w+)"', axes[1])) if axes else set(),
                        "operands": list(zip(shardings, locals_, strict=True)),
                    }
                )
        self.calls = collections.defaultdict(list)  # callee -> lines that call it
        for i, line in enumerate(self.lines):
            for callee in re.findall(r"\bcall @([\w.$-]+)\(", line):
                self.calls[callee].append(i)
        self.kernels = [  # (line, kernel name) of every Mosaic call
            (i, self._kernel_name(line)) for i, line in enumerate(self.lines) if "@tpu_custom_call(" in line
        ]

    def _close(self, start: int, indent: int) -> int:
        """The line closing the region opened at `start` (the next line at `indent` starting with '}')."""
        for j in range(start + 1, len(self.lines)):
            line = self.lines[j]
            if line.startswith(" " * indent + "}"):
                return j
        raise AssertionError(f"no closing line for line {start}: {self.lines[start][:200]}")

    @staticmethod
    def _kernel_name(line: str) -> str:
        names = re.findall(r'kernel_name = \\?"(\w+)\\?"', line)
        assert len(names) == 1, f"a tpu_custom_call with kernel names {names}: {line[:300]}"
        return names[0]

    def function_of(self, line: int) -> str | None:
        return next((name for name, (a, b) in self.functions.items() if a <= line <= b), None)

    def in_full_manual(self, line: int, seen: frozenset = frozenset()) -> bool:
        """Whether `line` runs only inside manual computations over all mesh axes: it lies in such a region, or in a
        private function every call of which does."""
        if any(a < line < b and m["manual_axes"] == set(MESH) for m in self.manual for a, b in [m["span"]]):
            return True
        function = self.function_of(line)
        if function is None or function == "main" or function in seen or not self.calls[function]:
            return False
        return all(self.in_full_manual(call, seen | {function}) for call in self.calls[function])

    def reachable_kernels(self, span: tuple[int, int]) -> list[str]:
        """The kernel names run by the lines of `span`, through the functions they call."""
        names, todo, done = [], [span], set()
        while todo:
            a, b = todo.pop()
            names += [name for line, name in self.kernels if a < line < b]
            for line in range(a + 1, b):
                for callee in re.findall(r"\bcall @([\w.$-]+)\(", self.lines[line]):
                    if callee not in done:
                        done.add(callee)
                        todo.append(self.functions[callee])
        return names


def _sharding(*dims: tuple[str, ...]) -> str:
    return _sdy_sharding(tuple(dims), len(dims))


def _local(*shape: int) -> str:
    """The MLIR type of a float32 array of `shape`."""
    return "tensor<" + "x".join(map(str, shape)) + "xf32>"


def _rank(mlir_type: str) -> int:
    return len(re.findall(r"\d+x", mlir_type))


# ---------------------------------------------------------------------------------------------------------------
# Reading the compiled HLO text (CPU, partitioned).


def _replica_groups(attrs: str) -> list[list[int]]:
    """The device groups of a collective's replica_groups: explicit ({{0,1},{2,3}}), iota ([4,2]<=[2,4]T(1,0)) or
    mesh axes (mesh['axis_0'=4,'axis_1'=2] {'axis_1'}, device_ids=([2,4]T(1,0)))."""
    explicit = re.search(r"replica_groups=\{(\{[\d,]*\}(?:,\{[\d,]*\})*)\}", attrs)
    if explicit:
        return [[int(d) for d in group.split(",") if d] for group in re.findall(r"\{([\d,]*)\}", explicit[1])]
    iota = re.search(r"replica_groups=\[(\d+),(\d+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", attrs)
    if iota:
        ids = np.arange(int(iota[1]) * int(iota[2])).reshape([int(d) for d in iota[3].split(",")])
        if iota[4]:
            ids = ids.transpose([int(p) for p in iota[4].split(",")])
        return ids.reshape(int(iota[1]), int(iota[2])).tolist()
    mesh = re.search(
        r"replica_groups=mesh\[([^\]]*)\](?: \{([^}]*)\})?(?:, device_ids=\(\[([\d,]+)\](?:T\(([\d,]+)\))?\))?", attrs
    )
    if mesh:
        names = re.findall(r"'(\w+)'=\d+", mesh[1])
        shape = [int(s) for s in re.findall(r"'\w+'=(\d+)", mesh[1])]
        ids = np.arange(int(np.prod(shape)))
        if mesh[3]:
            ids = ids.reshape([int(d) for d in mesh[3].split(",")])
            ids = ids.transpose([int(p) for p in mesh[4].split(",")]) if mesh[4] else ids
        ids = ids.reshape(shape)
        spanned = [names.index(a) for a in re.findall(r"'(\w+)'", mesh[2])] if mesh[2] else list(range(len(shape)))
        kept = [d for d in range(len(shape)) if d not in spanned]
        ids = ids.transpose(kept + spanned)
        return ids.reshape(-1, int(np.prod([shape[d] for d in spanned]))).tolist()
    raise AssertionError(f"cannot read the replica groups of: {attrs[:300]}")


def _collectives(hlo: str, kinds: tuple[str, ...]) -> list[dict]:
    """Each collective of `kinds` in the compiled HLO: its kind, result type, device groups and op_name."""
    found = []
    pattern = r"^\s*(?:ROOT )?%[\w.-]+ = (.+?) (" + "|".join(kinds) + r")(?:-start)?\((.*)$"
    for match in re.finditer(pattern, hlo, re.M):
        result, kind, attrs = match.groups()
        op_name = re.search(r'op_name="([^"]*)"', attrs)
        found.append(
            {"kind": kind, "result": result, "groups": _replica_groups(attrs), "op_name": op_name[1] if op_name else ""}
        )
    return found


def _spanned_axes(groups: list[list[int]], mesh_shape: list[int]) -> set[str]:
    """The mesh axes along which the devices of some group differ (partition p = mesh position p, row-major)."""
    spanned = set()
    for group in groups:
        coords = np.array([np.unravel_index(p, mesh_shape) for p in group])
        spanned |= {axis for axis, column in zip(MESH, coords.T) if len(set(column)) > 1}
    return spanned


# ---------------------------------------------------------------------------------------------------------------
# The tests.


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("tpu_lowering")
    flags = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={DEVICES}"
    env = {**os.environ, "XLA_FLAGS": flags.strip(), "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, __file__, str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-6000:]
    return {
        "module": Module((out / "tpu.mlir").read_text()),
        "hlo": (out / "cpu.hlo").read_text(),
        "facts": json.loads((out / "facts.json").read_text()),
    }


def test_module_is_spmd_over_the_8_device_mesh(artifacts):
    text = artifacts["module"].text
    assert "mhlo.num_partitions = 8 : i32" in text and "mhlo.num_replicas = 1 : i32" in text
    assert 'sdy.mesh @mesh = <["slices"=1, "data"=2, "fsdp"=2, "tensor"=2]>' in text


def test_mosaic_gdn_and_splash_kernels_are_lowered(artifacts):
    """Per GDN layer its forward kernels and its backward state scans; splash's forward, dkv and dq kernels for the
    attention layer (documents on: the segmented variants)."""
    facts = artifacts["facts"]
    counts = collections.Counter(name for _, name in artifacts["module"].kernels)
    expected = {name: facts["gdn_layers"] for name in GDN_KERNELS}
    expected |= {name: facts["attention_layers"] for name in SPLASH_KERNELS}
    assert dict(counts) == expected


def test_kernels_run_inside_shard_map_over_all_mesh_axes(artifacts):
    module = artifacts["module"]
    assert module.kernels
    outside = [(module.function_of(line), name) for line, name in module.kernels if not module.in_full_manual(line)]
    assert not outside, f"Mosaic calls outside a manual computation over {tuple(MESH)}: {outside}"


def test_gdn_kernels_take_q_k_v_split_over_heads(artifacts):
    """At each GDN kernel's shard_map (forward and backward), q, k and v enter split over batch and heads (each
    device gets B / 4 rows and H / 2 heads), and no operand of rank >= 3 enters replicated over `tensor`."""
    module, facts = artifacts["module"], artifacts["facts"]
    rows = facts["batch"] // (MESH["slices"] * MESH["data"] * MESH["fsdp"])
    heads = facts["gdn_heads"] // MESH["tensor"]
    split_heads, split_gates = _sharding(BATCH_AXES, (), ("tensor",), ()), _sharding(BATCH_AXES, (), ("tensor",))
    gdn = [m for m in module.manual if set(GDN_KERNELS) & set(module.reachable_kernels(m["span"]))]
    assert len(gdn) == 2 * facts["gdn_layers"]  # each layer's forward and backward
    for manual in gdn:
        operands = manual["operands"]
        split = collections.Counter(local for sharding, local in operands if sharding == split_heads)
        assert split[_local(rows, facts["seq"], heads, facts["key_dim"])] >= 2, operands  # q, k
        assert split[_local(rows, facts["seq"], heads, facts["value_dim"])] >= 1, operands  # v
        gates = collections.Counter(local for sharding, local in operands if sharding == split_gates)
        assert gates[_local(rows, facts["seq"], heads)] == 2, operands  # g, beta
        replicated = [(s, local) for s, local in operands if _rank(local) >= 3 and '"tensor"' not in s]
        assert not replicated, f"operands of a GDN kernel not split over tensor: {replicated}"


def test_inputs_and_outputs_carry_the_sharded_layouts(artifacts):
    """The step's arguments (train state, then batch) and its new train state have TrainProgram's shardings."""
    module, facts = artifacts["module"], artifacts["facts"]
    main = module.lines[module.functions["main"][0]]
    signature, _, results = main.partition(") -> (")
    args = re.findall(r"%arg\d+: tensor<[^>]*> \{sdy\.sharding = #sdy\.sharding<@mesh, (\[[^>]*\])>", signature)
    assert args == facts["arg_shardings"]
    named = r'jax\.result_info = "([^"]*)", sdy\.sharding = #sdy\.sharding<@mesh, (\[[^>]*\])>'
    outputs = dict(re.findall(named, results))
    assert {name: outputs.get(name) for name in facts["state_shardings"]} == facts["state_shardings"]
    # Spelled out for one GDN layer: projections split d_model over fsdp and heads over tensor.
    gdn = "result[0]['params']['groups']['blocks'][0]['gdn']"
    fsdp_then_heads, heads_then_fsdp = _sharding((), ("fsdp",), ("tensor",)), _sharding((), ("tensor",), ("fsdp",))
    for name in ("q_proj", "k_proj", "v_proj"):
        assert outputs[f"{gdn}['{name}']['kernel']"] == fsdp_then_heads
    assert outputs[f"{gdn}['o_proj']['kernel']"] == heads_then_fsdp


def test_gdn_q_k_v_are_never_gathered_over_heads_when_partitioned(artifacts):
    """In the step compiled for the CPU (same mesh and shard_maps, XLA kernels inside them), no all-gather or
    all-to-all over `tensor` belongs to a GDN op, and GDN's all-gathers are FSDP weight gathers (over `fsdp` only).
    (Its reductions over `tensor`, all-reduces of the head-split projections back to d_model, are not gathers.)"""
    facts = artifacts["facts"]
    collectives = _collectives(artifacts["hlo"], ("all-gather", "all-to-all"))
    gdn = [c for c in collectives if re.search(r"(^|[/:(])gdn(/|$)", c["op_name"])]
    assert gdn, "no GDN collectives found: the op_name scopes may have changed"
    over_heads = [c for c in gdn if "tensor" in _spanned_axes(c["groups"], facts["mesh_shape"])]
    assert not over_heads, [(c["kind"], c["result"], c["op_name"]) for c in over_heads]
    assert all(_spanned_axes(c["groups"], facts["mesh_shape"]) == {"fsdp"} for c in gdn if c["kind"] == "all-gather")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # the experiment registry, as a checkout holds it
    _write_artifacts(pathlib.Path(sys.argv[1]))
