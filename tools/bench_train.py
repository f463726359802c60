r"""Times the train step of a run config on the local accelerator: tokens/s, MFU, peak memory and compile time.

Run from the repository root (on a GPU for numbers that mean anything; the CPU runs it too):

    python tools/bench_train.py --config=olmo_hybrid_7b --batch 4,8 --seq 8192 --steps 10 --warmup 2
    python tools/bench_train.py --config=olmo_hybrid_7b --config.model.remat=none --batch 2 --write BENCHMARKS.md
    python tools/bench_train.py --config=olmo_hybrid_7b --config.model.num_layers=8 --config.mesh.data=1 \
        --config.mesh.fsdp=-1 --batch 1 --devices 1,2,4,8     # weak scaling: 1 row per GPU

--config and its overrides work as in `python -m hybridlm.train`. Only the train step runs: no evaluation, data
loading or checkpoints. The batch is synthetic: random tokens, and with data.document_mask random documents of
about 1000 tokens. Each batch size is measured in a fresh process (this script run again with --measure_batch),
so that its peak memory is its own and an out-of-memory cannot poison the next one. There the step is compiled
ahead of time (compile s), run --warmup times, then timed over --steps steps, each run until the new state and the
metrics are ready (step ms: median and min-max; tokens/s and MFU from the median). GFLOP/token is
hybridlm.flops' count (PaLM's convention) and MFU divides it by the card's dense bf16 peak; on a device it does not
know (the CPU) MFU is "-". Peak memory is the allocator's peak where the device reports one (GPUs), else XLA's plan
for the step (its argument, output and temporary buffers less the donated ones). An out-of-memory at compile or
run time becomes a row saying how much XLA asked for, and XLA's other errors (e.g. a kernel over its shared memory
limit) a row with the start of their message; either way the next batch size still runs. The table comes last;
--write appends it to a file (BENCHMARKS.md) as the rows arrive.

Weak scaling (--devices N1,N2,...): --batch is the rows per device; each count N runs in a child that sees only the
first N local devices (CUDA_VISIBLE_DEVICES on GPUs, JAX_NUM_CPU_DEVICES on the CPU; elsewhere the child refuses)
at N x --batch rows, with the config's mesh sized to them (e.g. --config.mesh.fsdp=-1). A last line gives each
count's tokens/s per device as a share of the first count's: the scaling efficiency.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the other tools

import train_setup  # noqa: E402  (first: it sets XLA's memory fraction before jax is imported)
import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_dict  # noqa: E402

from hybridlm.metrics import peak_device_bytes  # noqa: E402

DEVICES = flags.DEFINE_list(
    "devices",
    None,
    "weak scaling: device counts N (e.g. 1,2,4,8); each runs on the first N local devices at N x --batch rows "
    "(--batch: rows per device, one size), and the summary gives tokens/s per device against the first count's",
)
MEASURE_BATCH = flags.DEFINE_integer(
    "measure_batch", None, "internal: measure this batch size in this process and print it as one JSON line"
)
MEASURE_DEVICES = flags.DEFINE_integer("measure_devices", None, "internal: the devices this process must see")

DEFAULT_STEPS = 10
OUT_OF_MEMORY = "out of memory"
GIB = 2**30
COLUMNS = (
    "config",
    "devices",
    "seq",
    "batch",
    "tokens/s",
    "MFU",
    "GFLOP/token",
    "peak GiB",
    "compile s",
    "step ms",
    "step ms min-max",
)
# Device memory running out (not e.g. "RESOURCE_EXHAUSTED: Shared memory size limit exceeded", a kernel's limit).
_OUT_OF_MEMORY = re.compile(
    r"RESOURCE_EXHAUSTED:.*(out of memory|failed to allocate|trying to allocate)", re.IGNORECASE
)
_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}
_SIZE = r"([\d.]+)\s*(B|[KMGT]i?B)\b"
# What an XLA out-of-memory message says was needed, best first: the whole buffer assignment, the allocation that
# failed, or any size it names.
_NEEDED = (
    re.compile(r"total allocation:\s*" + _SIZE),
    re.compile(r"allocat\w*\s+(\d+)\s+(bytes)"),
    re.compile(_SIZE),
)


def needed_bytes(message: str) -> int | None:
    """The bytes an XLA RESOURCE_EXHAUSTED message says were needed, or None when it names no size."""
    for pattern in _NEEDED:
        match = pattern.search(message)
        if match:
            number, unit = match.groups()
            return round(float(number) * _UNITS.get(unit, 1))
    return None


def peak_memory(runner: train_setup.StepRunner) -> tuple[int, str]:
    """(bytes, which measure): the largest allocator peak of the local devices where they report one (GPUs), else
    XLA's plan for the compiled step (arguments + outputs + temporaries - donated buffers)."""
    peak = peak_device_bytes()
    if peak is not None:
        return peak, "allocator peak"
    plan = runner.compiled.memory_analysis()
    planned = plan.argument_size_in_bytes + plan.output_size_in_bytes + plan.temp_size_in_bytes
    return planned - plan.alias_size_in_bytes, "XLA plan"


