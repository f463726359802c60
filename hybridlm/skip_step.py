"""Skipping bad train steps inside the jitted step, and stopping a run that keeps making them.

The rule is OLMo-core's SkipStepAdamW, which Olmo Hybrid trains with. A step is skipped when

  - its loss or its gradient norm (before clipping) is not finite, or
  - once the window holds MIN_HISTORY (64) values, its loss or its gradient norm is more than SIGMA (6) sample
    standard deviations above the mean of the window: the WINDOW (128) latest finite (loss, gradient norm) pairs
    before this step. Half a window is OLMo-core's warm-up too: the mean and deviation of 64 values are steady
    enough, and the fast fall of the first steps' loss is mostly over.

A skipped step changes neither the parameters nor AdamW's moments and bias-correction count
(`scale_by_adam_unless_skipped`, which hybridlm.optim builds AdamW with). The step counter still advances, and with
it the data (the next step reads the next batch) and the learning-rate schedule (its count in the optimizer state
moves on with the step), as in OLMo-core, whose scheduler follows the trainer's step.

Every finite pair enters the window, a skipped step's too (as in OLMo-core): a lasting rise of the loss or the
gradient norm becomes the new normal after a few steps instead of stalling the run. Pairs with a non-finite value
never enter it; they would make its mean and deviation NaN (OLMo-core lets them in). Unlike OLMo-core's two-sided
|z| test, only values above the mean count: a loss far below the window is progress, not a reason to skip.

The window and the skip counters are the train state's "skip" entry (`initial_skip_state`): small arrays,
replicated on every device, saved and restored bit for bit with the rest of the state.

With finite gradients (the gradient norm is finite, so is every squared gradient) and clipping, AdamW's update
is finite, so the parameters stay finite unless a finite update overflows float32 (an absurd learning rate, where
p * (1 - lr * weight_decay) passes 3.4e38). The trainer also checks the whole state before every checkpoint
(`all_finite`) and never writes a non-finite one; so checkpoint rotation, which deletes the oldest, never deletes
the newest finite checkpoint in favour of a non-finite one.

On the host, `SkipStreak` stops the run with a `DivergenceError` after `config.train.max_consecutive_skips`
skipped steps in a row.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from ml_collections import config_dict

WINDOW = 128  # finite (loss, gradient norm) pairs the outlier test compares a step with
SIGMA = 6.0  # how many standard deviations above the window's mean make a value an outlier
MIN_HISTORY = WINDOW // 2  # pairs the window must hold before the outlier test applies

# {"losses", "grad_norms": float32 [WINDOW] ring buffers of the latest finite pairs, the pair of step k (counting
#  finite pairs only) in slot k % WINDOW; "recorded": int32 [], finite pairs recorded so far; "skipped_steps":
#  int32 [], steps skipped so far; "consecutive_skips": int32 [], steps skipped in a row up to the latest}
SkipState = dict[str, jax.Array]


class DivergenceError(RuntimeError):
    """Training stopped: too many steps in a row were skipped, or the state to be saved was not finite. The message
    is one line naming the step, its loss and gradient norm, and the fix."""


def initial_skip_state() -> SkipState:
    """An empty window and zero counters."""
    return {
        "losses": jnp.zeros((WINDOW,), jnp.float32),
        "grad_norms": jnp.zeros((WINDOW,), jnp.float32),
        "recorded": jnp.zeros((), jnp.int32),
        "skipped_steps": jnp.zeros((), jnp.int32),
        "consecutive_skips": jnp.zeros((), jnp.int32),
    }


def _above_window(value: jax.Array, history: jax.Array, count: jax.Array) -> jax.Array:
    """Whether `value` (float32 []) is more than SIGMA sample standard deviations above the mean of the first `count`
    (int32 [], at least 2) entries of `history` (float32 [WINDOW]). Written without a division, so a window of equal
    values (deviation 0) flags only values above them."""
    valid = jnp.arange(history.shape[0]) < count
    n = count.astype(jnp.float32)
    mean = jnp.sum(jnp.where(valid, history, 0.0)) / n
    variance = jnp.sum(jnp.where(valid, (history - mean) ** 2, 0.0)) / (n - 1.0)
    return value - mean > SIGMA * jnp.sqrt(variance)


def should_skip(skip: SkipState, loss: jax.Array, grad_norm: jax.Array) -> jax.Array:
    """bool []: whether the step with this loss and gradient norm (float32 []) is skipped, judged against the window
    in `skip` as it was before the step."""
    count = jnp.minimum(skip["recorded"], WINDOW)
    outlier = _above_window(loss, skip["losses"], count) | _above_window(grad_norm, skip["grad_norms"], count)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    return ~finite | ((count >= MIN_HISTORY) & outlier)


def record(skip: SkipState, loss: jax.Array, grad_norm: jax.Array, skipped: jax.Array) -> SkipState:
    """`skip` after a step: its (loss, gradient norm) in the window's next slot if both are finite (overwriting the
    oldest once the window is full), and the counters advanced by `skipped` (bool [])."""
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    slot = skip["recorded"] % WINDOW
    return {
        "losses": jnp.where(finite, skip["losses"].at[slot].set(loss.astype(jnp.float32)), skip["losses"]),
        "grad_norms": jnp.where(
            finite, skip["grad_norms"].at[slot].set(grad_norm.astype(jnp.float32)), skip["grad_norms"]
        ),
        "recorded": skip["recorded"] + finite.astype(jnp.int32),
        "skipped_steps": skip["skipped_steps"] + skipped.astype(jnp.int32),
        "consecutive_skips": jnp.where(skipped, skip["consecutive_skips"] + 1, 0),
    }


def unless_skipped(skipped: jax.Array, new: Any, old: Any) -> Any:
    """`old` (a pytree of arrays) where `skipped` (bool []) holds, else `new`: an element-wise select that XLA fuses
    into the update, so no second copy of the parameters is kept."""
    return jax.tree.map(lambda n, o: jnp.where(skipped, o, n), new, old)


def scale_by_adam_unless_skipped(b1: float, b2: float, eps: float) -> optax.GradientTransformationExtraArgs:
    """optax.scale_by_adam whose update also takes `skipped` (bool []): where it holds, the moments and the count
    stay as they were, and the update it returns is not for applying (the train step keeps the parameters).
    Otherwise it is optax.scale_by_adam bit for bit.

    The update is formed from the moments kept, so XLA writes them in place and reads them back for the update.
    Selecting the moments after optax's own update instead keeps new and old moments alive together: in XLA:CPU's
    buffer assignment for the small configs, temporaries grew by a quarter of the parameters' bytes."""
    adam = optax.scale_by_adam(b1, b2, eps)

    def update(
        grads: Any, state: optax.ScaleByAdamState, params: Any = None, *, skipped: jax.Array | bool = False, **_: Any
    ) -> tuple[Any, optax.ScaleByAdamState]:
        _, moved = adam.update(grads, state, params)
        kept = unless_skipped(skipped, moved, state)
        mu_hat = optax.tree.bias_correction(kept.mu, b1, kept.count)
        nu_hat = optax.tree.bias_correction(kept.nu, b2, kept.count)
        return jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu_hat, nu_hat), kept

    return optax.GradientTransformationExtraArgs(adam.init, update)


