"""Building blocks of the LLaMA family: RMSNorm, RoPE, SwiGLU and attention.

Shapes follow `[batch, seq, heads, head_dim]`. Parameters are float32 and carry
logical axis names (`embed`, `mlp`, `heads`, `kv_heads`, `head_dim`, `vocab`);
`research.parallel.mesh` maps them to mesh axes. Computation runs in
`dtype`; norms and the softmax run in float32.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from pallas_kernels.decode_attention import decode_attention
from pallas_kernels.flash_attention import flash_attention
from research.parallel.mesh import CONTEXT_AXIS, constrain, context_parallel_size, dividing_mesh_axes
from research.parallel.ring_attention import ring_attention

Dtype = Any

NEG_INF = -1e30  # finite, so fully masked rows give a uniform (not NaN) softmax


def param_with_axes(module: nn.Module, name: str, init, shape, axes):
    """A float32 parameter annotated with logical axis names."""
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x²) + eps) · g, computed in float32 (Zhang & Sennrich, 2019)."""

    eps: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = param_with_axes(self, "scale", nn.initializers.ones, (x.shape[-1],), ("embed",))
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (normed * scale).astype(self.dtype)


class HeadLayerNorm(nn.Module):
    """QK-Norm (Chameleon): LayerNorm over head_dim with its own gain and bias per head and feature.

    y[..., h, i] = (x[..., h, i] − μ) / sqrt(σ² + eps) · g[h, i] + b[h, i], with μ, σ² the mean and
    variance of x[..., h, :] (statistics over head_dim only), in float32; x `[b, s, heads, hd]`.
    `head_axis` is the heads' logical axis name ("heads" for queries, "kv_heads" for keys).
    """

    head_axis: str
    eps: float = 1e-5

    @nn.compact
    def __call__(self, x):
        shape, axes = x.shape[-2:], (self.head_axis, "head_dim")
        scale = param_with_axes(self, "scale", nn.initializers.ones, shape, axes)
        bias = param_with_axes(self, "bias", nn.initializers.zeros, shape, axes)
        x32 = x.astype(jnp.float32)
        centred = x32 - jnp.mean(x32, axis=-1, keepdims=True)
        normed = centred * jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + self.eps)
        return (normed * scale + bias).astype(x.dtype)


def rope_frequencies(head_dim: int, positions, theta: float):
    """Angles φ[p, i] = p · θ^(−2i/d) for i < d/2, in float32, shape positions.shape + (d/2,)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    return positions.astype(jnp.float32)[..., None] * inv_freq


def apply_rope(x, positions, theta: float):
    """Rotary position embedding in Meta's layout: feature pairs (2i, 2i+1) are one complex number.

    (x₂ᵢ + i·x₂ᵢ₊₁) · e^{i·φ[p, i]} for x `[batch, seq, heads, head_dim]`, positions `[batch, seq]`.
    """
    angles = rope_frequencies(x.shape[-1], positions, theta)[:, :, None, :]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    pairs = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
    real, imag = pairs[..., 0], pairs[..., 1]
    rotated = jnp.stack([real * cos - imag * sin, real * sin + imag * cos], axis=-1)
    return rotated.reshape(x.shape).astype(x.dtype)


def llama_hidden_dim(dim: int, ffn_dim_multiplier: float | None, multiple_of: int) -> int:
    """Meta's FFN width: h = int(2·4d/3), h = int(m·h) if m is set, rounded up to `multiple_of`."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class SwiGLU(nn.Module):
    """FFN(x) = W_down · (SiLU(W_gate · x) ⊙ W_up · x), no biases (Shazeer, 2020)."""

    hidden_dim: int
    dtype: Dtype = jnp.float32
    mesh: Any = None  # pins the [batch, seq, hidden] activations (research.parallel.mesh.constrain)

    @nn.compact
    def __call__(self, x):
        dim = x.shape[-1]
        init = nn.initializers.normal(stddev=dim**-0.5)
        w_gate = param_with_axes(self, "gate", init, (dim, self.hidden_dim), ("embed", "mlp"))
        w_up = param_with_axes(self, "up", init, (dim, self.hidden_dim), ("embed", "mlp"))
        w_down = param_with_axes(
            self, "down", nn.initializers.normal(stddev=self.hidden_dim**-0.5),
            (self.hidden_dim, dim), ("mlp", "embed"))
        x = x.astype(self.dtype)
        gate = jnp.einsum("bsd,dh->bsh", x, w_gate.astype(self.dtype))
        up = jnp.einsum("bsd,dh->bsh", x, w_up.astype(self.dtype))
        hidden = constrain(nn.silu(gate) * up, ("batch", "seq", "mlp"), self.mesh)
        return jnp.einsum("bsh,hd->bsd", hidden, w_down.astype(self.dtype))


