"""The train state {"step", "params", "opt_state", "skip"}: its initial value, and its layout on a mesh."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from hybridlm import partitioning, skip_step
from hybridlm.model import HybridLM, ModelConfig, abstract_model

# {"step": int32 [], "params": nested dict of arrays, "opt_state": optax state, "skip": skip_step.SkipState (the
#  window of recent losses and gradient norms, and the skip counters)}
TrainState = dict[str, Any]


def initial_state(
    model_config: ModelConfig, optimizer: optax.GradientTransformation, seed: int, params: Any = None
) -> TrainState:
    """Step 0 with `params` (our nested dict), or with parameters initialised from `seed` when None; an empty skip
    window."""
    if params is None:
        params = nnx.to_pure_dict(nnx.state(HybridLM(model_config, nnx.Rngs(seed)), nnx.Param))
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "opt_state": optimizer.init(params),
        "skip": skip_step.initial_skip_state(),
    }


def parameter_shardings(model_config: ModelConfig, layout: partitioning.Layout) -> Any:
    """The parameters' NamedShardings: their logical axes placed on the mesh by the layout's rules."""
    params = nnx.state(abstract_model(model_config), nnx.Param)
    logical = nnx.to_pure_dict(nnx.get_partition_spec(params))
    return partitioning.parameter_shardings(logical, nnx.to_pure_dict(params), layout)


def state_shardings(
    model_config: ModelConfig, optimizer: optax.GradientTransformation, layout: partitioning.Layout
) -> Any:
    """The train state's NamedShardings: the parameters' and, for every copy of the parameter tree in the optimizer
    state (AdamW's moments), the same; the step, counters and skip window replicated."""
    params = parameter_shardings(model_config, layout)
    abstract = jax.eval_shape(functools.partial(initial_state, model_config, optimizer, 0))
    opt_state = optax.tree_map_params(
        optimizer,
        lambda _, sharding: sharding,
        abstract["opt_state"],
        params,
        transform_non_params=lambda _: layout.replicated,
    )
    skip = jax.tree.map(lambda _: layout.replicated, abstract["skip"])
    return {"step": layout.replicated, "params": params, "opt_state": opt_state, "skip": skip}


def abstract_state(
    model_config: ModelConfig, optimizer: optax.GradientTransformation, layout: partitioning.Layout
) -> TrainState:
    """The train state's shapes, dtypes and shardings (jax.ShapeDtypeStruct leaves); nothing is allocated."""
    abstract = jax.eval_shape(functools.partial(initial_state, model_config, optimizer, 0))
    shardings = state_shardings(model_config, optimizer, layout)
    return jax.tree.map(
        lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract, shardings
    )

