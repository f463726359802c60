"""Where one train step's (or decode step's) accelerator time goes, by kind of kernel and by model region, from the
JAX profiler.

Run from the repository root (on a GPU; the CPU runs it too, with XLA's ops as the "kernels"):

    python tools/profile_step.py --config=olmo_hybrid_7b --batch 4 --seq 8192 --steps 3 --top 20
    python tools/profile_step.py --config=olmo_hybrid_7b --batch 4 --seq 8192 --write BENCHMARKS.md
    python tools/profile_step.py --config=olmo_hybrid_7b --decode --batch 2 --seq 256 --steps 10 --top 30

--config, its overrides, --batch (one size), --seq and --warmup work as in bench_train.py. With --decode the step is the
model's one-token decode step (`HybridLM.decode` and the greedy next token, as `hybridlm.generate` runs it) with random
bfloat16 weights: --batch rows, a cache of --seq tokens, the first step at position --seq // 2 (the cache's contents do
not change the work); each step waits for the last, so the wall time holds the host's dispatch. The step is compiled
without XLA's command buffers (CUDA graphs: with them, every kernel's trace event names its command buffer rather than
its HLO instruction, as seen with jax 0.11.2 on an H200; the kernels are the same, launched one by one), run --warmup
times, then traced with jax.profiler over --steps steps. The device events of the trace are the complete events of its
"/device:GPU" processes (kernels, copies and memsets on the GPU's streams); a CPU trace has no device process, and there
they are the events of the ops XLA ran on host threads (those with an "hlo_op" arg). Each event counts its own duration:
one nested in another on the same thread (an op in a CPU while loop's body) is taken out of the outer one's time;
consecutive kernels of a stream that overlap by a fraction of a microsecond keep theirs. Times are per step and device
(summed over the local GPUs, divided by their number).

Each event is matched to the HLO instruction that launched it: the first of its "hlo_op" arg, its "long_name" arg
and its name that names an instruction of the compiled step (`compiled.as_text()`). The instruction's op_name
metadata (for one without, that of its fused computation's root or other instructions, or else that of the
instruction calling the computation it is in, e.g. a while loop) gives

- its model region: the innermost of the model's `jax.named_scope` regions (REGIONS) on the op_name's path, so
  gdn/gdn_conv is gdn_conv and gdn's projections are gdn; "other (embedding, casts, glue)" when none is;
- whether it is backward: "transpose(" in the op_name, i.e. the autodiff backward, rematerialised forward ops
  included. A custom VJP that forms its gradients in the forward pass (the chunked LM-head loss) counts as forward.

Its kind, the first rule that matches: "GDN kernel" (our Pallas kernels, named gdn_*), "attention kernel" (our
Pallas flash_* kernels, cuDNN's fused attention (its kernels named *fmha*, *sdpa* or *flash*, or a __cudnn$fmha
custom call), splash attention), "matmul" (cuBLAS, cuBLASLt and CUTLASS kernels (*gemm*, *xmma*, *nvjet*,
*cutlass*), or an instruction that is a dot or convolution, a cuBLAS call, or a fusion holding one, as XLA's Triton
GEMM fusions and the CPU's dot fusions do), "communication" (NCCL kernels, collective ops), then by region:
"short convolution" (gdn_conv), "optimizer", "normalisation" (norm) and "element-wise / other fusions" for the
rest of the step's instructions; "other" for events matched to no instruction. So a matmul in the optimizer is a
matmul, and the region table says where it ran.

The step's wall time (host clock over the traced steps, profiler on) is printed against its summed device time,
the difference being idle time (without CUDA graphs it includes launch gaps that graphs would hide); where
streams or CPU threads overlap, the sum exceeds the wall time. A warning gives the share of device time matched to
no instruction: on a GPU that means the trace's args were not understood. Events of other programs (by their
"hlo_module" arg) are left out.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Hashable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the other tools

import train_setup  # noqa: E402  (first: it sets XLA's memory fraction before jax is imported)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from flax import nnx  # noqa: E402
from ml_collections import config_dict  # noqa: E402

from hybridlm.model import abstract_model  # noqa: E402

TOP = flags.DEFINE_integer("top", 0, "also list the N kernels that take the most time")
DECODE = flags.DEFINE_bool("decode", False, "profile the decode step (--batch rows, a cache of --seq tokens)")

DEFAULT_STEPS = 3
# XLA compiler options of the profiled step: no command buffers (CUDA graphs), whose kernels' events all name the
# command buffer (hlo_op "command_buffer_N") instead of the instruction that launched them.
NO_COMMAND_BUFFERS = {"xla_gpu_enable_command_buffer": ""}
REGIONS = ("attention", "gdn", "gdn_conv", "gdn_rule", "mlp", "norm", "lm_head_loss", "optimizer")
NO_REGION = "other (embedding, casts, glue)"
GDN_KERNEL, ATTENTION_KERNEL, MATMUL, COMMUNICATION = "GDN kernel", "attention kernel", "matmul", "communication"
FUSIONS, OTHER = "element-wise / other fusions", "other"
REGION_KINDS = {"gdn_conv": "short convolution", "optimizer": "optimizer", "norm": "normalisation"}

_ATTENTION_NAMES = re.compile(r"flash|fmha|sdpa|splash", re.IGNORECASE)
_MATMUL_NAMES = re.compile(r"gemm|xmma|nvjet|cutlass|cublas", re.IGNORECASE)
_COLLECTIVES = re.compile(r"nccl|all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute", re.IGNORECASE)
_REGION_COMPONENT = re.compile(r"(?:(?:jvp|transpose|vmap|remat|checkpoint)\()*([\w-]*)\)*")

_COMPUTATION = re.compile(r"(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_INSTRUCTION = re.compile(r"\s+(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_OPCODE = re.compile(r"(?:^|\s)([a-z][\w\-]*)\(")
_OP_NAME = re.compile(r'op_name="((?:[^"\\]|\\.)*)"')
_TARGET = re.compile(r'custom_call_target="([^"]*)"')
_FUSED = re.compile(r"\bcalls=(\{[^}]*\}|%?[\w.\-]+)")  # a fusion's (or async op's) computations
_CALLED = re.compile(r"\b(?:calls|body|condition|to_apply|branch_computations)=(\{[^}]*\}|%?[\w.\-]+)")


@dataclasses.dataclass(frozen=True)
class HloOp:
    """One instruction of the compiled step's HLO text."""

    opcode: str  # e.g. "fusion", "custom-call", "dot"
    op_name: str  # its op_name metadata, or the one it inherits (see `parse_hlo`); "" when none
    target: str  # a custom call's custom_call_target, else ""
    matmul: bool  # a dot or convolution, a cuBLAS call, or a fusion computing one


