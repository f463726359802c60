"""Causal attention on TPUs through JAX's bundled Pallas splash attention (Mosaic TPU kernels, forward and backward).

Same contract as ``reference.xla_attention``. Splash attention (``jax.experimental.pallas.ops.tpu.splash_attention``)
is a block-sparse flash attention: it skips the blocks of the [T, T] score matrix that its static mask leaves empty
and computes the mask inside the kernel for the partial ones. Here:

- Masks: ``CausalMask``, or for a window ``LocalMask`` with left size window - 1 and right size 0, which is
  already causal (key j <= query i). Combining it with a ``CausalMask`` by ``&`` would give a ``LogicalAnd``, which
  splash cannot compute in the kernel (it would load dense mask blocks from memory), so the local mask is used
  alone. The same mask for every head (``MultiHeadMask``); documents go in as ``SegmentIds`` per batch row.
- Layout: splash takes [heads, T, D] per sequence, so the batch is vmapped (segment ids per row) and the head axis
  moved before time. Grouped-query attention is native to splash's multi-head kernels: query head n reads kv
  head n // (H // H_kv) through its block index maps, so k and v are never repeated.
- Any T: T is zero-padded to a multiple of 128 (the lane width; splash's blocks are multiples of it) and the
  output sliced back. Padded keys are never seen by real queries (they lie in the future), padded queries join the
  last document and their outputs are dropped, so their cotangents are zero. Blocks are the largest of 512, 256,
  128 dividing the padded length.
- Head dim: this splash takes any D (it tiles its [block, 128] softmax statistics over ceil(D / 128) lane groups
  and slices them to D), so D is not padded.
- Scale: splash has no scale argument; q is multiplied by ``scale`` in float32 and cast back to its dtype.
- Precision: splash's dots take the inputs' dtype with float32 accumulation and keep the softmax in float32. They
  carry no precision argument, so float32 dots on a TPU run at Mosaic's default contract precision (not checked
  on a TPU yet; the interpreter computes them in float32). dq, dk, dv come from splash's custom VJP (a dkv and a
  dq kernel).
- Checked in the interpreter against ``xla_attention`` and lowered to Mosaic for a TPU on the CPU
  (``tests/test_attention_tpu.py``); not yet run on a TPU.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask

DTYPES = ("float32", "bfloat16")
MAX_BLOCK = 512
_LANES = 128


def _check_dtypes(q: jax.Array, k: jax.Array, v: jax.Array) -> None:
    """Raises ValueError unless q, k and v share one of DTYPES (the TPU matmul dtypes splash is built for)."""
    if q.dtype.name not in DTYPES or not q.dtype == k.dtype == v.dtype:
        raise ValueError(
            f"attention: impl='pallas_tpu' takes q, k, v of one dtype in {DTYPES}; got {q.dtype}, {k.dtype}, {v.dtype}"
        )


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@functools.lru_cache(maxsize=32)
def _splash_kernel(heads: int, length: int, window: int | None, interpret: bool) -> splash.SplashAttentionKernel:
    """The splash kernel for `heads` query heads over a padded length (a multiple of 128), causal within `window`.

    Cached, so the numpy mask processing runs once per shape and the kernel object (whose mask function is a
    static argument of splash's jit) reuses its compilation. Built under ``ensure_compile_time_eval``: splash turns
    the mask's block tables into jax arrays, which inside a trace would be that trace's tracers, leaked into the
    cache.
    """
    if window is None:
        head_mask = splash_mask.CausalMask((length, length))
    else:
        head_mask = splash_mask.LocalMask((length, length), window_size=(window - 1, 0), offset=0)
    block = math.gcd(length, MAX_BLOCK)
    blocks = splash.BlockSizes(
        block_q=block,
        block_kv=block,
        block_kv_compute=block,
        block_q_dkv=block,
        block_kv_dkv=block,
        block_kv_dkv_compute=block,
        block_q_dq=block,
        block_kv_dq=block,
    )
    mask = splash_mask.MultiHeadMask([head_mask] * heads)
    with jax.ensure_compile_time_eval():
        return splash.make_splash_mha(mask, block_sizes=blocks, head_shards=1, q_seq_shards=1, interpret=interpret)


def pallas_tpu_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    segment_ids: jax.Array | None,
    window: int | None,
    scale: float,
    *,
    interpret: bool = False,
) -> jax.Array:
    """Causal attention through splash attention's Pallas TPU kernels; same contract as ``xla_attention``.

    Args:
      q: [B, T, H, D]; k, v: [B, T, H_kv, D] with H a multiple of H_kv (query head n reads kv head
        n // (H // H_kv)); one dtype, float32 or bfloat16.
      segment_ids: int [B, T] or None; tokens attend only to tokens with the same id (non-decreasing along a row).
      window: a query at i sees keys j with i - window < j <= i; None: every j <= i.
      scale: multiplies q.k (applied to q in float32, then cast back to q's dtype).
      interpret: run the kernels in the Pallas interpreter (CPU tests). A bool: the TPU interpreter
        (``pltpu.InterpretParams``) fails on the batch-vmapped kernels in jax 0.10.2, as it pairs splash's three
        grid-dimension semantics with the grid that vmap has extended by the batch dimension.

    Returns:
      [B, T, H, D] in q's dtype. Differentiable in q, k, v through splash's custom VJP.

    Raises:
      ValueError: q, k, v not all float32 or all bfloat16, before any work.
    """
    _check_dtypes(q, k, v)
    _, length, heads, _ = q.shape
    padded = _round_up(length, _LANES)
    # A window of T or more hides no key from a real query: plain causal (one kernel less to build and compile).
    kernel = _splash_kernel(heads, padded, None if window is None or window >= length else window, interpret)

    def to_splash(x: jax.Array) -> jax.Array:
        """[B, T, heads, D] -> [B, heads, T', D], zero-padded along time."""
        return jnp.pad(x, ((0, 0), (0, padded - length), (0, 0), (0, 0))).transpose(0, 2, 1, 3)

    if segment_ids is not None:
        segment_ids = jnp.pad(segment_ids.astype(jnp.int32), ((0, 0), (0, padded - length)), mode="edge")

    def attend(q: jax.Array, k: jax.Array, v: jax.Array, ids: jax.Array | None) -> jax.Array:
        """One sequence: q [H, T', D], k, v [H_kv, T', D], ids [T'] or None -> [H, T', D]."""
        return kernel(q, k, v, None if ids is None else splash.SegmentIds(q=ids, kv=ids))

    scaled_q = (q.astype(jnp.float32) * scale).astype(q.dtype)
    out = jax.vmap(attend)(to_splash(scaled_q), to_splash(k), to_splash(v), segment_ids)
    return out.transpose(0, 2, 1, 3)[:, :length]
