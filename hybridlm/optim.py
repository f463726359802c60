"""AdamW with Olmo's settings: warmup then a decay from the SCHEDULES table, global-norm clipping, no decay on
embeddings."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from hybridlm import skip_step
from hybridlm.model.config import ConfigError


def _cosine(optim: Any, peak: float, final: float, steps: int) -> optax.Schedule:
    return optax.cosine_decay_schedule(peak, steps, alpha=optim.final_lr_ratio)


def _linear(optim: Any, peak: float, final: float, steps: int) -> optax.Schedule:
    return optax.linear_schedule(peak, final, steps)


def _wsd(optim: Any, peak: float, final: float, steps: int) -> optax.Schedule:
    """Constant, then linear over the last `optim.decay_steps` steps (when the config has it and it is set: a decay
    that branches from a stable run's checkpoint at step `schedule_end - decay_steps`, experiments/ladder.py), else
    over the last `optim.decay_fraction` of the steps."""
    stable = steps - (optim.get("decay_steps") or max(int(round(steps * optim.decay_fraction)), 1))
    return optax.join_schedules(
        [optax.constant_schedule(peak), optax.linear_schedule(peak, final, steps - stable)], [stable]
    )


def _split_cosine(optim: Any, peak: float, final: float, steps: int) -> optax.Schedule:
    """A cosine whose first half ends at the run's step `optim.midpoint_step` (lr (peak + final) / 2) and whose second
    half takes the rest of the steps: the halves may differ in length, as in Olmo 3 7B's stage 1, whose 5T-token
    cosine was stretched to end at 7T tokens from its midpoint on."""
    first = optim.midpoint_step - optim.warmup_steps
    second = steps - first

    def schedule(step: jax.Array) -> jax.Array:
        phase = jnp.where(step < first, step / (2 * first), 0.5 + (step - first) / (2 * second))
        return final + (peak - final) * (1 + jnp.cos(jnp.pi * jnp.minimum(phase, 1.0))) / 2

    return schedule


# config.optim.schedule -> its decay after warmup: (optim, peak lr, final lr, steps from the end of warmup to the end
# of the schedule) -> an optax schedule over those steps, from peak to final.
_DECAYS = {"cosine": _cosine, "linear": _linear, "wsd": _wsd, "split_cosine": _split_cosine}
SCHEDULES = tuple(_DECAYS)


def schedule_end(optim: Any, num_steps: int) -> int:
    """The step where the decay reaches lr * final_lr_ratio: `optim.schedule_steps`, or `num_steps` when None."""
    end = optim.get("schedule_steps")
    return num_steps if end is None else end


def check_schedule(optim: Any, num_steps: int) -> None:
    """Raises ConfigError when config.optim's schedule cannot be laid out over a run of `num_steps` steps."""
    warmup, end = optim.warmup_steps, schedule_end(optim, num_steps)
    if optim.schedule not in _DECAYS:
        raise ConfigError(f"config.optim.schedule={optim.schedule!r} is not one of {SCHEDULES}")
    if end <= warmup:
        raise ConfigError(
            f"config.optim.schedule_steps={end} must be above config.optim.warmup_steps={warmup} (None: the run's "
            "num_steps)"
        )
    decay = optim.get("decay_steps")
    if optim.schedule == "wsd" and decay is not None and not 0 < decay <= end - warmup:
        raise ConfigError(
            f"config.optim.decay_steps={decay} must be in [1, {end - warmup}]: the steps between the warmup's end, "
            f"step {warmup}, and the schedule's end, step {end} (None: config.optim.decay_fraction of them)"
        )
    midpoint = optim.get("midpoint_step")
    if optim.schedule == "split_cosine" and not (midpoint is not None and warmup < midpoint < end):
        raise ConfigError(
            f"config.optim.midpoint_step={midpoint} must lie between config.optim.warmup_steps={warmup} and the "
            f"schedule's end, step {end}, for schedule 'split_cosine'"
        )


def learning_rate_schedule(optim: Any, num_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `optim.lr` over `optim.warmup_steps`, then the decay `optim.schedule` names to
    `lr * final_lr_ratio` at `schedule_end` (a run of `num_steps` may stop before it), held there after. Raises
    ConfigError as `check_schedule`."""
    check_schedule(optim, num_steps)
    peak, final, warmup = optim.lr, optim.lr * optim.final_lr_ratio, optim.warmup_steps
    decay = _DECAYS[optim.schedule](optim, peak, final, schedule_end(optim, num_steps) - warmup)
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def weight_decay_mask(params: Any) -> Any:
    """True for every parameter that gets weight decay: all but the token embeddings."""
    return jax.tree_util.tree_map_with_path(lambda path, _: not _is_embedding(path), params)


def _is_embedding(path: tuple[Any, ...]) -> bool:
    return any(getattr(entry, "key", None) == "embed" for entry in path)


def make_optimizer(optim: Any, num_steps: int) -> optax.GradientTransformationExtraArgs:
    """Clip by global norm, then AdamW (decoupled weight decay masked off the embeddings): optax.adamw's chain, whose
    update also takes `skipped` (bool []): a skipped step keeps AdamW's moments and count (hybridlm.skip_step)."""
    return optax.chain(
        optax.clip_by_global_norm(optim.grad_clip),
        optax.chain(
            skip_step.scale_by_adam_unless_skipped(optim.b1, optim.b2, optim.eps),
            optax.add_decayed_weights(optim.weight_decay, weight_decay_mask),
            optax.scale_by_learning_rate(learning_rate_schedule(optim, num_steps)),
        ),
    )