def parse_hlo(text: str) -> dict[str, HloOp]:
    """{instruction name: HloOp} of every instruction in an HLO module's text (`compiled.as_text()`).

    An instruction without op_name metadata takes the first op_name found in the computations it fuses (calls=,
    their roots first), or else that of the instruction whose computation (fused, a loop's body, ...) it is in.
    Reducers (to_apply=) are left out of the first search: XLA shares one among reductions from anywhere.
    """
    lines: dict[str, str] = {}  # instruction -> the text after "="
    members: dict[str, list[str]] = collections.defaultdict(list)  # computation -> instructions, root first
    home: dict[str, str] = {}  # instruction -> its computation
    computation = ""
    for line in text.splitlines():
        instruction = _INSTRUCTION.match(line)
        if instruction:
            name, rest = instruction.groups()
            lines[name], home[name] = rest, computation
            if line.lstrip().startswith("ROOT"):
                members[computation].insert(0, name)
            else:
                members[computation].append(name)
        elif _COMPUTATION.match(line):
            computation = _COMPUTATION.match(line).group(1)
    fused = {name: _computations(_FUSED, rest) for name, rest in lines.items()}
    caller = {callee: name for name, rest in lines.items() for callee in _computations(_CALLED, rest)}

    @functools.cache
    def own(name: str) -> str:
        match = _OP_NAME.search(lines[name])
        return match.group(1) if match else ""

    def inner(name: str) -> str:
        return own(name) or next((own(m) for c in fused[name] for m in members[c] if own(m)), "")

    @functools.cache
    def op_name(name: str) -> str:
        found = inner(name)
        above = caller.get(home[name])
        return found or (op_name(above) if above else "")

    @functools.cache
    def matmul(name: str) -> bool:
        opcode, target = _opcode(lines[name]), _target(lines[name])
        return (
            opcode in ("dot", "convolution")
            or (opcode == "custom-call" and re.search("cublas|gemm|matmul", target, re.IGNORECASE) is not None)
            or (opcode == "fusion" and any(matmul(m) for c in fused[name] for m in members[c]))
        )

    return {name: HloOp(_opcode(rest), op_name(name), _target(rest), matmul(name)) for name, rest in lines.items()}


def _opcode(rest: str) -> str:
    match = _OPCODE.search(rest)
    return match.group(1) if match else ""


def _target(rest: str) -> str:
    match = _TARGET.search(rest)
    return match.group(1) if match else ""


