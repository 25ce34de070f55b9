"""Dense, pure-jnp attention: the ground truth the Pallas kernels are tested against.

Both references materialise the full score matrix S = scale · q kᵀ in float32,
mask it, and take a softmax over the keys:

    out_i = Σ_j softmax_j(S_ij | visible(i, j)) v_j

A row with no visible key gets the output 0 (the empty sum), never NaN.
Grouped-query attention (kv_h < h) lets query head `n` read K/V head
`n // (h // kv_h)`; the references express that by splitting the query heads
into [kv_h, group] rather than by repeating K and V.
"""
import jax.numpy as jnp
from jax import lax


def attention_reference(q, k, v, *, causal=False, segment_ids=None, sm_scale=None):
    """Full softmax attention. q [b, s, h, d], k/v [b, s, kv_h, d], segment_ids [b, s] or None.

    Query i sees key j when (not causal or j ≤ i) and segment_ids[i] == segment_ids[j].
    Returns [b, s, h, d] in q's dtype.
    """
    seq_len = q.shape[1]
    positions = jnp.arange(seq_len)
    visible = jnp.ones((q.shape[0], seq_len, seq_len), dtype=bool)
    if causal:
        visible = visible & (positions[:, None] >= positions[None, :])
    if segment_ids is not None:
        visible = visible & (segment_ids[:, :, None] == segment_ids[:, None, :])
    return masked_attention(q, k, v, visible, sm_scale=sm_scale)


def decode_attention_reference(q, k_cache, v_cache, lengths, *, sm_scale=None):
    """Attention of the newest t positions over a KV cache with per-row valid lengths.

    q [b, t, h, d]; k_cache/v_cache [b, S, kv_h, d]; lengths [b]. In row r the t
    queries sit at positions lengths[r] - t .. lengths[r] - 1 and query position p
    sees cache position j when j ≤ p (so never j ≥ lengths[r]). Returns [b, t, h, d].
    """
    num_queries, cache_len = q.shape[1], k_cache.shape[1]
    query_positions = lengths[:, None] - num_queries + jnp.arange(num_queries)[None, :]
    visible = jnp.arange(cache_len)[None, None, :] <= query_positions[:, :, None]
    return masked_attention(q, k_cache, v_cache, visible, sm_scale=sm_scale)


def masked_attention(q, k, v, visible, *, sm_scale=None):
    """softmax(scale · q kᵀ) v over the keys where `visible [b, t, s]` holds, in float32.

    q [b, t, h, d], k/v [b, s, kv_h, d]. Rows with no visible key give 0.
    """
    batch, num_queries, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[2]
    scale = head_dim ** -0.5 if sm_scale is None else sm_scale
    grouped_q = q.astype(jnp.float32).reshape(batch, num_queries, num_kv_heads, num_heads // num_kv_heads, head_dim)
    scores = scale * jnp.einsum("btkgd,bskd->bkgts", grouped_q, k.astype(jnp.float32))
    scores = jnp.where(visible[:, None, None], scores, -jnp.inf)
    row_max = lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True))
    probs = jnp.exp(scores - jnp.where(jnp.isfinite(row_max), row_max, 0.0))
    row_sum = jnp.sum(probs, axis=-1, keepdims=True)
    probs = probs / jnp.where(row_sum > 0, row_sum, 1.0)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v.astype(jnp.float32))
    return out.reshape(batch, num_queries, num_heads, head_dim).astype(q.dtype)