def attention_mask(q_positions, kv_positions, q_segment_ids=None, kv_segment_ids=None, *, causal=True):
    """Boolean mask `[batch, q_len, kv_len]`: key j is visible to query i when
    kv_pos[j] ≤ q_pos[i] (causal) and both carry the same nonzero segment id."""
    mask = jnp.ones((q_positions.shape[0], q_positions.shape[1], kv_positions.shape[1]), bool)
    if causal:
        mask &= kv_positions[:, None, :] <= q_positions[:, :, None]
    if q_segment_ids is not None:
        same = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
        mask &= same & (kv_segment_ids[:, None, :] != 0)
    return mask


def dot_product_attention(q, k, v, mask, *, sm_scale: float | None = None):
    """softmax(q·kᵀ·scale + bias(mask)) · v with grouped-query heads, softmax in float32.

    q `[b, t, h, d]`, k/v `[b, s, kv_h, d]` with h a multiple of kv_h: query head i reads
    key/value head i // (h / kv_h); K/V are never repeated to h heads. mask `[b, t, s]`.
    """
    batch, q_len, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[2]
    group = num_heads // num_kv_heads
    scale = head_dim**-0.5 if sm_scale is None else sm_scale
    q = q.reshape(batch, q_len, num_kv_heads, group, head_dim)
    if q_len == 1:
        return single_query_attention(q[:, 0], k, v, mask[:, 0], scale).reshape(batch, 1, num_heads, head_dim)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32) * scale
    scores = jnp.where(mask[:, None, None, :, :], scores, NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(batch, q_len, num_heads, head_dim)


def single_query_attention(q, k, v, mask, scale: float):
    """One query per row (a decode step) over k/v `[b, s, kv_h, d]` as they lie in the KV cache:

        scores[b, s, k, g] = Σ_d q[b, k, g, d]·K[b, s, k, d]·scale,  p = softmax over s (masked),
        out[b, k, g, d] = Σ_s p[b, s, k, g]·V[b, s, k, d].

    Written as broadcast products summed over one axis rather than as batched matmuls, whose
    (b, kv_h) batch axes would first need the whole cache transposed to `[b, kv_h, s, d]` on every
    step; here K and V are read once, in place. q `[b, kv_h, g, d]`, mask `[b, s]`; out like q.
    """
    scores = jnp.sum(q[:, None].astype(jnp.float32) * k[:, :, :, None].astype(jnp.float32), axis=-1) * scale
    scores = jnp.where(mask[:, :, None, None], scores, NEG_INF)  # [b, s, kv_h, g]
    probs = jax.nn.softmax(scores, axis=1)
    out = jnp.sum(probs[..., None] * v[:, :, :, None].astype(jnp.float32), axis=1)
    return out.astype(v.dtype)


def write_cache(cache, new, start):
    """Writes `new [b, t, ...]` into `cache [b, s, ...]` at rows' offsets `start [b]` (in place under jit)."""
    return jax.vmap(lambda c, n, i: jax.lax.dynamic_update_slice_in_dim(c, n, i, axis=0))(
        cache, new.astype(cache.dtype), start)


class Attention(nn.Module):
    """Multi-head attention with grouped K/V heads (MHA: kv = h, GQA: 1 < kv < h, MQA: kv = 1).

    q = x·W_q, k = x·W_k, v = x·W_v with RoPE on q and k; out = attention(q, k, v)·W_o.
    With `cache = (k_cache, v_cache)` of shape `[b, max_len, kv_h, d]` the new keys and values
    are written at `positions` (consecutive in each row) and the queries attend to cache entries
    at positions ≤ their own (`cached_attention`). A `tree_mask [b, t, t]` (decoding only) makes
    the t new tokens a tree instead (`tree_attention_mask`): they are written to the t slots from
    `positions[:, 0]` on (the root, at depth 0, first), their positions are the cache length plus
    their depth, and each sees the cache before them and its own ancestors. With a `mesh`,
    activations are pinned to it and the Pallas kernels run per device ("pallas"), or as a ring
    over its `context` axis ("ring"). With `qk_norm` (Chameleon's QK-Norm) q and k pass through
    a `HeadLayerNorm` each (`q_norm`, `k_norm`) before RoPE.
    """

    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    attention_impl: str = "xla"
    dtype: Dtype = jnp.float32
    mesh: Any = None
    qk_norm: bool = False

    @nn.compact
    def __call__(self, x, positions, segment_ids=None, cache=None, tree_mask=None):
        dim = x.shape[-1]
        init = nn.initializers.normal(stddev=dim**-0.5)
        w_q = param_with_axes(self, "q", init, (dim, self.num_heads, self.head_dim), ("embed", "heads", "head_dim"))
        w_k = param_with_axes(self, "k", init, (dim, self.num_kv_heads, self.head_dim), ("embed", "kv_heads", "head_dim"))
        w_v = param_with_axes(self, "v", init, (dim, self.num_kv_heads, self.head_dim), ("embed", "kv_heads", "head_dim"))
        w_o = param_with_axes(
            self, "o", nn.initializers.normal(stddev=(self.num_heads * self.head_dim) ** -0.5),
            (self.num_heads, self.head_dim, dim), ("heads", "head_dim", "embed"))
        x = x.astype(self.dtype)
        q = jnp.einsum("bsd,dhk->bshk", x, w_q.astype(self.dtype))
        k = jnp.einsum("bsd,dhk->bshk", x, w_k.astype(self.dtype))
        v = jnp.einsum("bsd,dhk->bshk", x, w_v.astype(self.dtype))
        if self.qk_norm:
            q, k = HeadLayerNorm("heads", name="q_norm")(q), HeadLayerNorm("kv_heads", name="k_norm")(k)
        q = constrain(apply_rope(q, positions, self.rope_theta), ("batch", "seq", "heads", None), self.mesh)
        k = constrain(apply_rope(k, positions, self.rope_theta), ("batch", "seq", "kv_heads", None), self.mesh)
        v = constrain(v, ("batch", "seq", "kv_heads", None), self.mesh)
        if cache is None:
            out = attention(q, k, v, positions, positions, segment_ids, segment_ids, impl=self.attention_impl,
                            mesh=self.mesh)
            new_cache = None
        else:
            k_cache = write_cache(cache[0], k, positions[:, 0])
            v_cache = write_cache(cache[1], v, positions[:, 0])
            out = cached_attention(q, k_cache.astype(self.dtype), v_cache.astype(self.dtype), positions,
                                   impl=self.attention_impl, mesh=self.mesh, tree_mask=tree_mask)
            new_cache = (k_cache, v_cache)
        out = jnp.einsum("bshk,hkd->bsd", out, w_o.astype(self.dtype))
        return out, new_cache


ATTENTION_IMPLS = ("xla", "pallas", "cudnn", "ring")
DECODE_BLOCK_K = 128  # cache positions per split of the "pallas" decode kernel
DECODE_MAX_QUERIES = 16  # "pallas" runs query blocks up to this length (decode steps) on the decode kernel


def attention(q, k, v, q_positions, kv_positions, q_segment_ids=None, kv_segment_ids=None, *, impl="xla",
              mesh=None):
    """Causal self-attention of one sequence: q `[b, t, h, d]` over k/v `[b, t, kv_h, d]`, by `impl`.

    Key j is visible to query i when kv_pos[j] ≤ q_pos[i] and, for packed sequences, the
    segment ids are equal.
      "xla":    dense masked scores (`attention_mask`; segment id 0 marks padding and is never visible).
      "pallas": the flash kernel (pallas_kernels/flash_attention.py), causal by index within segments;
                with a mesh, per device on its batch rows and heads (`kernel_per_device`).
      "cudnn":  cuDNN's fused attention through `jax.nn.dot_product_attention`, causal by index
                within segments; needs a CUDA GPU and bfloat16 or float16.
      "ring":   context parallelism: ring attention (research/parallel/ring_attention.py) over the
                `context` axis of `mesh`, sequences in zig-zag order (`uses_ring_attention`: the
                model permutes its tokens once); "pallas" when there is no such axis.
    Causal by index equals causal by position when positions grow along each segment, as the
    model's positions do (0, 1, ... per row, or restarting at 0 with each packed document):
    within a segment j ≤ i ⇔ pos[j] ≤ pos[i], and across segments the ids mask. Real tokens
    then see the same keys under every impl; only padding rows (segment id 0) differ, which
    carry no loss.
    """
    _check_impl(impl, q.dtype)
    if uses_ring_attention(impl, mesh):
        batch_axes, head_axes = batch_and_head_axes(mesh, q, k)
        return ring_attention(q, k, v, mesh, axis_name=CONTEXT_AXIS, causal=True, segment_ids=q_segment_ids,
                              layout="zigzag", batch_axes=batch_axes, head_axis=head_axes)
    if impl in ("pallas", "ring"):
        return kernel_per_device(lambda q, k, v, ids: flash_attention(q, k, v, causal=True, segment_ids=ids),
                                 mesh, q, k, v, q_segment_ids)
    if impl == "cudnn":
        mask = None
        if q_segment_ids is not None:
            mask = (q_segment_ids[:, :, None] == kv_segment_ids[:, None, :])[:, None]
        return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True, implementation="cudnn")
    mask = attention_mask(q_positions, kv_positions, q_segment_ids, kv_segment_ids)
    return dot_product_attention(q, k, v, mask)