def _computations(pattern: re.Pattern, rest: str) -> list[str]:
    """The computations an instruction's text names in the attributes `pattern` matches (_FUSED or _CALLED)."""
    return [name.lstrip("%") for group in pattern.findall(rest) for name in re.findall(r"%?[\w.\-]+", group)]


def region_of(op_name: str) -> str:
    """The innermost of REGIONS among the path components of an op_name (jvp(...), transpose(...) and vmap(...)
    around a component are looked through, jit(...) is not: it names a function), or NO_REGION."""
    found = [m.group(1) for m in map(_REGION_COMPONENT.fullmatch, op_name.split("/")) if m and m.group(1) in REGIONS]
    return found[-1] if found else NO_REGION


def kind_of(name: str, op: HloOp | None, region: str) -> str:
    """The kind of a device event named `name` that ran instruction `op` (None when unknown) in `region`; see the
    module docstring for the rules, applied in order."""
    if name.startswith("gdn_"):
        return GDN_KERNEL
    if _ATTENTION_NAMES.search(name) or (op is not None and "fmha" in op.target):
        return ATTENTION_KERNEL
    if _MATMUL_NAMES.search(name) or (op is not None and op.matmul):
        return MATMUL
    if _COLLECTIVES.search(name) or (op is not None and _COLLECTIVES.match(op.opcode)):
        return COMMUNICATION
    if op is None:
        return OTHER
    return REGION_KINDS.get(region, FUSIONS)


@dataclasses.dataclass(frozen=True)
class Kernel:
    """One device event: its name (the kernel's; on the CPU the op's), the HLO instruction it ran (None when none of
    its names is one) and its own duration in microseconds."""

    name: str
    op: HloOp | None
    us: float

    @property
    def region(self) -> str:
        return NO_REGION if self.op is None else region_of(self.op.op_name)

    @property
    def backward(self) -> bool:
        return self.op is not None and "transpose(" in self.op.op_name

    @property
    def kind(self) -> str:
        return kind_of(self.name, self.op, self.region)


def read_kernels(trace: dict | list, ops: dict[str, HloOp], module: str | None = None) -> list[Kernel]:
    """The device events of a Perfetto JSON trace as jax.profiler writes it (durations in microseconds), each with its
    HLO instruction from `ops` (see the module docstring). With `module` (the step's HloModule name), events whose
    "hlo_module" arg names another program are left out."""
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    if module is not None:
        events = [e for e in events if e.get("args", {}).get("hlo_module", module) == module]
    gpus = {
        e["pid"]
        for e in events
        if e.get("ph") == "M" and e.get("name") == "process_name" and "/device:GPU" in e["args"]["name"]
    }
    chosen = [e for e in events if e.get("ph") == "X" and (e["pid"] in gpus if gpus else "hlo_op" in e.get("args", {}))]
    return [Kernel(e["name"], _instruction(e, ops), us) for e, us in zip(chosen, _own_durations(chosen))]


def _instruction(event: dict, ops: dict[str, HloOp]) -> HloOp | None:
    args = event.get("args", {})
    names = (args.get("hlo_op"), args.get("long_name"), event["name"])
    return next((ops[name] for name in names if name in ops), None)


def _own_durations(events: list[dict]) -> list[float]:
    """Each event's duration less those of the events nested directly in it (starting and ending within it, to the
    nanosecond) on the same thread. Events that merely overlap (consecutive kernels of a GPU stream) keep theirs."""
    own = [float(e["dur"]) for e in events]
    end = [e["ts"] + e["dur"] + 1e-3 for e in events]
    order = sorted(range(len(events)), key=lambda i: (events[i]["pid"], events[i]["tid"], events[i]["ts"], -own[i]))
    enclosing: list[int] = []  # the events enclosing the current one, innermost last
    thread = None
    for i in order:
        event = events[i]
        if (event["pid"], event["tid"]) != thread:
            enclosing, thread = [], (event["pid"], event["tid"])
        while enclosing and end[enclosing[-1]] < end[i]:
            enclosing.pop()
        if enclosing:
            own[enclosing[-1]] -= event["dur"]
        enclosing.append(i)
    return own


@dataclasses.dataclass(frozen=True)
class Total:
    """Per step: microseconds, of which backward, and events."""

    us: float
    backward_us: float
    count: float


def totals(kernels: list[Kernel], key: Callable[[Kernel], Hashable], steps: int) -> dict[Hashable, Total]:
    """The kernels' time per step (`steps` of them in `kernels`) grouped by `key`, largest first."""
    groups: dict[Hashable, list[Kernel]] = collections.defaultdict(list)
    for kernel in kernels:
        groups[key(kernel)].append(kernel)
    summed = {
        k: Total(sum(g.us for g in group) / steps, sum(g.us for g in group if g.backward) / steps, len(group) / steps)
        for k, group in groups.items()
    }
    return dict(sorted(summed.items(), key=lambda item: -item[1].us))