def measure(config: config_dict.ConfigDict, batch_size: int, seq_len: int, steps: int, warmup: int) -> dict[str, Any]:
    """Compiles and times the train step of `config` at this batch size and sequence length in this process.

    Returns a JSON-able record: device, jax, batch, seq, and either compile_s, step_ms (sorted), tokens_per_s,
    mfu (None off the known cards), gflop_per_token, peak_bytes and peak_source; or error "out of memory" and
    needed_bytes (None when XLA's message names no size); or, for XLA's other compile and run errors, error
    "failed: " and the start of the message, its lines joined by " / ". Raises ConfigError for a config that cannot
    run.
    """
    record = {
        "device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "devices": jax.device_count(),
        "batch": batch_size,
        "seq": seq_len,
    }
    try:
        runner = train_setup.StepRunner(train_setup.sized_config(config, batch_size, seq_len))
        for _ in range(warmup):
            runner.step()
        seconds = sorted(runner.step() for _ in range(steps))
    except jax.errors.JaxRuntimeError as error:  # a compile or run failure: this batch size's row says which
        message = str(error)
        if _OUT_OF_MEMORY.search(message):
            return {**record, "error": OUT_OF_MEMORY, "needed_bytes": needed_bytes(message)}
        return {**record, "error": "failed: " + " / ".join(line.strip() for line in message.splitlines())[:300]}
    program, median = runner.program, statistics.median(seconds)
    peak, source = peak_memory(runner)
    return {
        **record,
        "compile_s": runner.compile_seconds,
        "step_ms": [1e3 * s for s in seconds],
        "tokens_per_s": program.tokens_per_step / median,
        "mfu": program.mfu(median),
        "gflop_per_token": program.flops_per_step / program.tokens_per_step / 1e9,
        "peak_bytes": peak,
        "peak_source": source,
    }


def measure_in_child(batch_size: int, seq_len: int, devices: int | None = None) -> dict[str, Any]:
    """`measure` in a fresh process (this script with the same flags and --measure_batch), which sees only the first
    `devices` local devices when given; a child that ends without its record becomes an error record with its last
    line of output, and one that refused the config or its devices ("error: ...") ends this run with its message."""
    command = [sys.executable, os.path.abspath(__file__), *sys.argv[1:], f"--measure_batch={batch_size}"]
    env = dict(os.environ)
    if devices is not None:
        command.append(f"--measure_devices={devices}")
        env.update(first_devices(devices, os.environ.get("CUDA_VISIBLE_DEVICES")))
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    records = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode == 0 and records:
        return json.loads(records[-1])
    last = (done.stderr.strip().splitlines() or [""])[-1]
    if last.startswith("error: "):
        raise SystemExit(last)
    failed = f"failed (exit code {done.returncode}): {last[:300]}"
    return {"devices": devices or "-", "batch": batch_size, "seq": seq_len, "error": failed}


def first_devices(count: int, cuda_visible: str | None) -> dict[str, str]:
    """The environment that shows a process only the first `count` local devices: GPUs by CUDA_VISIBLE_DEVICES (the
    first `count` of those already visible, `cuda_visible`, when set) and CPU devices by JAX_NUM_CPU_DEVICES."""
    gpus = cuda_visible.split(",")[:count] if cuda_visible else [str(i) for i in range(count)]
    return {"CUDA_VISIBLE_DEVICES": ",".join(gpus), "JAX_NUM_CPU_DEVICES": str(count)}


def weak_scaling(records: list[dict[str, Any]]) -> str:
    """One line: each device count's tokens/s per device as a share of the first record's (the records of the
    --devices counts, in order)."""
    rate = lambda record: record["tokens_per_s"] / record["devices"] if "tokens_per_s" in record else None
    base = rate(records[0])
    shares = [
        f"{r['devices']} devices {'-' if rate(r) is None or base is None else f'{rate(r) / base:.1%}'}" for r in records
    ]
    return f"weak scaling, tokens/s per device against {records[0]['devices']} device(s): " + ", ".join(shares)


