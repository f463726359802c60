"""Divergence: bad steps are skipped inside the train step (hybridlm.skip_step), and a run that keeps making them
stops with one line and its checkpoints finite."""

import json
import math
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import small_config
from hybridlm import checkpoint, optim, config_checks, skip_step
from hybridlm.model.config import ConfigError
from hybridlm.trainer import TrainProgram

HERE = pathlib.Path(__file__).resolve().parent
ATTENTION_ONLY = ("attn",)


# ---------------------------------------------------------------------------------------------------------------
# The rule against a plain numpy implementation.


def _numpy_rule(losses: np.ndarray, grad_norms: np.ndarray) -> tuple[list[bool], list[int], np.ndarray]:
    """Per step: skipped, and skipped in a row; and the window after the last step (the 128 latest finite pairs,
    oldest first, [n, 2]). Written from the rule's statement, in float64."""
    history: list[tuple[float, float]] = []
    skipped, in_a_row, streak = [], [], 0
    for loss, grad_norm in zip(losses.tolist(), grad_norms.tolist()):
        finite = math.isfinite(loss) and math.isfinite(grad_norm)
        window = np.array(history[-skip_step.WINDOW :], np.float64).reshape(-1, 2)
        outlier = len(window) >= skip_step.MIN_HISTORY and any(
            value - window[:, i].mean() > skip_step.SIGMA * window[:, i].std(ddof=1)
            for i, value in enumerate((loss, grad_norm))
        )
        skip = not finite or outlier
        streak = streak + 1 if skip else 0
        skipped.append(skip)
        in_a_row.append(streak)
        if finite:
            history.append((loss, grad_norm))
    return skipped, in_a_row, np.array(history[-skip_step.WINDOW :], np.float32)


@jax.jit
def _jax_rule(losses: jax.Array, grad_norms: jax.Array) -> tuple[skip_step.SkipState, dict[str, jax.Array]]:
    """skip_step's rule over float32 [N] losses and gradient norms, as train_step applies it."""

    def step(skip, pair):
        loss, grad_norm = pair
        skipped = skip_step.should_skip(skip, loss, grad_norm)
        skip = skip_step.record(skip, loss, grad_norm, skipped)
        return skip, skip_step.step_metrics(skip, skipped)

    return jax.lax.scan(step, skip_step.initial_skip_state(), (losses, grad_norms))


def _sigmas_above(values: np.ndarray, before: int, sigmas: float) -> float:
    """The value `sigmas` sample deviations above the mean of the 128 latest finite values before index `before`."""
    window = [v for v in values[:before] if np.isfinite(v)][-skip_step.WINDOW :]
    return float(np.mean(window) + sigmas * np.std(window, ddof=1))


def _synthetic_run() -> tuple[np.ndarray, np.ndarray, set[int]]:
    """300 steps of noisy losses and gradient norms with planted bad values, and the steps that must be skipped."""
    rng = np.random.default_rng(0)
    losses = (3.0 - 0.001 * np.arange(300) + 0.05 * rng.standard_normal(300)).astype(np.float32)
    grad_norms = (0.5 + 0.02 * rng.standard_normal(300)).astype(np.float32)
    losses[10], grad_norms[11] = np.nan, np.inf  # non-finite before the warm-up: skipped all the same
    losses[40] = _sigmas_above(losses, 40, 7.0)  # an outlier before the warm-up (38 finite pairs): applied
    warm = 2 + skip_step.MIN_HISTORY  # the first step with MIN_HISTORY finite pairs before it
    losses[warm - 1] = _sigmas_above(losses, warm - 1, 7.0)  # MIN_HISTORY - 1 before it: still applied
    losses[warm] = _sigmas_above(losses, warm, 7.0)  # skipped
    losses[200] = _sigmas_above(losses, 200, 7.0)  # a loss spike after a full window: skipped
    losses[201] = _sigmas_above(losses, 201, 5.0)  # within 6 sigma: applied
    grad_norms[230] = _sigmas_above(grad_norms, 230, 7.0)  # a gradient-norm spike: skipped
    losses[260:264] = np.nan  # four in a row
    losses[270] = _sigmas_above(losses, 270, -10.0)  # far below the mean: applied (only rises count)
    return losses, grad_norms, {10, 11, warm, 200, 230, 260, 261, 262, 263}