def kernel_per_device(kernel, mesh, q, k, *arrays):
    """`kernel(q, k, *arrays)` run inside `shard_map`, every device on its own batch rows and heads.

    GSPMD cannot partition a Pallas kernel (Mosaic refuses to compile one whose operands are sharded),
    so with a mesh the attention kernels run per device, as MaxText runs its kernels: arrays
    [b, s, heads, d] split over the mesh axes of `batch` and, where they divide the K/V heads (so every
    device keeps whole groups of query heads), of `heads`; other arrays [b, ...] over the batch axes;
    the sequence whole on each device (under a `context` axis "ring" is the impl that splits it).
    The output is [b, s, heads, d] like q. Without a mesh, the kernel on the whole arrays.
    """
    if mesh is None:
        return kernel(q, k, *arrays)
    batch, heads = batch_and_head_axes(mesh, q, k)

    def spec(x):
        if x is None:
            return P()
        return P(batch, None, heads, None) if x.ndim == 4 else P(batch, *([None] * (x.ndim - 1)))

    inputs = (q, k, *arrays)
    return jax.shard_map(kernel, mesh=mesh, in_specs=tuple(spec(x) for x in inputs), out_specs=spec(q),
                         check_vma=False)(*inputs)


def batch_and_head_axes(mesh, q, k):
    """The mesh axes that split q's batch and, where they divide the K/V heads of k (so every device
    keeps whole groups of query heads), the heads; None for a dimension they do not divide."""
    return dividing_mesh_axes(mesh, "batch", q.shape[0]), dividing_mesh_axes(mesh, "heads", k.shape[2])