def step_metrics(skip: SkipState, skipped: jax.Array) -> dict[str, jax.Array]:
    """What a log line says of skipping: `skipped` (1.0 if this step was, else 0.0), `skipped_steps` (so far, this
    one included) and `consecutive_skips` (in a row, ending at this step)."""
    return {
        "skipped": skipped.astype(jnp.float32),
        "skipped_steps": skip["skipped_steps"],
        "consecutive_skips": skip["consecutive_skips"],
    }


def all_finite(tree: Any) -> jax.Array:
    """bool []: whether every element of every array in `tree` is finite (integer arrays always are)."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _fix(optim: config_dict.ConfigDict) -> str:
    """What a divergence error says to do: a smaller or slower-rising learning rate, and how to go on."""
    return (
        f"lower config.optim.lr (now {optim.lr:g}) or raise config.optim.warmup_steps (now {optim.warmup_steps}), "
        "then resume from the latest checkpoint with --config.train.allow_resume_changes=True, or start over in a "
        "new --workdir"
    )


def non_finite_state_error(step: int, optim: config_dict.ConfigDict) -> DivergenceError:
    """The error for a train state that is not finite after `step`, which is therefore not saved."""
    return DivergenceError(
        f"training diverged: the train state after step {step} holds non-finite values, so it was not saved; "
        + _fix(optim)
    )


class SkipStreak:
    """Stops a run after `limit` skipped steps in a row (`config.train.max_consecutive_skips`).

    Each step's metrics are read one step late, while the next step runs, so the device never waits for the host;
    `settle` reads the latest ones at once (before a checkpoint is saved). A run that stops has computed at most one
    step more than the streak, and saves nothing after it.
    """

    def __init__(self, limit: int, optim: config_dict.ConfigDict):
        self._limit = limit
        self._optim = optim
        self._held: tuple[int, dict[str, jax.Array]] | None = None

    def push(self, step: int, metrics: dict[str, jax.Array]) -> None:
        """Checks the step held before, then holds step `step`'s metrics (train_step's, not yet read)."""
        self.settle()
        self._held = (step, metrics)

    def settle(self) -> None:
        """Checks the held step's metrics, if any; raises DivergenceError when its streak of skips reached the
        limit."""
        if self._held is None:
            return
        step, metrics = self._held
        self._held = None
        streak = int(metrics["consecutive_skips"])
        if streak < self._limit:
            return
        loss, grad_norm = float(metrics["loss"]), float(metrics["grad_norm"])
        raise DivergenceError(
            f"training diverged: steps {step - streak + 1}-{step} were all skipped ({streak} in a row, "
            f"config.train.max_consecutive_skips={self._limit}); at step {step} the loss was {loss:.4g} and the "
            f"gradient norm {grad_norm:.4g}; the state was not saved; " + _fix(self._optim)
        )
