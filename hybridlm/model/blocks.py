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
