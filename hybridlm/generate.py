"""Cached generation: prompts of different lengths in one batch, prefilled once, then jitted runs of decode steps.

The prompts are left-padded to the longest: row b holds its n_b prompt tokens at the end, positions -1 on the padding
and 0..n_b-1 on the prompt, and segment id 0 on the padding, 1 on the prompt, so neither attention, the GDN state nor
the conv taps reach from padding into the prompt. Token t of the generation sits at position n_b + t. A decode step
is one jitted program that donates the cache; the host queues STEPS_PER_SYNC of them before it reads their tokens, so
the device runs them back to back. A generation compiles prefill once per longest-prompt length and the decode step
once per (batch, cache length, sampling).

Command line, streaming each prompt's text as its tokens come (one prompt) or printing each completion (several):

  python -m hybridlm.generate --model=WORKDIR_OR_HF_DIR --prompt="Once upon a time" --max_new_tokens=64
  python -m hybridlm.generate --model=... --prompts_file=prompts.txt --temperature=0.8 --top_p=0.95
"""

from __future__ import annotations

import functools
import pathlib
import sys
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from hybridlm.model import HybridLM
from hybridlm.sampling import Sampling, next_tokens

# Decode steps the device runs between two reads of the host: fewer reads (each one a sync and a dispatch) against
# finer streaming and fewer steps wasted past the last row's stop token.
STEPS_PER_SYNC = 16


class GenerateError(ValueError):
    """Generation arguments that cannot work; the message names the argument and the fix."""


@functools.partial(jax.jit, static_argnames=("graphdef", "batch", "max_len"))
def _init_cache(graphdef: nnx.GraphDef, state: nnx.State, batch: int, max_len: int) -> list[dict[str, jax.Array]]:
    return nnx.merge(graphdef, state).init_cache(batch, max_len)


@functools.partial(jax.jit, static_argnames=("graphdef", "sampling"), donate_argnames=("cache",))
def _prefill(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    tokens: jax.Array,
    positions: jax.Array,
    cache: list[dict[str, jax.Array]],
    key: jax.Array,
    sampling: Sampling,
) -> tuple[jax.Array, list[dict[str, jax.Array]]]:
    """Left-padded prompts tokens, positions: int [B, T] -> (the first new token of each row int32 [B], cache)."""
    segment_ids = (positions >= 0).astype(jnp.int32)
    logits, cache = nnx.merge(graphdef, state).prefill(tokens, positions, segment_ids, cache)
    return next_tokens(logits, key, sampling), cache


@functools.partial(jax.jit, static_argnames=("graphdef", "sampling"), donate_argnames=("cache",))
def _decode(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    tokens: jax.Array,
    lengths: jax.Array,
    cache: list[dict[str, jax.Array]],
    key: jax.Array,
    index: jax.Array,
    sampling: Sampling,
) -> tuple[jax.Array, list[dict[str, jax.Array]]]:
    """One decode step. tokens: int [B], the last tokens; lengths: int [B], the prompts' lengths. The new token is
    token `index` of the generation (after token index - 1, at position length + index - 1), drawn with the key
    fold_in(key, index) -> (the new tokens int32 [B], cache)."""
    positions = lengths + index - 1
    logits, cache = nnx.merge(graphdef, state).decode(tokens, positions, cache)
    return next_tokens(logits, jax.random.fold_in(key, index), sampling), cache


@jax.jit
def _as_two_rows(tokens: jax.Array, cache: list[dict[str, jax.Array]]) -> tuple[jax.Array, list[dict[str, jax.Array]]]:
    """One row's new tokens int32 [1] and cache -> the same as two equal rows (the batch is axis 1 of the leaves)."""
    return jnp.concatenate([tokens, tokens]), jax.tree.map(lambda a: jnp.concatenate([a, a], axis=1), cache)


