"""The hybrid language model: embeddings, a scanned stack of repeated layer groups, final norm, LM head."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from hybridlm import partitioning
from hybridlm.loss import head_logits
from hybridlm.model.blocks import LayerGroup
from hybridlm.model.config import REMAT_POLICIES, ModelConfig
from hybridlm.model.layers import RMSNorm, linear, logical, truncated_normal


ACTIVATIONS = ("batch", None, None)  # the logical axes of the hidden states [B, T, d_model] between layer groups


class HybridLM(nnx.Module):
    """Decoder-only LM over any mix of GDN, full- and sliding-attention layers.

    The `num_groups` copies of the layer group are stored stacked (leading axis num_groups) and run with one
    `lax.scan`, so compile time does not grow with depth. With `config.scan_layers` False the scan is unrolled: no
    loop is left, and XLA keeps each group's saved activations in buffers of their own instead of copying them into
    and out of the loop's stacked ones (faster, for more memory; BENCHMARKS.md).
    """

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        self.config = config
        self.embed = nnx.Embed(
            config.vocab_size,
            config.d_model,
            dtype=config.compute_dtype,
            param_dtype=config.params_dtype,
            embedding_init=logical(truncated_normal(config), ("vocab", "embed")),
            rngs=rngs,
        )

        @nnx.split_rngs(splits=config.num_groups)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_groups(rngs: nnx.Rngs) -> LayerGroup:
            return LayerGroup(config, rngs)

        self.groups = make_groups(rngs)
        self.final_norm = RMSNorm(config.d_model, config.norm_eps, config.params_dtype)
        self.lm_head = linear(config, config.d_model, config.vocab_size, ("embed", "vocab"), rngs)

    def __call__(
        self, tokens: jax.Array, segment_ids: jax.Array | None = None, positions: jax.Array | None = None
    ) -> jax.Array:
        """tokens: int [B, T] -> float32 logits [B, T, vocab_size]; see `hidden` for the other arguments."""
        return head_logits(self.hidden(tokens, segment_ids, positions), self.lm_head.kernel[...])

    def hidden(
        self, tokens: jax.Array, segment_ids: jax.Array | None = None, positions: jax.Array | None = None
    ) -> jax.Array:
        """The final-normed hidden states [B, T, d_model] in the compute dtype, the LM head's input.

        tokens: int [B, T]; segment_ids: int [B, T] (packed documents, which neither attend to nor carry state into
        each other) or None (each row is one document); positions: int [B, T] (default 0..T-1).
        """
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        x = partitioning.constrain(self._embed(tokens), ACTIVATIONS)
        graphdef, stacked = nnx.split(self.groups)

        def run_group(x: jax.Array, group_state: nnx.State) -> tuple[jax.Array, None]:
            x = nnx.merge(graphdef, group_state)(x, positions, segment_ids)
            return partitioning.constrain(x, ACTIVATIONS), None

        if self.config.remat != "none":
            run_group = jax.checkpoint(run_group, prevent_cse=False, policy=REMAT_POLICIES[self.config.remat])
        x, _ = jax.lax.scan(run_group, x, stacked, unroll=not self.config.scan_layers)
        return self.final_norm(x)

    def init_cache(self, batch: int, max_len: int) -> list[dict[str, jax.Array]]:
        """An empty decode cache for `batch` rows of up to `max_len` tokens (prompt and generated): per block of the
        layer group a dict of arrays with the leading axis num_groups, like the params (see each mixer's
        `init_cache`: K/V ring buffers for attention, recurrent state and conv taps for GDN)."""
        self.config.check_seq_len(max_len)
        graphdef, stacked = nnx.split(self.groups)
        return jax.vmap(lambda group_state: nnx.merge(graphdef, group_state).init_cache(batch, max_len))(stacked)

    def prefill(
        self, tokens: jax.Array, positions: jax.Array, segment_ids: jax.Array, cache: list[dict[str, jax.Array]]
    ) -> tuple[jax.Array, list[dict[str, jax.Array]]]:
        """Runs left-padded prompts and fills the empty `cache` for `decode`.

        tokens: int [B, T], each row's prompt at its end after padding; positions: int [B, T], -1 on the padding and
        0, 1, .. on the prompt; segment_ids: int [B, T], one id for the padding and another for the prompt (so
        neither attention, GDN state nor conv taps reach from padding into the prompt). Returns the float32 logits
        of each row's last token [B, vocab_size] and the cache.
        """
        prefill = lambda group, x, c: group.prefill(x, positions, segment_ids, c)
        x, cache = self._scan_cached(tokens, prefill, cache, unroll=not self.config.scan_layers)
        return head_logits(x[:, -1:], self.lm_head.kernel[...])[:, 0], cache

    def decode(
        self, tokens: jax.Array, positions: jax.Array, cache: list[dict[str, jax.Array]]
    ) -> tuple[jax.Array, list[dict[str, jax.Array]]]:
        """One token per row after `prefill`. tokens, positions: int [B] (absolute positions) -> (float32 logits
        [B, vocab_size], cache)."""
        # The layer groups unrolled whatever scan_layers says: scanned, the 1B hybrid's decode step took 2.97 ms at 8
        # rows on an H200, 1.28 ms of it in copies, against 1.46 ms unrolled (BENCHMARKS.md, 2026-12-02).
        decode = lambda group, x, c: group.decode(x, positions[:, None], c)
        x, cache = self._scan_cached(tokens[:, None], decode, cache, unroll=True)
        return head_logits(x, self.lm_head.kernel[...])[:, 0], cache

    def _scan_cached(
        self,
        tokens: jax.Array,
        run: Callable[..., tuple[jax.Array, Any]],
        cache: list[dict[str, jax.Array]],
        unroll: bool,
    ) -> tuple[jax.Array, list[dict[str, jax.Array]]]:
        """Scans `run(group, x, group_cache) -> (x, group_cache)` over the layer groups and their caches (unrolled or
        not); returns the final-normed hidden states [B, T, d_model] and the new cache."""
        graphdef, stacked = nnx.split(self.groups)

        def run_group(x: jax.Array, group: tuple[nnx.State, Any]) -> tuple[jax.Array, Any]:
            group_state, group_cache = group
            x, group_cache = run(nnx.merge(graphdef, group_state), x, group_cache)
            return partitioning.constrain(x, ACTIVATIONS), group_cache

        x = partitioning.constrain(self._embed(tokens), ACTIVATIONS)
        x, cache = jax.lax.scan(run_group, x, (stacked, cache), unroll=unroll)
        return self.final_norm(x), cache

    def _embed(self, tokens: jax.Array) -> jax.Array:
        """tokens: int [B, T] -> their embeddings [B, T, d_model] in the compute dtype. The table is gathered whole
        over d_model (the vocabulary stays split) before the lookup, which keeps XLA from building the lookup's
        output with the table's layout and then re-splitting it by rows."""
        table = partitioning.constrain(self.embed.embedding[...], ("vocab", None))
        return jnp.take(table, tokens, axis=0).astype(self.config.compute_dtype)


def abstract_model(config: ModelConfig) -> HybridLM:
    """The model with a jax.ShapeDtypeStruct in place of every array (nothing is allocated): its graphdef
    (`nnx.graphdef`) and parameter shapes and dtypes."""
    return nnx.eval_shape(lambda: HybridLM(config, nnx.Rngs(0)))


def abstract_params(config: ModelConfig) -> dict[str, Any]:
    """The params `nnx.to_pure_dict(nnx.state(model, nnx.Param))` as a nested dict of jax.ShapeDtypeStruct; the
    leaves under "groups" have the leading axis num_groups, e.g. groups/blocks/0/mlp/up_proj/kernel
    [num_groups, d_model, mlp_hidden]."""
    return nnx.to_pure_dict(nnx.state(abstract_model(config), nnx.Param))


def count_params(config: ModelConfig) -> int:
    """Parameter count from abstract shapes only (nothing is allocated)."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_params(config)))
