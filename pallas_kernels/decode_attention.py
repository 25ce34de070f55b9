"""Decode attention (flash-decoding) in Pallas: a few new queries against a long KV cache.

Row r of the batch holds lengths[r] valid cache entries; its t queries sit at positions
lengths[r] − t .. lengths[r] − 1 and query position p sees cache position j when j ≤ p.

Split. The cache is cut into blocks of `block_k` positions, one program per
(batch row, K/V heads, block), all in parallel. Program c computes, for its block's keys only,

    m_c = rowmax S_c,   ℓ_c = rowsum exp(S_c − m_c),   O_c = exp(S_c − m_c) V_c / ℓ_c,
    L_c = m_c + log ℓ_c                                  (the block's log-sum-exp)

where S_c = scale · Q K_cᵀ. Blocks that start at or after lengths[r] are skipped and report
O_c = 0, L_c = −inf. Inside the block holding the boundary, entries past the length get
probability 0, so they must be finite (a zero-initialised cache is).

Merge. The exact softmax over all blocks is a log-sum-exp combine of the partial results:

    L = log Σ_c exp(L_c),   O = Σ_c exp(L_c − L) O_c.

A row that sees no key (lengths[r] − t + i < 0) has every L_c = −inf and gets O = 0.

GQA. The program of K/V head g handles all `group = heads // kv_heads` query heads that share
it: their t queries are stacked into one [group·t, d] matrix (padded to a power of two of at
least 16 rows so Triton and Mosaic can tile the matmuls), so each cache block is read once per
K/V head. The cache is read in place as [b, S, kv_heads·d] (a free reshape); nothing is copied.

Heads per program. A cache block is the columns of `heads_per_program` consecutive K/V heads, and
the program walks those heads one after another. Mosaic tiles a block's last dim by 128 lanes
unless it is whole, so on TPU (and in the interpreter, which follows Mosaic) a program takes the
fewest heads whose h·d columns are a multiple of 128, or all of them: one head at head_dim 128 or
256, two at 64, four at 96 (all of them when kv_heads is not a multiple of that). A GPU program
takes one head. This keeps the cache in place, where a [b, kv_heads, S, d] layout would copy the
whole cache every step, as much HBM traffic again as the kernel's own read of it.

Backends: the interpreter on CPU, Triton on GPU, Mosaic on TPU (also when a CPU host lowers ahead
of time for TPU); `_check_tiling` rejects block shapes the target cannot tile.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.compile_target import compile_target

MIN_ROWS = 16


@dataclasses.dataclass(frozen=True)
class _DecodeTiling:
    """Static description of one decode call."""

    batch: int
    num_queries: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    cache_len: int
    block_k: int
    sm_scale: float
    target: str  # "interpret", "gpu" (Triton) or "tpu" (Mosaic)
    heads_per_program: int  # consecutive K/V heads whose columns one program reads

    @property
    def interpret(self):
        return self.target == "interpret"

    @property
    def compiler_params(self):
        """Triton's parameters on GPU (without them Pallas would pick Mosaic GPU); defaults elsewhere."""
        return pltriton.CompilerParams(num_warps=4, num_stages=2) if self.target == "gpu" else None

    @property
    def group(self):
        return self.num_heads // self.num_kv_heads

    @property
    def num_blocks(self):
        return self.cache_len // self.block_k

    @property
    def num_head_blocks(self):
        return self.num_kv_heads // self.heads_per_program

    @property
    def rows(self):
        return self.group * self.num_queries

    @property
    def rows_padded(self):
        return max(MIN_ROWS, pl.next_power_of_2(self.rows))


