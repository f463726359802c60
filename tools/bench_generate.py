"""Times generation on the local accelerator: prefill and decode tokens/s of a config's model with random bf16 weights,
against transformers' `generate` on the same weights.

Run from the repository root (on a GPU for numbers that mean anything; the CPU runs it too):

    python tools/bench_generate.py --config=olmo_hybrid_7b                    # prompt 8192; batch 1 and 64
    python tools/bench_generate.py --config=olmo_hybrid_1b --batch 1,16 --new_tokens 256 --write BENCHMARKS.md
    python tools/bench_generate.py --config=tiny_hybrid --prompt 64 --batch 1,2 --new_tokens 8 --no_baseline

--config and its overrides work as in `python -m hybridlm.train`; the tool sets the weights and the compute to
bfloat16 and raises model.max_seq_len to fit the prompts. Rows:

- prefill: one prompt of --prompt random tokens through `hybridlm.generate.generate` with one new token (the cache
  filled, the first token drawn); tokens/s counts prompt tokens. transformers: one forward of the prompt with
  use_cache=True and logits_to_keep=1.
- decode, per --batch size: `generate` of --new_tokens greedy tokens after prompts of --decode_prompt random tokens;
  tokens/s is batch x new tokens over the whole call (its prompt prefill included, and the host's reads of the tokens
  after each run of decode steps).
  transformers: `model.generate` with the same prompts, greedy, min_new_tokens = max_new_tokens, use_cache=True.

Each figure is the median of --runs timed calls after --warmup calls (at least 1: the first call compiles). compile s is
the seconds jax spent compiling during the warm-up (0 where an earlier row compiled the same programs: `generate`
decodes one prompt as two rows, so batch 1 and 2 share the decode step), and a timed call that compiles anything (a
decode loop that recompiles per token) stops the run with an error. The floor fraction of a batch-1 decode row is the
time the new tokens would take if each only read the weights once from memory (every parameter but the embedding table,
in bf16, over the card's HBM bandwidth; "-" on a card not in HBM_BANDWIDTH, such as the CPU) over the measured time.

The baseline (skip it with --no_baseline) exports the same weights with `hybridlm.hf.export.export_params` to a
temporary directory and loads them with `AutoModelForCausalLM.from_pretrained(..., dtype=torch.bfloat16)`, on CUDA
when torch sees a GPU, else on the CPU; it runs after our rows, in this process. jax is told not to preallocate
device memory (XLA_PYTHON_CLIENT_PREALLOCATE=false unless set) so that torch finds the card's memory jax did not use.
--write appends the table, with date, card, jax version, command and commit, to a file (BENCHMARKS.md). A SIGTERM
(e.g. from `timeout`) ends the timing where it is: the table then holds the rows timed so far and a note says so.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import importlib.util
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # before jax is imported (by train_setup)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the other tools

import train_setup  # noqa: E402  (first: it puts the repo root on the path and sets XLA's memory fraction)
import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from flax import nnx  # noqa: E402

from hybridlm import generate  # noqa: E402
from hybridlm.data.tokenizer import ByteTokenizer  # noqa: E402
from hybridlm.hf.convert import SpecialTokens  # noqa: E402
from hybridlm.hf.export import export_params  # noqa: E402
from hybridlm.model import HybridLM, abstract_model  # noqa: E402

PROMPT = flags.DEFINE_integer("prompt", 8192, "prompt tokens of the prefill row (batch 1)")
DECODE_PROMPT = flags.DEFINE_integer("decode_prompt", 128, "prompt tokens of each row before the decode")
NEW_TOKENS = flags.DEFINE_integer("new_tokens", 128, "tokens generated per row in the decode rows")
RUNS = flags.DEFINE_integer("runs", 3, "timed calls per figure (their median is reported)")
NO_BASELINE = flags.DEFINE_bool("no_baseline", False, "skip transformers' generate on the exported weights")

DEFAULT_BATCHES = (1, 64)
PREFILL = "prefill"  # the "new tokens" cell of the prefill row
COLUMNS = (
    "config",
    "batch",
    "prompt",
    "new tokens",
    "ours tokens/s",
    "transformers tokens/s",
    "speedup",
    "floor fraction",
    "compile s",
)
# HBM bandwidth in bytes/s by the start of `jax.Device.device_kind` (vendor datasheets; the longest match wins).
HBM_BANDWIDTH = {
    "NVIDIA H200": 4.8e12,
    "NVIDIA H100 80GB HBM3": 3.35e12,  # SXM
    "NVIDIA H100 NVL": 3.9e12,
    "NVIDIA H100 PCIe": 2.0e12,
    "NVIDIA A100-SXM4-80GB": 2.039e12,
    "NVIDIA A100-SXM4-40GB": 1.555e12,
    "NVIDIA A100 80GB PCIe": 1.935e12,
    "NVIDIA A100-PCIE-40GB": 1.555e12,
    "TPU v4": 1.2e12,
    "TPU v5": 2.765e12,  # v5p
    "TPU v5 lite": 8.19e11,
    "TPU v6 lite": 1.64e12,
}
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # jax.monitoring's event for one XLA compile
SPECIAL_TOKENS = SpecialTokens(bos=None, eos=ByteTokenizer.eos_id, pad=ByteTokenizer.pad_id)


@dataclasses.dataclass(frozen=True)
class Case:
    """One row: `batch` prompts of `prompt` tokens and `new_tokens` generated (0: the prefill row)."""

    batch: int
    prompt: int
    new_tokens: int

    def tokens(self) -> int:
        """The tokens a call counts for tokens/s: the prompt's for prefill, else the generated ones."""
        return self.batch * (self.new_tokens or self.prompt)

    def prompts(self, vocab_size: int) -> np.ndarray:
        """Random prompt tokens, int32 [batch, prompt], the same for ours and the baseline."""
        return np.random.default_rng(self.batch * 100_003 + self.prompt).integers(
            0, vocab_size, (self.batch, self.prompt), dtype=np.int32
        )