def test_the_skip_rule_matches_a_numpy_implementation():
    """Non-finite values are skipped from the first step; outliers over 6 sigma only once 64 finite pairs are in the
    window; every finite pair enters the window (a skipped outlier too), no non-finite one does."""
    losses, grad_norms, expected = _synthetic_run()
    skipped, in_a_row, window = _numpy_rule(losses, grad_norms)
    assert {i for i, s in enumerate(skipped) if s} == expected  # the reference itself sees the planted steps

    skip, metrics = jax.device_get(_jax_rule(jnp.asarray(losses), jnp.asarray(grad_norms)))
    assert metrics["skipped"].tolist() == [float(s) for s in skipped]
    assert metrics["consecutive_skips"].tolist() == in_a_row and max(in_a_row) == 4
    assert metrics["skipped_steps"].tolist() == np.cumsum(skipped).tolist()
    finite_pairs = int(np.sum(np.isfinite(losses) & np.isfinite(grad_norms)))
    assert skip["recorded"] == finite_pairs == 300 - 6
    oldest = finite_pairs % skip_step.WINDOW  # the ring buffer's oldest slot once it has wrapped
    ring = np.stack([skip["losses"], skip["grad_norms"]], axis=1)
    np.testing.assert_array_equal(np.roll(ring, -oldest, axis=0), window)


# ---------------------------------------------------------------------------------------------------------------
# The optimizer and the train step.


def test_unskipped_steps_are_optax_adamw_bit_for_bit():
    """make_optimizer spells out optax.adamw so that its Adam step can be skipped; steps not skipped give optax's
    clip + adamw updates and state exactly."""
    config = small_config().optim
    ours = optim.make_optimizer(config, num_steps=10)
    schedule = optim.learning_rate_schedule(config, num_steps=10)
    adamw = optax.adamw(
        schedule, config.b1, config.b2, config.eps, weight_decay=config.weight_decay, mask=optim.weight_decay_mask
    )
    reference = optax.chain(optax.clip_by_global_norm(config.grad_clip), adamw)
    rng = np.random.default_rng(0)
    params = {"embed": {"embedding": rng.normal(size=(7, 3))}, "lm_head": {"kernel": rng.normal(size=(3, 7))}}
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    states = ours.init(params), reference.init(params)
    for step in range(4):
        grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape) * (step + 1), jnp.float32), params)
        updates, ours_state = jax.jit(ours.update)(grads, states[0], params, skipped=jnp.bool_(False))
        expected, reference_state = jax.jit(reference.update)(grads, states[1], params)
        jax.tree.map(np.testing.assert_array_equal, (updates, ours_state), (expected, reference_state))
        params, states = optax.apply_updates(params, updates), (ours_state, reference_state)



@pytest.fixture(scope="module")
def program() -> TrainProgram:
    """The small run with attention layers only (skipping does not depend on the layers; these compile fastest)."""
    config = small_config(ATTENTION_ONLY)
    config.train.num_steps = 100
    return TrainProgram(config, config_checks.validate(config))


def _batch(program: TrainProgram, seed: int, poisoned: bool = False) -> dict[str, np.ndarray]:
    """Random byte tokens [batch, seq], one document per row; `poisoned` puts a token id past the vocabulary in the
    first row, whose embedding lookup gives NaN (a corrupt batch)."""
    data = program.config.data
    tokens = np.random.default_rng(seed).integers(0, 256, (data.batch_size, data.seq_len + 1), dtype=np.int32)
    if poisoned:
        tokens[0, 0] = program.model_config.vocab_size
    segment_ids = np.ones((data.batch_size, data.seq_len), np.int32)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "segment_ids": segment_ids}


def _is_schedule(x) -> bool:
    return isinstance(x, optax.ScaleByScheduleState)


def _schedule_counts_and_rest(opt_state) -> tuple[list[int], list[np.ndarray]]:
    """The learning-rate schedule's counts, and every other leaf of the optimizer state (moments, AdamW's count)."""
    parts = jax.tree.leaves(opt_state, is_leaf=_is_schedule)
    return [int(p.count) for p in parts if _is_schedule(p)], [p for p in parts if not _is_schedule(p)]


