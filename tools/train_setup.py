"""What the speed tools (bench_train.py, profile_step.py, bench_generate.py) share: their flags, the run config at the
batch size and sequence length asked for, a compiled train step on a synthetic batch, a model with random bfloat16
weights, and the header of the sections they append to BENCHMARKS.md.

Importing this module defaults XLA_PYTHON_CLIENT_MEM_FRACTION to 0.95 (unless it is set) before jax is imported,
so XLA may take most of the GPU; the tools import it before jax.
"""

from __future__ import annotations

import datetime
import os
import pathlib
import subprocess
import sys
import time
from typing import Any

os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_dict, config_flags  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo root, for uninstalled checkouts

from flax import nnx  # noqa: E402

from hybridlm import config_checks, named_configs  # noqa: E402
from hybridlm.model import HybridLM, ModelConfig  # noqa: E402
from hybridlm.train import parse_flags  # noqa: E402, F401  (the tools' flag parser; defines --config)
from hybridlm.trainer import TrainProgram  # noqa: E402

BATCH = flags.DEFINE_list("batch", None, "global batch sizes, comma-separated (default: config.data.batch_size)")
SEQ = flags.DEFINE_integer("seq", None, "sequence length (default: config.data.seq_len; raises max_seq_len to fit)")
STEPS = flags.DEFINE_integer("steps", None, "steps measured (bench_train: timed, default 10; profile_step: 3)")
WARMUP = flags.DEFINE_integer("warmup", 2, "steps run after compiling and before measuring")
WRITE = flags.DEFINE_string("write", None, "append the results, with date, card, command and commit, to this file")

DOCUMENT_TOKENS = 1000  # mean document length of the synthetic batches' segment ids under data.document_mask


def flag_config() -> config_dict.ConfigDict:
    """The run config named by --config, with its overrides; exits with a one-line error without one."""
    if flags.FLAGS.config is None:
        raise SystemExit("error: --config is required: an experiment name from `python -m experiments`, or a file")
    return flags.FLAGS.config


def config_name() -> str:
    """The experiment (or config file) that --config names, e.g. "olmo_hybrid_7b" or "ladder:hybrid-15M"."""
    return named_configs.experiment_name(config_flags.get_config_filename(flags.FLAGS["config"]))


def batch_sizes(config: config_dict.ConfigDict) -> list[int]:
    """--batch as positive ints, or [config.data.batch_size]; exits with a one-line error on anything else."""
    if BATCH.value is None:
        return [config.data.batch_size]
    if not all(size.isdigit() and int(size) > 0 for size in BATCH.value):
        raise SystemExit(f"error: --batch {','.join(BATCH.value)}: expected positive integers, e.g. --batch 4,8")
    return [int(size) for size in BATCH.value]


def seq_len(config: config_dict.ConfigDict) -> int:
    """--seq, or config.data.seq_len."""
    return config.data.seq_len if SEQ.value is None else SEQ.value


def steps(default: int) -> int:
    """--steps, or the tool's `default`; exits with a one-line error unless it and --warmup make sense."""
    count = default if STEPS.value is None else STEPS.value
    if count < 1 or WARMUP.value < 0:
        raise SystemExit(f"error: --steps {count} --warmup {WARMUP.value}: expected at least 1 step, warmup >= 0")
    return count


def sized_config(config: config_dict.ConfigDict, batch_size: int, seq_len: int) -> config_dict.ConfigDict:
    """A copy of `config` with data.batch_size and data.seq_len set, and model.max_seq_len raised to seq_len."""
    config = config.copy_and_resolve_references()
    config.data.batch_size, config.data.seq_len = batch_size, seq_len
    config.model.max_seq_len = max(config.model.max_seq_len, seq_len)
    return config