def check_prompts(prompts: Sequence[Sequence[int]], max_new_tokens: int, max_seq_len: int, vocab_size: int) -> None:
    """Raises GenerateError for no prompts, an empty prompt, a token id outside the vocab, max_new_tokens < 1, or a
    prompt that with max_new_tokens does not fit in max_seq_len tokens."""
    if not prompts:
        raise GenerateError("prompts is empty; give at least one prompt")
    if max_new_tokens < 1:
        raise GenerateError(f"max_new_tokens={max_new_tokens} must be >= 1")
    for i, prompt in enumerate(prompts):
        if not len(prompt):
            raise GenerateError(f"prompt {i} is empty; give each prompt at least one token")
        if len(prompt) > max_seq_len:
            raise GenerateError(
                f"prompt {i} has {len(prompt)} tokens but the model takes at most {max_seq_len} "
                "(config.model.max_seq_len); shorten the prompt"
            )
        if len(prompt) + max_new_tokens > max_seq_len:
            raise GenerateError(
                f"prompt {i} ({len(prompt)} tokens) + max_new_tokens={max_new_tokens} exceeds the model's "
                f"max_seq_len={max_seq_len}; lower max_new_tokens to at most {max_seq_len - len(prompt)}"
            )
        outside = [t for t in prompt if not 0 <= t < vocab_size]
        if outside:
            raise GenerateError(f"prompt {i} has token id {outside[0]} outside the model's vocab [0, {vocab_size})")


def stream(
    model: HybridLM,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    sampling: Sampling = Sampling(),
    seed: int = 0,
    stop_tokens: Sequence[int] = (),
    steps_per_sync: int = STEPS_PER_SYNC,
) -> Iterator[list[int | None]]:
    """Generates from each prompt, yielding the new token of each row step by step (None for a row that has
    stopped). A row stops after a stop token (which it keeps) or max_new_tokens tokens; the stream ends when every
    row has stopped. Token t is drawn with the key fold_in(PRNGKey(seed), t). The device runs `steps_per_sync` decode
    steps between two reads of the host, so the steps come in bursts of that many, and up to steps_per_sync - 1
    steps are computed past the point where every row stopped."""
    config = model.config
    check_prompts(prompts, max_new_tokens, config.max_seq_len, config.vocab_size)
    if steps_per_sync < 1:
        raise GenerateError(f"steps_per_sync={steps_per_sync}: give 1 or more decode steps per read of the host")
    lengths = np.array([len(p) for p in prompts])
    batch, width = len(prompts), int(lengths.max())
    tokens = np.zeros((batch, width), np.int32)
    positions = np.full((batch, width), -1, np.int32)
    for row, prompt in enumerate(prompts):
        tokens[row, width - len(prompt) :] = prompt
        positions[row, width - len(prompt) :] = np.arange(len(prompt))
    graphdef, state = nnx.split(model)
    key = jax.random.key(seed)
    cache = _init_cache(graphdef, state, batch, width + max_new_tokens)
    last, cache = _prefill(graphdef, state, tokens, positions, cache, jax.random.fold_in(key, 0), sampling)
    if batch == 1:
        # One prompt decodes as two equal rows, the second's tokens dropped: XLA's GPU compiler lowers some one-row
        # projections as slow reductions (the 1B hybrid's decode step took 2.11 ms at one row, 1.28 ms at two, on an
        # H200; BENCHMARKS.md, 2026-12-02).
        last, cache = _as_two_rows(last, cache)
        lengths = np.concatenate([lengths, lengths])
    prompt_lengths = jnp.asarray(lengths, jnp.int32)
    stopped, stops = np.zeros(batch, bool), np.asarray(list(stop_tokens), np.int64)
    drawn, new = 1, np.asarray(last)[:batch, None]  # tokens drawn per row; those not yet yielded [batch, n]
    while True:
        for column in new.T:
            yield [None if done else int(t) for t, done in zip(column, stopped)]
            stopped |= np.isin(column, stops)
            if stopped.all():
                return
        if drawn == max_new_tokens:
            return
        run = []  # the steps are queued on the device, one program each, before the host reads their tokens
        for index in range(drawn, min(drawn + steps_per_sync, max_new_tokens)):
            last, cache = _decode(graphdef, state, last, prompt_lengths, cache, key, jnp.int32(index), sampling)
            run.append(last)
        drawn, new = drawn + len(run), np.asarray(jnp.stack(run, axis=1))[:batch]