@dataclasses.dataclass(frozen=True)
class Timing:
    """Seconds of the timed calls (sorted) and of jax's compiles in the warm-up (None: not jax)."""

    seconds: list[float]
    compile_s: float | None = None

    def tokens_per_s(self, case: Case) -> float:
        return case.tokens() / statistics.median(self.seconds)


class CompileWatch:
    """Counts jax's XLA compiles and sums their seconds while open (a jax.monitoring listener)."""

    def __init__(self) -> None:
        self.count, self.seconds = 0, 0.0

    def __enter__(self) -> CompileWatch:
        jax.monitoring.register_event_duration_secs_listener(self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        jax.monitoring.unregister_event_duration_listener(self._record)

    def _record(self, event: str, duration: float, **kwargs: Any) -> None:
        if event == BACKEND_COMPILE_EVENT:
            self.count += 1
            self.seconds += duration


def wall_seconds(call: Callable[[], object]) -> float:
    """Seconds `call()` takes (it must return only when its work is done)."""
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def time_ours(call: Callable[[], object], runs: int, warmup: int) -> tuple[Timing, int]:
    """Times `call` (a jax computation that returns host values) after `warmup` calls; returns the timing and the
    programs the warm-up compiled (none where an earlier case compiled the same shapes). Raises SystemExit when a
    timed call compiles."""
    with CompileWatch() as warm:
        for _ in range(warmup):
            call()
    with CompileWatch() as timed:
        seconds = sorted(wall_seconds(call) for _ in range(runs))
    if timed.count:
        raise SystemExit(f"error: the timed calls compiled {timed.count} programs; the generation loop recompiles")
    return Timing(seconds, warm.seconds), warm.count


def weight_bytes(params: dict[str, Any]) -> int:
    """Bytes a decode step reads of the weights: all of them but the embedding table (it reads B rows of it)."""
    read = {key: value for key, value in params.items() if key != "embed"}
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(read))


def hbm_bandwidth(device_kind: str) -> float | None:
    """The card's HBM bytes/s from HBM_BANDWIDTH (longest matching start), or None for an unknown kind."""
    matches = [name for name in HBM_BANDWIDTH if device_kind.startswith(name)]
    return HBM_BANDWIDTH[max(matches, key=len)] if matches else None