@dataclasses.dataclass(frozen=True)
class Profile:
    """The device events of some traced train steps, and the steps' wall time."""

    kernels: list[Kernel]
    device_steps: int  # the steps traced times the local devices: the events' times are per step and device
    wall_us: float  # per step, host clock, profiler on
    device: str  # its kind, e.g. "NVIDIA H200"

    @property
    def device_us(self) -> float:
        """The device events' summed time per step and device."""
        return sum(k.us for k in self.kernels) / self.device_steps


class DecodeRunner:
    """The decode step of a run config's model (`HybridLM.decode`, then the greedy next token) with random bfloat16
    weights, compiled ahead of time (with XLA `compiler_options`) for `batch` rows and a cache of `max_len` tokens,
    and the tokens, positions and cache it updates; the first step decodes at position max_len // 2."""

    def __init__(self, config: config_dict.ConfigDict, batch: int, max_len: int, compiler_options: dict[str, str]):
        model_config, self.state = train_setup.random_bf16_params(config.model, max_len)
        self.graphdef = nnx.graphdef(abstract_model(model_config))
        self.cache = jax.jit(lambda state: nnx.merge(self.graphdef, state).init_cache(batch, max_len))(self.state)
        self.tokens = jax.random.randint(jax.random.key(0), (batch,), 0, model_config.vocab_size, jnp.int32)
        self.positions = jnp.full((batch,), max_len // 2, jnp.int32)
        step = jax.jit(self._decode, donate_argnums=(3,))
        lowered = step.lower(self.state, self.tokens, self.positions, self.cache)
        self.compiled = lowered.compile(compiler_options=compiler_options)

    def _decode(
        self, state: dict[str, Any], tokens: jax.Array, positions: jax.Array, cache: list[dict[str, jax.Array]]
    ) -> tuple[jax.Array, jax.Array, list[dict[str, jax.Array]]]:
        """tokens, positions: int [B] -> (the greedy next tokens int32 [B], positions + 1, cache)."""
        logits, cache = nnx.merge(self.graphdef, state).decode(tokens, positions, cache)
        return logits.argmax(-1).astype(jnp.int32), positions + 1, cache

    def step(self) -> float:
        """Decodes one token of every row, to completion; returns its wall-clock seconds."""
        start = time.perf_counter()
        self.tokens, self.positions, self.cache = self.compiled(self.state, self.tokens, self.positions, self.cache)
        jax.block_until_ready(self.tokens)
        return time.perf_counter() - start


def runner_for(
    config: config_dict.ConfigDict, batch_size: int, seq_len: int, decode: bool
) -> train_setup.StepRunner | DecodeRunner:
    """The step to profile, compiled without command buffers: the train step of `config` at batch_size x seq_len,
    or with `decode` its decode step for batch_size rows and a cache of seq_len tokens."""
    if decode:
        return DecodeRunner(config, batch_size, seq_len, NO_COMMAND_BUFFERS)
    return train_setup.StepRunner(train_setup.sized_config(config, batch_size, seq_len), NO_COMMAND_BUFFERS)


def profile(runner: train_setup.StepRunner | DecodeRunner, steps: int, warmup: int) -> Profile:
    """Runs the compiled step of `runner` `warmup` times, then traces `steps` steps."""
    for _ in range(warmup):
        runner.step()
    text = runner.compiled.as_text()
    ops, module = parse_hlo(text), text.split(maxsplit=2)[1].rstrip(",")
    options = jax.profiler.ProfileOptions()
    options.python_tracer_level = 0  # Python's own calls are not wanted; they would only swell the trace.
    with tempfile.TemporaryDirectory() as logdir:
        with jax.profiler.trace(logdir, create_perfetto_trace=True, profiler_options=options):
            wall = sum(runner.step() for _ in range(steps))
        (path,) = glob.glob(os.path.join(logdir, "**", "perfetto_trace.json.gz"), recursive=True)
        with gzip.open(path) as f:
            trace = json.load(f)
    kernels = read_kernels(trace, ops, module)
    return Profile(kernels, steps * jax.local_device_count(), 1e6 * wall / steps, jax.devices()[0].device_kind)


KIND_COLUMNS = ("kind", "us/step", "% device", "events/step")
REGION_COLUMNS = ("region", "us/step", "% device", "events/step", "backward us")
TOP_COLUMNS = ("kernel", "kind", "region", "us/step", "% device", "events/step")


def tables(result: Profile, top: int) -> list[tuple[str, tuple[str, ...], list[list[str]]]]:
    """The tables (title, columns, rows) of a profile: by kind, by region, and the `top` largest kernels when
    top > 0."""
    device_us = result.device_us

    def cells(t: Total) -> list[str]:
        return [f"{t.us:,.1f}", f"{t.us / device_us:.1%}" if device_us else "-", f"{t.count:,.0f}"]

    by_kind = totals(result.kernels, lambda k: k.kind, result.device_steps)
    by_region = totals(result.kernels, lambda k: k.region, result.device_steps)
    found = [
        ("By kind", KIND_COLUMNS, [[kind, *cells(t)] for kind, t in by_kind.items()]),
        (
            "By model region (the innermost named scope; backward: under transpose(...))",
            REGION_COLUMNS,
            [[region, *cells(t), f"{t.backward_us:,.1f}"] for region, t in by_region.items()],
        ),
    ]
    if top > 0:
        largest = totals(result.kernels, lambda k: (k.name[:80], k.kind, k.region), result.device_steps)
        rows = [[*key, *cells(t)] for key, t in largest.items()]
        found.append((f"The {top} largest kernels", TOP_COLUMNS, rows[:top]))
    return found


def summary(result: Profile) -> list[str]:
    """The step's wall time against its device time, and warnings: for a trace without device events, and for
    device time matched to no HLO instruction."""
    if not result.kernels:
        return ["warning: the trace has no device events (no /device:GPU process, no events with hlo_op args)"]
    gap = result.wall_us - result.device_us
    idle = f"idle {gap:,.0f} us ({gap / result.wall_us:.1%})" if gap >= 0 else "they overlap"
    wall = f"{result.wall_us:,.0f} us wall (host clock, profiler on)"
    lines = [f"step: {wall}, {result.device_us:,.0f} us in device events per device: {idle}"]
    unmapped = totals([k for k in result.kernels if k.op is None], lambda k: k.name[:60], result.device_steps)
    if unmapped:
        unmapped_us, events = sum(t.us for t in unmapped.values()), sum(t.count for t in unmapped.values())
        lines.append(
            f"warning: {unmapped_us / result.device_us:.1%} of the device time ({events:,.0f} events per step, "
            f"largest {', '.join(list(unmapped)[:3])}) matched no HLO instruction: its region is unknown, its kind "
            "only from kernel names"
        )
    return lines


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)  # Keeps jax's INFO lines (backends, trace files) off the terminal.
    config = train_setup.flag_config()
    (batch_size, *more), seq_len = train_setup.batch_sizes(config), train_setup.seq_len(config)
    if more:
        raise SystemExit(f"error: --batch {','.join(train_setup.BATCH.value)}: profile_step takes one batch size")
    steps, warmup = train_setup.steps(DEFAULT_STEPS), train_setup.WARMUP.value
    if DECODE.value and warmup + steps > seq_len // 2:
        raise SystemExit(
            f"error: --warmup {warmup} + --steps {steps} decode steps overrun the cache of --seq {seq_len} "
            f"from position {seq_len // 2}; give --seq {2 * (warmup + steps)} or more"
        )
    try:
        runner = runner_for(config, batch_size, seq_len, DECODE.value)
    except ValueError as error:  # ConfigError: the config cannot run
        raise SystemExit(f"error: {error}") from None
    result = profile(runner, steps, warmup)
    traced = f"{steps} {'decode ' if DECODE.value else ''}steps traced after {warmup} warm-up steps"
    shape = f"{batch_size} rows, a cache of {seq_len} tokens" if DECODE.value else f"batch {batch_size} x seq {seq_len}"
    head = [f"{train_setup.config_name()} at {shape}: {traced}", *summary(result)]
    print(f"device {result.device}, jax {jax.__version__}, commit {train_setup.git_commit()}")
    print("\n".join(head))
    for title, columns, rows in tables(result, TOP.value):
        print(f"\n{title}:\n" + "\n".join(train_setup.text_table(columns, rows)))
    if train_setup.WRITE.value:
        with open(train_setup.WRITE.value, "a") as f:
            section = "Decode step profile" if DECODE.value else "Train step profile"
            f.write(train_setup.section_header(section, result.device, "profile_step.py"))
            f.write("\n\n".join(head) + "\n")
            for title, columns, rows in tables(result, TOP.value):
                f.write(f"\n{title}:\n\n" + train_setup.markdown_head(columns))
                f.write("".join(train_setup.markdown_row(row, len(columns)) for row in rows))


if __name__ == "__main__":
    app.run(main, flags_parser=train_setup.parse_flags)