def generate(
    model: HybridLM,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    sampling: Sampling = Sampling(),
    seed: int = 0,
    stop_tokens: Sequence[int] = (),
    steps_per_sync: int = STEPS_PER_SYNC,
) -> list[list[int]]:
    """The new tokens of each prompt (without the prompt), as `stream` draws them."""
    out: list[list[int]] = [[] for _ in prompts]
    for step in stream(model, prompts, max_new_tokens, sampling, seed, stop_tokens, steps_per_sync):
        for row, token in zip(out, step):
            if token is not None:
                row.append(token)
    return out


def define_flags() -> None:
    """Defines the command line's flags. Only the command line calls it, so importing this module (as hybridlm.api
    does) defines none, and `python -m hybridlm.generate` defines them once."""
    flags.DEFINE_string("model", None, "A training workdir or a Hugging Face directory (hybridlm.api.load_model).")
    flags.DEFINE_string("prompt", None, "One prompt.")
    flags.DEFINE_string("prompts_file", None, "A text file of prompts, one per non-empty line.")
    flags.DEFINE_integer("max_new_tokens", 128, "Tokens to generate per prompt at most.")
    flags.DEFINE_float("temperature", 0.0, "0: greedy; above 0: sample from softmax(logits / T).")
    flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (0: all).")
    flags.DEFINE_float("top_p", 1.0, "Sample among the most likely tokens of probability mass p (1: all).")
    flags.DEFINE_integer("seed", 0, "Seed of the sampling keys.")
    flags.DEFINE_bool("stop_at_eos", True, "Stop a prompt at the tokenizer's end-of-document token.")


def _read_prompts() -> list[str]:
    prompt, prompts_file = flags.FLAGS.prompt, flags.FLAGS.prompts_file
    if (prompt is None) == (prompts_file is None):
        raise app.UsageError("give exactly one of --prompt or --prompts_file")
    if prompt is not None:
        return [prompt]
    path = pathlib.Path(prompts_file)
    if not path.is_file():
        raise app.UsageError(f"--prompts_file={path}: no such file")
    return [line for line in path.read_text().splitlines() if line.strip()]


def main(argv: list[str]) -> None:
    from hybridlm.api import load_model  # here: hybridlm.api imports this module

    del argv
    args = flags.FLAGS
    if args.model is None:
        raise app.UsageError("--model is required: a training workdir or a Hugging Face directory")
    try:
        prompts = _read_prompts()
        model = load_model(args.model)
        tokenizer = model.tokenizer()
        sampling = Sampling(args.temperature, args.top_k, args.top_p)
        ids = [p.tolist() for p in tokenizer.encode_batch(prompts)]
        check_prompts(ids, args.max_new_tokens, model.config.max_seq_len, model.config.vocab_size)
    except (OSError, ValueError) as e:  # a bad model directory, prompt file, tokenizer or sampling setting
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    stop_tokens = [tokenizer.eos_id] if args.stop_at_eos else []
    outputs: list[list[int]] = [[] for _ in prompts]
    shown = ""
    for step in stream(model.module(), ids, args.max_new_tokens, sampling, args.seed, stop_tokens):
        for row, token in zip(outputs, step):
            if token is not None:
                row.append(token)
        if len(prompts) == 1:
            text = tokenizer.decode(outputs[0])
            if not text.endswith("\ufffd"):  # wait for the rest of a character split over tokens
                sys.stdout.write(text[len(shown) :])
                sys.stdout.flush()
                shown = text
    if len(prompts) == 1:
        sys.stdout.write(tokenizer.decode(outputs[0])[len(shown) :] + "\n")
        return
    for prompt, output in zip(prompts, outputs):
        print(f"{prompt}{tokenizer.decode(output)}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