def time_ours_cases(model: HybridLM, cases: list[Case], runs: int, warmup: int, timings: list[Timing]) -> None:
    """Our `generate` per case, appended to `timings` as each is taken: one new token for the prefill case, else
    new_tokens greedy tokens."""
    compiled = 0
    for case in cases:
        start = time.perf_counter()
        prompts = case.prompts(model.config.vocab_size).tolist()
        call = functools.partial(generate.generate, model, prompts, max(case.new_tokens, 1))
        timing, count = time_ours(call, runs, warmup)
        timings.append(timing)
        compiled += count
        print(f"ours {case}: {rate(timing.tokens_per_s(case))} tokens/s{_took(start)}", flush=True)
    if not compiled:  # the first case's warm-up compiles: none seen means jax renamed the event
        raise SystemExit(f"error: jax reported no {BACKEND_COMPILE_EVENT} events in the warm-ups; update the tool")


def time_transformers_cases(
    hf_dir: str, vocab_size: int, cases: list[Case], runs: int, warmup: int, timings: list[Timing]
) -> None:
    """transformers on the exported weights in `hf_dir`, per case, appended to `timings` as each is taken: one
    forward of the prompt for prefill, else `generate` of exactly new_tokens greedy tokens. Frees the model (and
    torch's CUDA cache) when done."""
    import torch
    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.bfloat16).to(device).eval()
    print(f"transformers: model loaded{_took(start)}", flush=True)
    for case in cases:
        start = time.perf_counter()
        prompts = torch.from_numpy(case.prompts(vocab_size).astype(np.int64)).to(device)
        run = _torch_prefill(model, prompts) if not case.new_tokens else _torch_generate(model, prompts, case)
        call = functools.partial(_synchronized, run, device)
        with torch.inference_mode():
            for _ in range(warmup):
                call()
            timings.append(Timing(sorted(wall_seconds(call) for _ in range(runs))))
        print(f"transformers {case}: {rate(timings[-1].tokens_per_s(case))} tokens/s{_took(start)}", flush=True)
    del model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


class CutShort(Exception):
    """SIGTERM arrived (e.g. from `timeout`): the table is printed and written with the rows timed so far."""


def _cut_short(signum: int, frame: object) -> None:
    raise CutShort


def _took(start: float) -> str:
    """The seconds since `start` (a perf_counter reading), for the progress lines (a case's include its warm-up)."""
    return f" ({time.perf_counter() - start:.0f} s)"


def _synchronized(run: Callable[[], object], device: str) -> None:
    """run(), then waits for the GPU's queued work when on CUDA."""
    import torch

    run()
    if device == "cuda":
        torch.cuda.synchronize()


def _torch_prefill(model: Any, prompts: Any) -> Callable[[], object]:
    """One forward of prompts [B, T] that fills the cache and computes the last token's logits only."""
    return lambda: model(input_ids=prompts, use_cache=True, logits_to_keep=1)


def _torch_generate(model: Any, prompts: Any, case: Case) -> Callable[[], object]:
    """`generate` of exactly case.new_tokens greedy tokens after prompts [B, T]; checks the output's length."""

    def call() -> None:
        out = model.generate(
            input_ids=prompts,
            attention_mask=prompts.new_ones(prompts.shape),
            do_sample=False,
            min_new_tokens=case.new_tokens,
            max_new_tokens=case.new_tokens,
            use_cache=True,
            pad_token_id=SPECIAL_TOKENS.pad,
        )
        assert out.shape == (case.batch, case.prompt + case.new_tokens), out.shape

    return call


def baseline_setup() -> str:
    """One line naming the baseline's versions and its GDN kernels (flash-linear-attention or torch's fallback)."""
    import torch
    import transformers

    kernels = "fla" if importlib.util.find_spec("fla") else "the torch fallback"
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    return f"transformers {transformers.__version__}, torch {torch.__version__} on {device}, GDN kernels: {kernels}"


def rows(
    name: str, cases: list[Case], ours: list[Timing], theirs: list[Timing], floor_s: float | None
) -> list[list[str]]:
    """The table's rows: one per case we timed (the first len(ours) cases), cells as COLUMNS; "-" for the
    baseline's cells where it has no timing (no baseline, or the run was cut short)."""
    table = []
    for i, case in enumerate(cases[: len(ours)]):
        mine = ours[i].tokens_per_s(case)
        other = theirs[i].tokens_per_s(case) if i < len(theirs) else None
        floor = "-"
        if floor_s is not None and case.batch == 1 and case.new_tokens:
            floor = f"{floor_s * case.new_tokens / statistics.median(ours[i].seconds):.1%}"
        table.append(
            [
                name,
                str(case.batch),
                str(case.prompt),
                str(case.new_tokens or PREFILL),
                rate(mine),
                "-" if other is None else rate(other),
                "-" if other is None else f"{mine / other:.2f}x",
                floor,
                f"{ours[i].compile_s:.1f}",
            ]
        )
    return table