def uses_ring_attention(impl: str, mesh) -> bool:
    """Whether training attention runs as a ring over the mesh's `context` axis."""
    return impl == "ring" and context_parallel_size(mesh) > 1


def cached_attention(q, k_cache, v_cache, q_positions, *, impl="xla", mesh=None, tree_mask=None):
    """Attention of the newest t tokens over a KV cache that already holds their keys, by `impl`.

    q `[b, t, h, d]` at consecutive positions `q_positions [b, t]`; k/v_cache `[b, S, kv_h, d]`;
    cache entry j is visible to the query at position p when j ≤ p. With `tree_mask [b, t, t]`
    the new tokens are a tree written from slot q_positions[:, 0] on (`tree_attention_mask`).
      "xla", "cudnn": masked attention over the whole cache (trees too).
      "pallas", "ring": t ≤ DECODE_MAX_QUERIES (decode steps): the flash-decoding kernel
                (pallas_kernels/decode_attention.py) with lengths = last position + 1; it needs
                S ≤ DECODE_BLOCK_K or a multiple of it (`kv_cache_length`).
                Longer blocks (a prefill): when every row starts at position 0 the visible
                entries are exactly the first t, written just now, so causal flash attention over
                them is exact; otherwise (a later chunk) the dense path.
                With a mesh the kernels run per device (`kernel_per_device`).
    """
    _check_impl(impl, q.dtype)
    kv_positions = jnp.broadcast_to(jnp.arange(k_cache.shape[1]), k_cache.shape[:2])
    if impl in ("xla", "cudnn"):
        if tree_mask is None:
            mask = attention_mask(q_positions, kv_positions)
        else:
            mask = tree_attention_mask(q_positions[:, 0], tree_mask, k_cache.shape[1])
        if impl == "cudnn":
            return jax.nn.dot_product_attention(q, k_cache, v_cache, mask=mask[:, None], implementation="cudnn")
        return dot_product_attention(q, k_cache, v_cache, mask)
    if tree_mask is not None:
        raise ValueError(f"attention_impl={impl!r} has no tree attention (tree_mask); decode trees with "
                         "attention_impl 'xla' or 'cudnn'")
    num_queries, cache_len = q.shape[1], k_cache.shape[1]
    if num_queries <= DECODE_MAX_QUERIES:
        if cache_len > DECODE_BLOCK_K and cache_len % DECODE_BLOCK_K:
            raise ValueError(f"attention_impl='pallas' decodes the KV cache in blocks of {DECODE_BLOCK_K} "
                             f"positions: its length {cache_len} must be a multiple of {DECODE_BLOCK_K} "
                             "(see kv_cache_length)")
        return kernel_per_device(functools.partial(decode_attention, block_k=DECODE_BLOCK_K), mesh, q, k_cache,
                                 v_cache, q_positions[:, -1] + 1)

    def prefill():
        return kernel_per_device(functools.partial(flash_attention, causal=True), mesh, q,
                                 k_cache[:, :num_queries], v_cache[:, :num_queries])

    def later_chunk():
        return dot_product_attention(q, k_cache, v_cache, attention_mask(q_positions, kv_positions))

    return jax.lax.cond(jnp.all(q_positions[:, 0] == 0), prefill, later_chunk)


