"""AdamW with Olmo's settings: warmup then cosine / linear / WSD decay, global-norm clipping, no decay on embeddings."""

from __future__ import annotations

from typing import Any

import jax
import optax

from hybridlm import skip_step

SCHEDULES = ("cosine", "linear", "wsd")


def learning_rate_schedule(optim: Any, num_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `optim.lr` over `optim.warmup_steps`, then decay to `lr * final_lr_ratio` at
    `num_steps`: cosine, linear, or WSD (constant, then linear over the last `decay_fraction` of the run)."""
    peak, final = optim.lr, optim.lr * optim.final_lr_ratio
    warmup = optim.warmup_steps
    decay_steps = max(num_steps - warmup, 1)
    if optim.schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=optim.final_lr_ratio)
    elif optim.schedule == "linear":
        decay = optax.linear_schedule(peak, final, decay_steps)
    elif optim.schedule == "wsd":
        stable_steps = decay_steps - max(int(round(decay_steps * optim.decay_fraction)), 1)
        decay = optax.join_schedules(
            [optax.constant_schedule(peak), optax.linear_schedule(peak, final, decay_steps - stable_steps)],
            [stable_steps],
        )
    else:
        raise ValueError(f"config.optim.schedule={optim.schedule!r} is not one of {SCHEDULES}")
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