def cells(name: str, record: dict[str, Any]) -> list[str]:
    """The table row of a record: one cell per COLUMNS entry, or config, devices, seq, batch and the error."""
    head = [name, str(record["devices"]), str(record["seq"]), str(record["batch"])]
    if "error" in record:
        needed = record.get("needed_bytes")
        return head + [record["error"] + (f" (XLA asked for {needed / GIB:.1f} GiB)" if needed else "")]
    step_ms = record["step_ms"]
    return head + [
        f"{record['tokens_per_s']:,.0f}",
        "-" if record["mfu"] is None else f"{record['mfu']:.1%}",
        f"{record['gflop_per_token']:.3g}",
        f"{record['peak_bytes'] / GIB:.3g} ({record['peak_source']})",
        f"{record['compile_s']:.1f}",
        f"{statistics.median(step_ms):.1f}",
        f"{step_ms[0]:.1f}-{step_ms[-1]:.1f}",
    ]


def _markdown_writer(path: str | None, steps: int) -> Callable[[str, list[str]], None]:
    """append(card, row): starts a section in `path` (if given) at the first row, when the card is known, and appends
    each row as it comes, so a run cut short still leaves its numbers."""
    started = False

    def append(card: str, row: list[str]) -> None:
        nonlocal started
        if path is None:
            return
        with open(path, "a") as f:
            if not started:
                f.write(train_setup.section_header("Train step", card, "bench_train.py"))
                warmup = train_setup.WARMUP.value
                f.write(f"{steps} timed steps after {warmup} warm-up steps; step ms is their median (and range).\n\n")
                f.write(train_setup.markdown_head(COLUMNS))
                started = True
            f.write(train_setup.markdown_row(row, len(COLUMNS)))

    return append


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)  # Keeps jax's INFO lines (e.g. backends it did not find) off the terminal.
    config = train_setup.flag_config()
    seq_len, steps = train_setup.seq_len(config), train_setup.steps(DEFAULT_STEPS)
    if MEASURE_BATCH.value is not None:
        expected = MEASURE_DEVICES.value
        if expected is not None and jax.device_count() != expected:
            raise SystemExit(
                f"error: --devices {expected}: the measuring process sees {jax.device_count()} devices; only GPUs "
                "(CUDA_VISIBLE_DEVICES) and CPU devices (JAX_NUM_CPU_DEVICES) can be limited to the first N"
            )
        try:
            record = measure(config, MEASURE_BATCH.value, seq_len, steps, train_setup.WARMUP.value)
        except ValueError as error:  # ConfigError: the config cannot run (the parent repeats this line and stops)
            raise SystemExit(f"error: {error}") from None
        print(json.dumps(record))
        return
    name, append = train_setup.config_name(), _markdown_writer(train_setup.WRITE.value, steps)
    runs = [(batch_size, None) for batch_size in train_setup.batch_sizes(config)]
    if DEVICES.value:
        counts = device_counts(DEVICES.value)
        if len(runs) != 1:
            raise SystemExit(f"error: --devices takes one --batch (rows per device), not {len(runs)} sizes")
        runs = [(runs[0][0] * count, count) for count in counts]
    rows, devices, records = [], [], []
    for batch_size, count in runs:
        where = "" if count is None else f" on {count} device(s)"
        print(f"batch {batch_size} x seq {seq_len}{where}: compiling and timing in a fresh process", flush=True)
        record = measure_in_child(batch_size, seq_len, count)
        records.append(record)
        rows.append(cells(name, record))
        devices += [f"{record['device']}, jax {record['jax']}"] if "device" in record else []
        append(record.get("device", "unknown device"), rows[-1])
    device = devices[0] if devices else "unknown device"
    print(f"\ndevice {device}, commit {train_setup.git_commit()}")
    print(f"{steps} timed steps after {train_setup.WARMUP.value} warm-up steps; step ms is their median (and range)")
    print("\n".join(train_setup.text_table(COLUMNS, rows)))
    if DEVICES.value:
        scaling = weak_scaling(records)
        print(scaling)
        if train_setup.WRITE.value:
            with open(train_setup.WRITE.value, "a") as f:
                f.write(f"\n{scaling}.\n")


def device_counts(values: list[str]) -> list[int]:
    """--devices values -> the device counts; exits with a one-line error unless they are whole numbers >= 1."""
    try:
        counts = [int(value) for value in values]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise SystemExit(f"error: --devices {','.join(values)}: give device counts of 1 or more, e.g. 1,2,4,8")
    return counts


if __name__ == "__main__":
    app.run(main, flags_parser=train_setup.parse_flags)