def test_a_nan_step_is_skipped_and_leaves_the_state_as_it_was(program):
    """A NaN batch: parameters, moments and AdamW's count stay bitwise; the step, the schedule's count and the skip
    counters advance; the next good step is applied."""
    state, _ = program.train_step(program.init_state(), _batch(program, 0))
    before = jax.device_get(state)  # a host copy: the step donates its input state
    state, metrics = program.train_step(state, _batch(program, 1, poisoned=True))
    after, metrics = jax.device_get((state, metrics))
    assert np.isnan(metrics["loss"]) and np.isnan(metrics["grad_norm"])
    assert (metrics["skipped"], metrics["skipped_steps"], metrics["consecutive_skips"]) == (1.0, 1, 1)
    jax.tree.map(np.testing.assert_array_equal, after["params"], before["params"])
    schedule_counts, rest = _schedule_counts_and_rest(after["opt_state"])
    jax.tree.map(np.testing.assert_array_equal, rest, _schedule_counts_and_rest(before["opt_state"])[1])
    assert after["step"] == 2 and schedule_counts == [2]  # the schedule moves on with the step
    assert after["skip"]["recorded"] == 1  # the NaN pair stays out of the window

    state, metrics = jax.device_get(program.train_step(state, _batch(program, 2)))
    assert (metrics["skipped"], metrics["skipped_steps"], metrics["consecutive_skips"]) == (0.0, 1, 0)
    assert not np.array_equal(state["params"]["lm_head"]["kernel"], before["params"]["lm_head"]["kernel"])
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state))
    assert state["skip"]["recorded"] == 2


def test_a_non_finite_state_is_never_saved(program):
    state = program.init_state()
    program.check_savable(0, state)
    state["params"]["final_norm"]["weight"] = state["params"]["final_norm"]["weight"].at[0].set(jnp.inf)
    with pytest.raises(skip_step.DivergenceError, match=r"after step 7 holds non-finite values, so it was not saved"):
        program.check_savable(7, state)


def test_max_consecutive_skips_must_be_positive():
    config = small_config()
    config.train.max_consecutive_skips = 0
    with pytest.raises(ConfigError, match=r"config.train.max_consecutive_skips=0 must be positive"):
        config_checks.validate(config)


# ---------------------------------------------------------------------------------------------------------------
# A run that diverges, through the command line.

_DIVERGING_CONFIG = """
import sys
sys.path.insert(0, {tests!r})
from conftest import small_config


def get_config():
    config = small_config({layers!r})
    config.optim.lr = 1e8
    config.train.update(num_steps=30, checkpoint_every=1, eval_every=100, keep_checkpoints=2, max_consecutive_skips=2)
    return config
"""


def test_a_diverging_run_skips_then_stops_with_one_line_and_finite_checkpoints(tmp_path, program):
    """lr 1e8 makes every loss NaN after the first real update. Those steps are skipped and counted; at the second
    in a row the command exits 2 with one line naming the steps, the loss and the fix. That step, a checkpoint step,
    is not saved; the two checkpoints kept, the steps before it, restore finite."""
    config_file = tmp_path / "diverging.py"
    config_file.write_text(_DIVERGING_CONFIG.format(tests=str(HERE), layers=ATTENTION_ONLY))
    workdir = tmp_path / "run"
    command = [sys.executable, "-m", "hybridlm.train", f"--config={config_file}", f"--workdir={workdir}"]
    result = subprocess.run(command, cwd=HERE.parent, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    error = result.stderr.strip().splitlines()[-1]

    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    logged = {line["step"]: line for line in lines if "loss" in line}
    first = min(step for step, line in logged.items() if line["skipped"])
    last = first + 1  # the second skip in a row
    assert first >= 2 and sorted(logged) == list(range(1, last + 1))  # nothing logged past the streak
    assert [logged[s]["skipped_steps"] for s in (first, last)] == [1, 2]
    assert all(math.isnan(float(logged[s]["loss"])) for s in (first, last))
    assert error == (
        f"error: training diverged: steps {first}-{last} were all skipped (2 in a row, "
        f"config.train.max_consecutive_skips=2); at step {last} the loss was nan and the gradient norm nan; "
        "the state was not saved; lower config.optim.lr (now 1e+08) or raise config.optim.warmup_steps (now 2), "
        "then resume from the latest checkpoint with --config.train.allow_resume_changes=True, or start over in a "
        "new --workdir"
    )

    saved = sorted(int(path.name) for path in checkpoint.checkpoints_dir(workdir).iterdir() if path.name.isdigit())
    assert saved == [last - 2, last - 1]
    checkpointer = checkpoint.Checkpointer(workdir, keep=2)
    for step in saved:
        state, _ = checkpointer.restore(step, program.abstract_state())
        assert int(state["step"]) == step and bool(skip_step.all_finite(state)), step
    checkpointer.close()