def decode_attention(q, k_cache, v_cache, lengths, *, sm_scale=None, block_k=128, interpret=None):
    """Attention of the newest t positions over a KV cache, split over the cache and merged by log-sum-exp.

    Args:
      q: [batch, t, heads, head_dim], the queries at positions lengths − t .. lengths − 1.
      k_cache, v_cache: [batch, cache_len, kv_heads, head_dim] with heads % kv_heads == 0.
      lengths: int [batch], valid cache entries per row (0 ≤ lengths ≤ cache_len).
      sm_scale: score scale, default head_dim ** -0.5.
      block_k: cache positions per parallel split, clipped to cache_len; must divide cache_len.
      interpret: run in the Pallas interpreter; None means "when the default backend is CPU".

    Returns:
      [batch, t, heads, head_dim] in q's dtype; rows that see no cache entry are 0.

    Raises:
      ValueError: mismatched shapes or dtypes, heads not divisible by kv_heads, lengths of the
        wrong shape, or a block size that does not tile the cache for the compile target.
    """
    t = _make_tiling(q, k_cache, v_cache, lengths, sm_scale, block_k, interpret)
    cache_shape = (t.batch, t.cache_len, t.num_kv_heads * t.head_dim)
    row_offsets = (jnp.arange(t.rows_padded, dtype=jnp.int32) % t.num_queries - t.num_queries)[:, None]
    partial_shape = (t.batch, t.num_kv_heads, t.num_blocks, t.rows_padded)
    heads = t.heads_per_program
    cache_block = pl.BlockSpec((None, t.block_k, heads * t.head_dim), lambda b, g, c: (b, c, g))
    partial_out, partial_lse = pl.pallas_call(
        functools.partial(_decode_kernel, t=t),
        grid=(t.batch, t.num_head_blocks, t.num_blocks),
        in_specs=[
            pl.BlockSpec((None, 1, 1), lambda b, g, c: (b, 0, 0)),
            pl.BlockSpec((t.rows_padded, 1), lambda b, g, c: (0, 0)),
            pl.BlockSpec((None, heads, t.rows_padded, t.head_dim), lambda b, g, c: (b, g, 0, 0)),
            cache_block,
            cache_block,
        ],
        out_specs=[
            pl.BlockSpec((None, heads, None, t.rows_padded, t.head_dim), lambda b, g, c: (b, g, c, 0, 0)),
            pl.BlockSpec((None, heads, None, t.rows_padded, 1), lambda b, g, c: (b, g, c, 0, 0)),
        ],
        out_shape=[jax.ShapeDtypeStruct((*partial_shape, t.head_dim), jnp.float32),
                   jax.ShapeDtypeStruct((*partial_shape, 1), jnp.float32)],
        interpret=t.interpret,
        compiler_params=t.compiler_params,
        name="decode_attention",
    )(lengths.astype(jnp.int32).reshape(t.batch, 1, 1), row_offsets, _stack_groups(q, t),
      k_cache.reshape(cache_shape), v_cache.reshape(cache_shape))
    return _unstack_groups(_merge_splits(partial_out, partial_lse), t).astype(q.dtype)


def _make_tiling(q, k_cache, v_cache, lengths, sm_scale, block_k, interpret):
    """Validates the inputs and fixes the static tiling; raises ValueError naming the problem."""
    for name, x in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        if x.ndim != 4:
            raise ValueError(f"{name} must be [batch, seq, heads, head_dim], got shape {x.shape}")
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"k_cache {k_cache.shape} and v_cache {v_cache.shape} must have the same shape")
    batch, num_queries, num_heads, head_dim = q.shape
    _, cache_len, num_kv_heads, _ = k_cache.shape
    if (k_cache.shape[0], k_cache.shape[3]) != (batch, head_dim):
        raise ValueError(f"q {q.shape} and the cache {k_cache.shape} must agree in batch and head_dim")
    if num_queries < 1 or cache_len < 1:
        raise ValueError(f"q {q.shape} and the cache {k_cache.shape} need at least one position")
    if num_heads % num_kv_heads:
        raise ValueError(f"heads ({num_heads}) must be divisible by kv_heads ({num_kv_heads})")
    if not (q.dtype == k_cache.dtype == v_cache.dtype) or not jnp.issubdtype(q.dtype, jnp.floating):
        raise ValueError(f"q and the cache must share one floating dtype, got {q.dtype}, {k_cache.dtype}, "
                         f"{v_cache.dtype}")
    if lengths.shape != (batch,) or not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise ValueError(f"lengths must be integer [batch] = {(batch,)}, got {lengths.dtype} {lengths.shape}")
    if not isinstance(block_k, int) or block_k < 1:
        raise ValueError(f"block_k must be a positive int, got {block_k!r}")
    block_k = min(block_k, cache_len)
    if cache_len % block_k:
        raise ValueError(f"block_k={block_k} must divide the cache length {cache_len}")
    target = compile_target(interpret)
    tiling = _DecodeTiling(
        batch=batch, num_queries=num_queries, num_heads=num_heads, num_kv_heads=num_kv_heads,
        head_dim=head_dim, cache_len=cache_len, block_k=block_k,
        sm_scale=float(head_dim ** -0.5 if sm_scale is None else sm_scale), target=target,
        heads_per_program=_heads_per_program(num_kv_heads, head_dim, target))
    _check_tiling(tiling)
    return tiling