def rate(tokens_per_s: float) -> str:
    """tokens/s as a cell: whole numbers with thousands separators, 3 significant digits below 100."""
    return f"{tokens_per_s:,.0f}" if tokens_per_s >= 100 else f"{tokens_per_s:.3g}"


def check_flags() -> None:
    """Exits with a one-line error for a count below 1 (the first call compiles, so --warmup too) or bench_train's
    --seq and --steps, which mean nothing here."""
    counts = {"--prompt": PROMPT, "--decode_prompt": DECODE_PROMPT, "--new_tokens": NEW_TOKENS, "--runs": RUNS}
    for name, flag in {**counts, "--warmup": train_setup.WARMUP}.items():
        if flag.value < 1:
            raise SystemExit(f"error: {name} {flag.value}: expected at least 1")
    if train_setup.SEQ.value is not None or train_setup.STEPS.value is not None:
        raise SystemExit("error: --seq and --steps are bench_train's; here --prompt, --decode_prompt, --new_tokens")


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    config = train_setup.flag_config()
    check_flags()
    batches = train_setup.batch_sizes(config) if train_setup.BATCH.value else list(DEFAULT_BATCHES)
    runs, warmup = RUNS.value, train_setup.WARMUP.value
    cases = [Case(1, PROMPT.value, 0)] + [Case(b, DECODE_PROMPT.value, NEW_TOKENS.value) for b in batches]
    longest = max(case.prompt + max(case.new_tokens, 1) for case in cases)
    model_config, params = train_setup.random_bf16_params(config.model, longest)
    model = nnx.merge(nnx.graphdef(abstract_model(model_config)), params)
    card = jax.devices()[0].device_kind
    bandwidth, weights = hbm_bandwidth(card), weight_bytes(params)
    floor_s = None if bandwidth is None else weights / bandwidth
    ours, theirs, setup, cut = [], [], "no baseline (--no_baseline)", None
    signal.signal(signal.SIGTERM, _cut_short)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            if not NO_BASELINE.value:
                start = time.perf_counter()
                export_params(params, model_config, tmp, dtype="bfloat16", tokens=SPECIAL_TOKENS)
                print(f"exported the weights for transformers{_took(start)}", flush=True)
            time_ours_cases(model, cases, runs, warmup, ours)
            del model, params
            if not NO_BASELINE.value:
                setup = baseline_setup()
                time_transformers_cases(tmp, model_config.vocab_size, cases, runs, warmup, theirs)
        except CutShort:
            baseline = "" if NO_BASELINE.value else f" and {len(theirs)} of the baseline's"
            cut = f"cut short by SIGTERM after {len(ours)} of our {len(cases)} rows{baseline}"
            print(cut, flush=True)
    table = rows(train_setup.config_name(), cases, ours, theirs, floor_s)
    floor = "-" if floor_s is None else f"{1e3 * floor_s:.3g} ms"
    notes = [
        f"random bf16 weights; median of {runs} timed calls after {warmup} warm-up calls; baseline: {setup}",
        f"decode floor per token: {weights / 1e9:.3g} GB of weights (all but the embedding table) at "
        f"{'-' if bandwidth is None else f'{bandwidth / 1e12:.3g} TB/s'} = {floor}",
        *([cut] if cut else []),
    ]
    print(f"\ndevice {card}, jax {jax.__version__}, commit {train_setup.git_commit()}")
    print("\n".join(notes))
    print("\n".join(train_setup.text_table(COLUMNS, table)))
    if train_setup.WRITE.value:
        with open(train_setup.WRITE.value, "a") as f:
            f.write(train_setup.section_header("Generation", card, "bench_generate.py"))
            f.write("".join(f"{line}.\n" for line in notes) + "\n" + train_setup.markdown_head(COLUMNS))
            f.write("".join(train_setup.markdown_row(row, len(COLUMNS)) for row in table))


if __name__ == "__main__":
    app.run(main, flags_parser=train_setup.parse_flags)
