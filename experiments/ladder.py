"""Scaling ladders: `--config=ladder:ARCH-SIZE` (a stable run) and `--config=ladder:ARCH-SIZE/decayMx` (its decays).

Every rung is an ordinary run config (`python -m experiments --show=ladder:hybrid-6.9M`); `python -m hybridlm.sweep
--ladder=ladder --workdir=DIR` trains them all and records one result per decay (hybridlm/sweep.py).

Sizes. One rule from d_model and depth, both growing with the rung k = 1..4: d_model = 64k and 4k layers, heads of
64 (1 to 4 of them), SwiGLU width 8/3 d_model rounded up to a multiple of 64, as OLMo-core's ladder grows d_model
and depth together. The names are the transformer's parameters without the embedding table (LM head included; vocab
8192) in millions: 0.74M (64 x 4), 2.8M (128 x 8), 6.9M (192 x 12) and 15M (256 x 16), a span of 20x (61x without
the LM head); the hybrid and GDN models are 4-15% larger (`python -m experiments --show=ladder:gdn-15M` prints each
count). The data sets the top: the 15M's 2x budget is 600M tokens, so a larger rung would repeat the local corpus
(below) still more often.

Architectures, at the same d_model and depth: `transformer`, Olmo 3's pattern (3 sliding-window layers, window
seq_len / 2 as Olmo 3's 4096 of 8192, then 1 full-attention layer); `hybrid`, Olmo Hybrid's (3 GDN layers then 1
attention layer, GDN with negative eigenvalues: allow_neg_eigval); `gdn`, every layer GDN. GDN layers take
OlmoHybridConfig's default shape (key heads as attention heads, key width 3/4 d_model over them, values twice that).

Batch and learning rate follow OLMo-core's ladder rules in N, the run's parameters without the embedding table:
batch = 2048 x 160 x (N / 108M)^(2/3) tokens and lr = 0.0047 x (N / 108M)^(-1/3) / 2 (AdamW as the Olmo recipe,
hybridlm.config_defaults). The batch is rounded to whole sequences of 1024 tokens, in multiples of 8 (it splits
over 1, 2, 4 or 8 devices), and held to at least 16 sequences: the rule gives 11 sequences at 0.74M, and a batch far
below that makes the gradient noise, not the model, set the loss of the smallest rungs.

Token budgets and the schedule (WSD: warmup, stable, decay). A rung's budgets are the `MULTIPLES` 0.5, 1 and 2 of
Chinchilla's 20 tokens a parameter: end_M = round(M x 20 N / batch) steps. Each budget's decay is linear to 0 over
its last `DECAY_FRACTION` = 20% of steps (Hägele et al. 2024 find a 20% cooldown matches a cosine to that length),
starting at branch_M = end_M - round(0.2 end_M). The warmup takes N tokens (OLMo-core's ladder), at most half the
first branch step. The stable run `ARCH-SIZE` warms up and holds the peak lr until branch_2 (its schedule would
decay to end_2: optim.schedule_steps and optim.decay_steps), saving and keeping (train.keep_steps) a checkpoint at
every branch step. The decay `ARCH-SIZE/decayMx` is the same run with the budget end_M: it starts from the stable
run's checkpoint at branch_M (config.init_from: that run's workdir, config.init_from_step: branch_M; the trainer
restores the whole train state and the data position, so the decay sees the batches the stable run would) and decays
to end_M. So one stable run and three decays give three (N, D) points at 0.5 + 1 + 2 = 3.5 x 20 N tokens' decay
plus 1.6 x 20 N stable, instead of 3.5 x 20 N for three separate runs. Each run resumes from its own workdir.

Data: the Python source corpus that `python tools/prepare_data.py --corpus=python_code --out=data/python_code`
prepares (hybridlm.data.code_corpus: 8192-id BPE, the held-out files exactly the last 5% of its tokens); any token
files work instead (`--config.data.paths=...`, and `--config.model.vocab_size` for another tokenizer). With the test
extra's packages the corpus holds 22.5M tokens on the H200 machine (Python 3.12), which the top rung's 2x budget
passes over 28 times; where more packages are installed, `--packages` takes them in and cuts the repeats
(EXPERIMENTS.md gives the command and the corpus of the committed results).

`Ladder` holds the rules' constants; a smaller one (e.g. tests' micro ladder) is another instance with its own
`get_config` and `runs`.
"""