def tree_attention_mask(tree_start, tree_mask, cache_len: int):
    """Boolean mask `[b, t, S]` of t tree tokens written to cache slots start_b, ..., start_b + t − 1.

    Query i sees slot j when j < start_b (the row's cache before the tree) or when j = start_b + n
    for a tree node n with tree_mask[b, i, n] (its ancestors and itself); later slots are never
    visible. `tree_start [b]`, `tree_mask [b, t, t]`.
    """
    num_nodes = tree_mask.shape[-1]
    offset = jnp.arange(cache_len)[None, :] - tree_start[:, None]  # [b, S]: the slot's tree node, if any
    in_tree = (offset >= 0) & (offset < num_nodes)
    node = jnp.broadcast_to(jnp.clip(offset, 0, num_nodes - 1)[:, None, :], (*tree_mask.shape[:2], cache_len))
    sees_node = jnp.take_along_axis(tree_mask, node, axis=2)
    return (offset < 0)[:, None, :] | (in_tree[:, None, :] & sees_node)


def kv_cache_length(num_positions: int, impl: str) -> int:
    """The cache length for `num_positions` tokens: as is, or for "pallas" rounded up to a multiple
    of DECODE_BLOCK_K once it exceeds one block (entries past a row's tokens are never visible)."""
    if impl not in ("pallas", "ring") or num_positions <= DECODE_BLOCK_K:
        return num_positions
    return -(-num_positions // DECODE_BLOCK_K) * DECODE_BLOCK_K


def _check_impl(impl, dtype):
    """Raises ValueError for an unknown impl, and for "cudnn" off a GPU or outside 16-bit floats."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention_impl={impl!r} is not one of {ATTENTION_IMPLS}")
    if impl != "cudnn":
        return
    if jax.default_backend() != "gpu":
        raise ValueError(f"attention_impl='cudnn' needs a CUDA GPU with cuDNN, but this platform is "
                         f"{jax.default_backend()!r}; use 'xla' or 'pallas'")
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        raise ValueError(f"attention_impl='cudnn' needs model.dtype bfloat16 or float16, got {jnp.dtype(dtype)}")