def _check_tiling(t):
    """Rejects block shapes the compile target cannot tile (the interpreter takes any)."""
    if t.interpret:
        return
    if t.target == "gpu":
        for name, size in (("block_k", t.block_k), ("head_dim", t.head_dim)):
            if size < MIN_ROWS or size & (size - 1):
                raise ValueError(f"{name}={size}: Triton tiles must be powers of two of at least {MIN_ROWS}")
        return
    if t.block_k % 8 and t.block_k != t.cache_len:
        raise ValueError(f"block_k={t.block_k}: Mosaic TPU needs a multiple of 8 or the whole cache")


def _heads_per_program(num_kv_heads, head_dim, target):
    """K/V heads one program reads: one on a GPU; elsewhere the fewest h dividing kv_heads with h·head_dim
    a multiple of 128 lanes, or all kv_heads (then the block spans the whole last dim)."""
    if target == "gpu":
        return 1
    return next(h for h in range(1, num_kv_heads + 1)
                if num_kv_heads % h == 0 and (h * head_dim % 128 == 0 or h == num_kv_heads))


def _stack_groups(q, t):
    """[b, t, heads, d] -> [b, kv_heads, rows_padded, d]; row i·t + p is query p of group member i."""
    grouped = q.reshape(t.batch, t.num_queries, t.num_kv_heads, t.group, t.head_dim)
    stacked = grouped.transpose(0, 2, 3, 1, 4).reshape(t.batch, t.num_kv_heads, t.rows, t.head_dim)
    return jnp.pad(stacked, ((0, 0), (0, 0), (0, t.rows_padded - t.rows), (0, 0)))


def _unstack_groups(x, t):
    """Inverse of `_stack_groups`: [b, kv_heads, rows_padded, d] -> [b, t, heads, d]."""
    grouped = x[:, :, :t.rows].reshape(t.batch, t.num_kv_heads, t.group, t.num_queries, t.head_dim)
    return grouped.transpose(0, 3, 1, 2, 4).reshape(t.batch, t.num_queries, t.num_heads, t.head_dim)


def _merge_splits(partial_out, partial_lse):
    """O = Σ_c exp(L_c − L) O_c with L = log Σ_c exp(L_c), over the split axis 2; 0 where every L_c = −inf."""
    lse_max = partial_lse.max(axis=2, keepdims=True)
    weights = jnp.exp(partial_lse - jnp.where(lse_max == -jnp.inf, 0.0, lse_max))
    total = weights.sum(axis=2)
    return (weights * partial_out).sum(axis=2) / jnp.where(total > 0, total, 1.0)


def _decode_kernel(length_ref, row_offset_ref, q_ref, k_ref, v_ref, out_ref, lse_ref, *, t):
    """One cache block for `heads_per_program` K/V heads and their groups of query rows: partial
    softmax O_c and L_c, head by head over the block's column slices."""
    length = length_ref[0, 0]
    kv_start = pl.program_id(2) * t.block_k

    @pl.when(kv_start < length)
    def _attend():
        q_pos = length + row_offset_ref[...]
        for head in range(t.heads_per_program):
            columns = slice(head * t.head_dim, (head + 1) * t.head_dim)
            scores = t.sm_scale * lax.dot_general(q_ref[head], k_ref[:, columns], (((1,), (1,)), ((), ())),
                                                  preferred_element_type=jnp.float32)
            kv_pos = kv_start + lax.broadcasted_iota(jnp.int32, scores.shape, 1)
            scores = jnp.where(kv_pos <= q_pos, scores, -jnp.inf)
            row_max = scores.max(axis=1, keepdims=True)
            probs = jnp.exp(scores - jnp.where(row_max == -jnp.inf, 0.0, row_max))
            row_sum = probs.sum(axis=1, keepdims=True)
            v = v_ref[:, columns]
            out = jnp.dot(probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
            out_ref[head] = out / jnp.where(row_sum > 0, row_sum, 1.0)
            lse_ref[head] = row_max + jnp.log(row_sum)

    @pl.when(kv_start >= length)
    def _skip():
        out_ref[...] = jnp.zeros(out_ref.shape, out_ref.dtype)
        lse_ref[...] = jnp.full(lse_ref.shape, -jnp.inf, lse_ref.dtype)