from __future__ import annotations

import dataclasses
import math
import re

from ml_collections import config_dict

from hybridlm.config_defaults import model_config, default_run_config
from hybridlm.data import code_corpus
from hybridlm.model import ModelConfig, count_params

ARCHS = {
    "transformer": ("swa", "swa", "swa", "attn"),
    "hybrid": ("gdn", "gdn", "gdn", "attn"),
    "gdn": ("gdn",),
}
MULTIPLES = (0.5, 1.0, 2.0)
DECAY_FRACTION = 0.2
REFERENCE_PARAMS = 108e6  # OLMo-core's rules are stated relative to its 108M-parameter rung
_DECAY = re.compile(r"decay([0-9.]+)x")


def size_rule(k: int) -> tuple[int, int]:
    """(d_model, num_layers) of rung `k` (1, 2, ...): d_model 64k, 4k layers."""
    return 64 * k, 4 * k


SIZES = {name: size_rule(k) for k, name in enumerate(("0.74M", "2.8M", "6.9M", "15M"), start=1)}


@dataclasses.dataclass(frozen=True)
class Ladder:
    """The constants of a ladder's rules (module docstring): sizes by name as (d_model, num_layers), sequence length,
    head width, vocabulary, data, the batch and lr rules' values at `REFERENCE_PARAMS`, the budgets and decays."""

    sizes: dict[str, tuple[int, int]] = dataclasses.field(default_factory=lambda: dict(SIZES))
    seq_len: int = 1024
    head_dim: int = 64
    vocab_size: int = code_corpus.DEFAULT_VOCAB_SIZE
    data_source: str = "token_files"
    data_paths: tuple[str, ...] = ("data/python_code/*.npy",)
    max_bytes: int | None = None  # the builtin source's cap
    reference_batch_tokens: float = 2048 * 160
    reference_lr: float = 0.0047 / 2
    min_batch_seqs: int = 16
    batch_multiple: int = 8  # sequences
    tokens_per_param: float = 20.0
    multiples: tuple[float, ...] = MULTIPLES
    decay_fraction: float = DECAY_FRACTION
    dtype: str = "bfloat16"
    gdn_chunk_size: int = 64

    def runs(self, archs: list[str] | None = None, sizes: list[str] | None = None) -> list[str]:
        """Every run of the ladder, smallest size first: per size and architecture the stable run, then its decays."""
        archs = self._pick(archs, list(ARCHS), "--archs")
        sizes = self._pick(sizes, list(self.sizes), "--sizes")
        decays = [f"decay{m:g}x" for m in self.multiples]
        return [f"{a}-{s}{suffix}" for s in sizes for a in archs for suffix in ["", *(f"/{d}" for d in decays)]]

    @staticmethod
    def _pick(given: list[str] | None, known: list[str], flag: str) -> list[str]:
        if given is None:
            return known
        unknown = [g for g in given if g not in known]
        if unknown:
            raise ValueError(f"{flag}: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
        return [k for k in known if k in given]

    def parse(self, arg: str) -> tuple[str, str, float | None]:
        """(arch, size, budget multiple or None for the stable run) of `ARCH-SIZE[/decayMx]`."""
        rung, _, decay = arg.partition("/")
        arch, _, size = rung.partition("-")
        match = _DECAY.fullmatch(decay) if decay else None
        multiple = float(match.group(1)) if match else None
        if arch not in ARCHS or size not in self.sizes or (decay and multiple not in self.multiples):
            raise ValueError(
                f"ladder rung {arg!r} is not ARCH-SIZE[/decayMx] with ARCH in {', '.join(ARCHS)}, SIZE in "
                f"{', '.join(self.sizes)} and M in {', '.join(f'{m:g}' for m in self.multiples)}, "
                "e.g. hybrid-6.9M/decay1x"
            )
        return arch, size, multiple

    def model(self, arch: str, size: str) -> config_dict.ConfigDict:
        """The model of `arch` at `size`."""
        d_model, num_layers = self.sizes[size]
        model = model_config(
            vocab_size=self.vocab_size,
            d_model=d_model,
            num_layers=num_layers,
            layer_pattern=ARCHS[arch],
            num_heads=d_model // self.head_dim,
            mlp_hidden=64 * math.ceil(8 * d_model / (3 * 64)),
            max_seq_len=self.seq_len,
        )
        model.sliding_window = self.seq_len // 2
        model.dtype = self.dtype
        # Models this small are far from filling a GPU's memory: keep every activation (no recomputation in the
        # backward) and unroll the layer groups (no loop copies), the fastest way the step runs.
        model.remat, model.scan_layers = "none", False
        model.gdn.allow_neg_eigval = True
        model.gdn.chunk_size = self.gdn_chunk_size
        return model

    def batch_seqs(self, params: float) -> int:
        """Sequences a batch at `params` non-embedding parameters: the rule's tokens in whole sequences, a multiple
        of `batch_multiple`, at least `min_batch_seqs`."""
        tokens = self.reference_batch_tokens * (params / REFERENCE_PARAMS) ** (2 / 3)
        rounded = self.batch_multiple * round(tokens / (self.seq_len * self.batch_multiple))
        return max(self.min_batch_seqs, rounded)

    def lr(self, params: float) -> float:
        """Peak learning rate at `params` non-embedding parameters."""
        return self.reference_lr * (params / REFERENCE_PARAMS) ** (-1 / 3)

    def end_step(self, params: float, tokens_per_step: int, multiple: float) -> int:
        """The last step of the budget `multiple` x tokens_per_param x params tokens."""
        return max(2, round(multiple * self.tokens_per_param * params / tokens_per_step))

    def decay_steps(self, end: int) -> int:
        """Steps of the decay that ends at step `end`."""
        return max(1, round(self.decay_fraction * end))

    def config(self, arg: str) -> config_dict.ConfigDict:
        """The run config of `ARCH-SIZE` (stable run) or `ARCH-SIZE/decayMx` (a decay)."""
        arch, size, multiple = self.parse(arg)
        model = self.model(arch, size)
        model_params = ModelConfig.from_config(model)
        params = count_params(model_params) - model_params.vocab_size * model_params.d_model
        batch = self.batch_seqs(params)
        tokens_per_step = batch * self.seq_len
        ends = {m: self.end_step(params, tokens_per_step, m) for m in self.multiples}
        branches = {m: end - self.decay_steps(end) for m, end in ends.items()}
        warmup = min(round(params / tokens_per_step), min(branches.values()) // 2)
        last = max(self.multiples)
        end = ends[multiple if multiple is not None else last]
        num_steps = end if multiple is not None else branches[last]
        what = f"the {multiple:g}x budget's decay" if multiple is not None else "the stable run"
        config = default_run_config(
            model,
            description=f"ladder {arg}: {arch} d_model {model.d_model} x {model.num_layers} layers, {what}",
            seq_len=self.seq_len,
            batch_size=batch,
            lr=self.lr(params),
            warmup_steps=warmup,
            num_steps=num_steps,
        )
        config.data.update(source=self.data_source, paths=self.data_paths, max_bytes=self.max_bytes)
        config.data.heldout_fraction = code_corpus.HELDOUT_FRACTION
        config.optim.update(schedule="wsd", final_lr_ratio=0.0, schedule_steps=end)
        config.optim.decay_steps = end - branches[multiple if multiple is not None else last]
        config.init_from = config_dict.placeholder(str)  # a decay: the stable run's workdir (the sweep sets it)
        config.init_from_step = branches[multiple] if multiple is not None else config_dict.placeholder(int)
        keep = tuple(sorted(branches.values())) if multiple is None else ()
        config.train.update(
            log_every=max(1, num_steps // 100),
            eval_every=max(1, num_steps // 10),
            checkpoint_every=max(1, num_steps // 10),
            checkpoint_minutes=30.0,
            keep_checkpoints=2,
        )
        config.train.keep_steps = keep
        config.ladder = config_dict.ConfigDict(
            dict(
                arch=arch,
                size=size,
                family=f"{arch}-{size}",
                multiple=multiple if multiple is not None else config_dict.placeholder(float),
                params=params,
            )
        )
        return config


LADDER = Ladder()


def get_config(arg: str = "hybrid-6.9M") -> config_dict.ConfigDict:
    """The run `arg` of the default ladder (module docstring), e.g. "hybrid-6.9M" or "hybrid-6.9M/decay1x"."""
    return LADDER.config(arg)


def runs(archs: list[str] | None = None, sizes: list[str] | None = None) -> list[str]:
    """The default ladder's runs (`Ladder.runs`), for hybridlm.sweep."""
    return LADDER.runs(archs, sizes)
