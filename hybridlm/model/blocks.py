"""The residual blocks of the stack, one per block kind of `config.model.layer_pattern`, and the layer group."""

from __future__ import annotations

from collections.abc import Callable

import jax
from flax import nnx

from hybridlm.model.attention import Attention
from hybridlm.model.config import (
    ATTENTION,
    BLOCK_KINDS,
    GDN,
    POST_NORM,
    PRE_NORM,
    SLIDING_ATTENTION,
    ModelConfig,
    block_kind,
)
from hybridlm.model.gdn import GatedDeltaNet
from hybridlm.model.layers import RMSNorm, SwiGLU


class Block(nnx.Module):
    """A sequence mixer then a SwiGLU MLP, each in a residual branch with an RMSNorm placed by `placement`:

    - "pre":  h = x + mixer(norm(x)); out = h + mlp(norm(h)); the norms are `<mixer>_norm` and `mlp_norm`;
    - "post": h = x + norm(mixer(x)); out = h + norm(mlp(h)) (Olmo 3's reordered norm); the norms are
      `post_<mixer>_norm` and `post_mlp_norm`.

    The mixer module is stored under the name `mixer` ("attention", "gdn"), so parameter paths name the block's
    parts, e.g. blocks/0/gdn/q_proj/kernel, blocks/0/gdn_norm/weight, blocks/3/post_attention_norm/weight.
    """

    def __init__(self, config: ModelConfig, mixer: str, module: nnx.Module, placement: str, rngs: nnx.Rngs):
        """`module`: (x [B, T, d_model], positions int [B, T], segment_ids int [B, T] or None) -> [B, T, d_model]."""
        self.mixer, self.placement = mixer, placement
        setattr(self, mixer, module)
        self.mlp = SwiGLU(config, rngs)
        for sublayer in (mixer, "mlp"):
            setattr(self, self._norm_name(sublayer), RMSNorm(config.d_model, config.norm_eps, config.params_dtype))

    def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array | None) -> jax.Array:
        """x: [B, T, d_model]; positions: int [B, T]; segment_ids: int [B, T] or None (one document per row)."""
        mixer = getattr(self, self.mixer)
        h = self._residual(self.mixer, x, lambda y: mixer(y, positions, segment_ids))
        return self._residual("mlp", h, self.mlp)

    def init_cache(self, batch: int, max_len: int) -> dict[str, jax.Array]:
        """The mixer's empty decode cache for `batch` rows of up to `max_len` tokens."""
        return getattr(self, self.mixer).init_cache(batch, max_len)

    def prefill(
        self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array, cache: dict[str, jax.Array]
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """`__call__` on left-padded prompts that also fills the mixer's cache (see the mixer's `prefill`)."""
        return self._cached(x, lambda mixer, y: mixer.prefill(y, positions, segment_ids, cache))

    def decode(
        self, x: jax.Array, positions: jax.Array, cache: dict[str, jax.Array]
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """One token per row, x: [B, 1, d_model], positions int [B, 1], through the mixer's cache."""
        return self._cached(x, lambda mixer, y: mixer.decode(y, positions, cache))

    def _cached(
        self, x: jax.Array, run: Callable[[nnx.Module, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The block with `run(mixer, y) -> (out, cache)` as its mixer branch -> (out, cache)."""
        caches = []

        def branch(y: jax.Array) -> jax.Array:
            out, cache = run(getattr(self, self.mixer), y)
            caches.append(cache)
            return out

        h = self._residual(self.mixer, x, branch)
        return self._residual("mlp", h, self.mlp), caches[0]

    def _residual(self, sublayer: str, x: jax.Array, branch: Callable[[jax.Array], jax.Array]) -> jax.Array:
        """x + branch(norm(x)) (pre) or x + norm(branch(x)) (post), with the norm of `sublayer`."""
        norm = getattr(self, self._norm_name(sublayer))
        return x + (branch(norm(x)) if self.placement == PRE_NORM else norm(branch(x)))

    def _norm_name(self, sublayer: str) -> str:
        return f"{sublayer}_norm" if self.placement == PRE_NORM else f"post_{sublayer}_norm"


@block_kind(GDN)
def gdn_block(config: ModelConfig, rngs: nnx.Rngs) -> Block:
    """Gated DeltaNet block, its norms placed by config.gdn_norm."""
    return Block(config, "gdn", GatedDeltaNet(config, rngs), config.gdn_norm, rngs)


@block_kind(ATTENTION)
def attention_block(config: ModelConfig, rngs: nnx.Rngs) -> Block:
    """Full causal attention block with Olmo 3's reordered norm."""
    return Block(config, "attention", Attention(config, sliding=False, rngs=rngs), POST_NORM, rngs)


@block_kind(SLIDING_ATTENTION)
def sliding_attention_block(config: ModelConfig, rngs: nnx.Rngs) -> Block:
    """Sliding-window attention block with Olmo 3's reordered norm."""
    return Block(config, "attention", Attention(config, sliding=True, rngs=rngs), POST_NORM, rngs)


class LayerGroup(nnx.Module):
    """One period of `config.layer_pattern`: a block of each entry's kind (BLOCK_KINDS), applied in order."""

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        self.blocks = nnx.List([BLOCK_KINDS[kind](config, rngs) for kind in config.layer_pattern])

    def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array | None) -> jax.Array:
        """x: [B, T, d_model] -> [B, T, d_model]; positions and segment_ids as for each block."""
        for block in self.blocks:
            x = block(x, positions, segment_ids)
        return x

    def init_cache(self, batch: int, max_len: int) -> list[dict[str, jax.Array]]:
        """The blocks' empty decode caches, in order."""
        return [block.init_cache(batch, max_len) for block in self.blocks]

    def prefill(
        self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array, cache: list[dict[str, jax.Array]]
    ) -> tuple[jax.Array, list[dict[str, jax.Array]]]:
        """`__call__` on left-padded prompts that also fills the blocks' caches."""
        caches = []
        for block, block_cache in zip(self.blocks, cache):
            x, block_cache = block.prefill(x, positions, segment_ids, block_cache)
            caches.append(block_cache)
        return x, caches

    def decode(
        self, x: jax.Array, positions: jax.Array, cache: list[dict[str, jax.Array]]
    ) -> tuple[jax.Array, list[dict[str, jax.Array]]]:
        """One token per row, x: [B, 1, d_model], through the blocks' caches."""
        caches = []
        for block, block_cache in zip(self.blocks, cache):
            x, block_cache = block.decode(x, positions, block_cache)
            caches.append(block_cache)
        return x, caches