def random_bf16_params(
    model: config_dict.ConfigDict, max_seq_len: int, seed: int = 0
) -> tuple[ModelConfig, dict[str, Any]]:
    """The model config `model` with bfloat16 weights and compute and max_seq_len raised to at least `max_seq_len`,
    and its freshly initialised params (nested dict of arrays, `nnx.to_pure_dict` layout), made in one jit."""
    model = model.copy_and_resolve_references()
    model.param_dtype, model.dtype = "bfloat16", "bfloat16"
    model.max_seq_len = max(model.max_seq_len, max_seq_len)
    config = ModelConfig.from_config(model)
    return config, jax.jit(lambda: nnx.to_pure_dict(nnx.state(HybridLM(config, nnx.Rngs(seed)), nnx.Param)))()


def synthetic_batch(config: config_dict.ConfigDict, seed: int = 0) -> dict[str, np.ndarray]:
    """A global batch of random tokens, int32 [batch_size, seq_len] each: inputs and targets (inputs shifted by one)
    uniform in [0, vocab_size), and segment_ids numbering documents of random lengths (DOCUMENT_TOKENS on average)
    when config.data.document_mask is on, else zeros."""
    rng = np.random.default_rng(seed)
    batch_size, length = config.data.batch_size, config.data.seq_len
    tokens = rng.integers(0, config.model.vocab_size, (batch_size, length + 1), dtype=np.int32)
    starts = rng.random((batch_size, length)) < 1.0 / DOCUMENT_TOKENS
    starts[:, 0] = False
    segment_ids = np.cumsum(starts, axis=1, dtype=np.int32) * bool(config.data.document_mask)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "segment_ids": segment_ids}


class StepRunner:
    """The train step of a run config, compiled ahead of time for a synthetic batch (with XLA `compiler_options`,
    e.g. {"xla_gpu_enable_command_buffer": ""}), and the train state it updates.

    Construction raises ConfigError (a ValueError) for a config that cannot run, and jax.errors.JaxRuntimeError
    (RESOURCE_EXHAUSTED) when the state or the step does not fit the device.
    """

    def __init__(self, config: config_dict.ConfigDict, compiler_options: dict[str, str] | None = None):
        self.program = TrainProgram(config, config_checks.validate(config))
        self.state = self.program.init_state()
        self.batch = self.program.put_batch(synthetic_batch(config))
        start = time.perf_counter()
        lowered = self.program.train_step.lower(self.state, self.batch)
        self.compiled = lowered.compile(compiler_options=compiler_options)
        self.compile_seconds = time.perf_counter() - start

    def step(self) -> float:
        """Runs one step to completion (the new state and the metrics ready); returns its wall-clock seconds."""
        start = time.perf_counter()
        self.state, metrics = self.compiled(self.state, self.batch)
        jax.block_until_ready((self.state, metrics))
        return time.perf_counter() - start


def git_commit() -> str:
    """The checkout's short commit, with "-dirty" when files differ from it, or "unknown" outside git."""
    try:
        return _git("rev-parse", "--short", "HEAD") + ("-dirty" if _git("status", "--porcelain") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def text_table(headers: tuple[str, ...], rows: list[list[str]]) -> list[str]:
    """The headers and rows as aligned text lines. A row with fewer cells than headers (an error) does not widen the
    columns: its last cell runs on."""
    full = [row for row in rows if len(row) == len(headers)]
    widths = [max(len(cell) for cell in column) for column in zip(headers, *full)]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [list(headers), *rows]]


def markdown_head(headers: tuple[str, ...]) -> str:
    """A markdown table's header and separator lines."""
    return "| " + " | ".join(headers) + " |\n" + "|---" * len(headers) + "|\n"


def markdown_row(row: list[str], columns: int) -> str:
    """One markdown table line, padded with empty cells to `columns` ("|" in a cell escaped)."""
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in row + [""] * (columns - len(row))) + " |\n"


def section_header(title: str, card: str, tool: str) -> str:
    """The start of a markdown section for BENCHMARKS.md: title, date, card, jax, then the command and commit."""
    command = f"python tools/{tool} " + " ".join(sys.argv[1:])
    return (
        f"\n## {title}, {datetime.date.today()}, {card}, jax {jax.__version__}\n\n"
        f"`{command}` at commit {git_commit()}\n\n"
    )
