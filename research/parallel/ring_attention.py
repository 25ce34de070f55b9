"""Ring attention with zig-zag load balancing: context parallelism over one mesh axis.

The sequence is split over the n devices of `axis_name`. Queries stay where they are; each
device's K/V block travels around the ring with `lax.ppermute` (device s sends to s + 1), so
after n − 1 hops every query block has met every key block, and no device holds more than its
own block and one visitor (Liu et al., 2023). Each meeting is one call of the flash kernel, which
returns the block's output O_b and log-sum-exp L_b; partial results merge exactly:

    m = max(L₁, L₂),   ℓ = e^{L₁−m} + e^{L₂−m},   L = m + log ℓ,
    O = (e^{L₁−m} O₁ + e^{L₂−m} O₂) / ℓ.

Zig-zag layout (causal load balancing). Cut the sequence into 2n chunks of c tokens; device i
holds chunk i followed by chunk 2n−1−i, one early and one late. At hop r the visitor is the block
of device j = (i − r) mod n:
    r = 0:  the device's own chunks, in order: causal attention by index is exact, since
            positions grow along the local layout;
    j < i:  both query chunks see all of chunk j and nothing of chunk 2n−1−j:
            all 2c queries × the visitor's first c keys, no mask;
    j > i:  chunk i sees nothing of the visitor, chunk 2n−1−i sees all of it:
            the last c queries × all 2c keys, no mask.
So every hop after the first costs every device the same 2c × c scores: nobody idles while the
others finish (a contiguous split would leave device 0 with one block and device n−1 with n).
Without `causal` every hop is all queries × all keys and the layout does not matter.

Backward (a custom VJP, so nothing of the ring is stored but the local q, k, v, O, L): the same
hops again. dQ stays home and accumulates; dK and dV of the visiting block travel with it, in
float32, and one hop after the last meeting they are back at their owner. Each hop's terms come
from `flash_attention_backward` with the final O and L (P = exp(S − L) is the block's share of
the full softmax).

`segment_ids` (packed sequences) rotate with their keys; attention stays within equal ids.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

from pallas_kernels.flash_attention import flash_attention_backward, flash_attention_with_lse
from research.parallel.collectives import axis_size


def zigzag_order(seq_len: int, num_shards: int) -> np.ndarray:
    """Token indices in zig-zag layout: shard i holds chunks i and 2n−1−i of 2n equal chunks.

    `x[:, zigzag_order(s, n)]` lays a sequence out for `ring_attention_shard`;
    `np.argsort` of the order undoes it.
    """
    if seq_len % (2 * num_shards):
        raise ValueError(f"sequence length {seq_len} must be divisible by 2 × {num_shards} shards "
                         "for the zig-zag layout")
    chunks = np.arange(seq_len).reshape(2 * num_shards, -1)
    return np.concatenate([np.concatenate([chunks[i], chunks[2 * num_shards - 1 - i]])
                           for i in range(num_shards)])


def ring_attention(q, k, v, mesh, *, axis_name="context", causal=True, segment_ids=None, sm_scale=None,
                   block_q=128, block_k=128, interpret=None, layout="sequence", batch_axes=None, head_axis=None):
    """Exact attention of q [b, s, h, d] over k, v [b, s, kv_h, d] with the sequence split over the
    mesh axis `axis_name`.

    layout: "sequence" — arrays in sequence order; the zig-zag layout is applied and undone here
      (two gathers along the sequence per call). "zigzag" — arrays already in zig-zag order
      (`zigzag_order`), as a model that permutes its tokens once at the input passes them.
    batch_axes, head_axis: mesh axes that split the batch and the heads (None: replicated), so
      arrays sharded that way enter the ring without being gathered.

    Returns [b, s, h, d] in the input layout; equal to
    `flash_attention(q, k, v, causal=causal, segment_ids=segment_ids)` in sequence order.
    Raises ValueError if s is not divisible by twice the axis size or the layout is unknown.
    """
    if axis_name not in mesh.shape:
        raise ValueError(f"axis_name {axis_name!r} is not an axis of the mesh {dict(mesh.shape)}")
    if layout not in ("sequence", "zigzag"):
        raise ValueError(f"layout={layout!r} is not 'sequence' or 'zigzag'")
    order = zigzag_order(q.shape[1], mesh.shape[axis_name])
    shard = functools.partial(ring_attention_shard, axis_name=axis_name, causal=causal, sm_scale=sm_scale,
                              block_q=block_q, block_k=block_k, interpret=interpret)
    heads_spec = P(batch_axes, axis_name, head_axis)
    ids_spec = P(batch_axes, axis_name)
    mapped = jax.shard_map(shard, mesh=mesh, in_specs=(heads_spec, heads_spec, heads_spec, ids_spec),
                           out_specs=heads_spec, check_vma=False)
    if layout == "zigzag":
        return mapped(q, k, v, segment_ids)
    ids = None if segment_ids is None else segment_ids[:, order]
    return mapped(q[:, order], k[:, order], v[:, order], ids)[:, np.argsort(order)]


def ring_attention_shard(q, k, v, segment_ids=None, *, axis_name, causal=True, sm_scale=None, block_q=128,
                         block_k=128, interpret=None):
    """Ring attention inside `shard_map`: this device's queries over every device's keys.

    q [b, 2c, h, d], k, v [b, 2c, kv_h, d], segment_ids [b, 2c] or None: this device's share of a
    sequence in zig-zag layout (`zigzag_order`); for causal=False any split works.
    Returns this device's output [b, 2c, h, d], differentiable in q, k, v.
    """
    ring = _Ring(axis_name=axis_name, causal=bool(causal), sm_scale=sm_scale, block_q=block_q, block_k=block_k,
                 interpret=interpret)
    if causal and q.shape[1] % 2:
        raise ValueError(f"the local sequence {q.shape[1]} must be two equal zig-zag chunks")
    return _ring_attention(q, k, v, segment_ids, ring)


@dataclasses.dataclass(frozen=True)
class _Ring:
    """Static settings of one ring: the axis, the mask and the kernel's options."""

    axis_name: str
    causal: bool
    sm_scale: float | None
    block_q: int
    block_k: int
    interpret: bool | None

    def kernel_options(self, causal):
        return dict(causal=causal, sm_scale=self.sm_scale, block_q=self.block_q, block_k=self.block_k,
                    interpret=self.interpret)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _ring_attention(q, k, v, segment_ids, ring):
    return _ring_forward(q, k, v, segment_ids, ring)[0]


def _ring_forward(q, k, v, segment_ids, ring):
    """The forward hops; returns the output and the residuals (local inputs, O, L)."""
    num_devices, device = axis_size(ring.axis_name), lax.axis_index(ring.axis_name)
    out, lse = _attend(q, (k, v, segment_ids), segment_ids, ring, causal=ring.causal)

    def hop(step, carry):
        out, lse, visitor = carry
        visitor = _rotate(visitor, ring.axis_name, num_devices)
        if ring.causal:
            block = _attend_causal_hop(q, visitor, segment_ids, ring, _source(device, step, num_devices) < device)
        else:
            block = _attend(q, visitor, segment_ids, ring, causal=False)
        return (*merge_partial_attention(out, lse, *block), visitor)

    out, lse, _ = lax.fori_loop(1, num_devices, hop, (out, lse, (k, v, segment_ids)))
    out = out.astype(q.dtype)
    return out, (q, k, v, segment_ids, out, lse)


def _ring_backward(ring, residuals, d_out):
    """The backward hops: dQ accumulates at home, dK and dV travel with their block and return to it."""
    q, k, v, segment_ids, out, lse = residuals
    num_devices, device = axis_size(ring.axis_name), lax.axis_index(ring.axis_name)
    final = (out, lse, d_out)
    dq, dk, dv = _gradients(q, (k, v, segment_ids), segment_ids, final, ring, causal=ring.causal)

    def hop(step, carry):
        dq, visitor, dk, dv = carry
        visitor, dk, dv = _rotate((visitor, dk, dv), ring.axis_name, num_devices)
        if ring.causal:
            block = _causal_hop_gradients(q, visitor, segment_ids, final, ring,
                                          _source(device, step, num_devices) < device)
        else:
            block = _gradients(q, visitor, segment_ids, final, ring, causal=False)
        block_dq, block_dk, block_dv = block
        return dq + block_dq, visitor, dk + block_dk, dv + block_dv

    dq, _, dk, dv = lax.fori_loop(1, num_devices, hop, (dq, (k, v, segment_ids), dk, dv))
    dk, dv = _rotate((dk, dv), ring.axis_name, num_devices)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_ring_attention.defvjp(_ring_forward, _ring_backward)


def _source(device, step, num_devices):
    """The device whose block visits `device` at hop `step`."""
    return (device - step) % num_devices


def _rotate(tree, axis_name, num_devices):
    """One hop around the ring: device s sends to s + 1."""
    return lax.ppermute(tree, axis_name, [(s, (s + 1) % num_devices) for s in range(num_devices)])


def merge_partial_attention(out_a, lse_a, out_b, lse_b):
    """Attention over the union of two disjoint key sets from each set's (O, L).

    m = max(L_a, L_b), ℓ = e^{L_a−m} + e^{L_b−m}, L = m + log ℓ, O = (e^{L_a−m} O_a + e^{L_b−m} O_b) / ℓ;
    O [b, s, h, d] (float32), L [b, s, h]. Rows that see neither set keep O = 0, L = −inf.
    """
    row_max = jnp.maximum(lse_a, lse_b)
    shift = jnp.where(row_max == -jnp.inf, 0.0, row_max)
    weight_a, weight_b = jnp.exp(lse_a - shift), jnp.exp(lse_b - shift)
    total = weight_a + weight_b
    out = (weight_a[..., None] * out_a + weight_b[..., None] * out_b) / jnp.where(total > 0, total, 1.0)[..., None]
    return out, shift + jnp.log(total)


def _attend(q, visitor, segment_ids, ring, causal):
    """(O_b [b, 2c, h, d] float32, L_b [b, 2c, h]) of all local queries over the whole visiting block."""
    k, v, kv_segment_ids = visitor
    out, lse = flash_attention_with_lse(q, k, v, q_segment_ids=segment_ids, kv_segment_ids=kv_segment_ids,
                                        **ring.kernel_options(causal))
    return out.astype(jnp.float32), lse


def _attend_causal_hop(q, visitor, segment_ids, ring, visitor_is_earlier):
    """(O_b, L_b) of a causal hop: the visitor's early chunk for all queries if it comes from an
    earlier device, else all of it for the late query chunk (the early chunk sees none of it)."""
    k, v, kv_segment_ids = visitor
    half = q.shape[1] // 2

    def earlier():
        return _attend(q, (k[:, :half], v[:, :half], _slice(kv_segment_ids, 0, half)), segment_ids, ring, False)

    def later():
        out, lse = _attend(q[:, half:], visitor, _slice(segment_ids, half, None), ring, False)
        unseen_out = jnp.zeros((q.shape[0], half, *out.shape[2:]), jnp.float32)
        unseen_lse = jnp.full((q.shape[0], half, lse.shape[2]), -jnp.inf, lse.dtype)
        return jnp.concatenate([unseen_out, out], axis=1), jnp.concatenate([unseen_lse, lse], axis=1)

    return lax.cond(visitor_is_earlier, earlier, later)


def _gradients(q, visitor, segment_ids, final, ring, causal, rows=slice(None)):
    """This block's (dQ, dK, dV) in float32 for the local queries `rows` over the whole visitor."""
    k, v, kv_segment_ids = visitor
    out, lse, d_out = final
    grads = flash_attention_backward(q[:, rows], k, v, out[:, rows], lse[:, rows], d_out[:, rows],
                                     q_segment_ids=_slice(segment_ids, rows.start, rows.stop),
                                     kv_segment_ids=kv_segment_ids, **ring.kernel_options(causal))
    return tuple(g.astype(jnp.float32) for g in grads)


def _causal_hop_gradients(q, visitor, segment_ids, final, ring, visitor_is_earlier):
    """(dQ, dK, dV) of a causal hop, the pairs of `_attend_causal_hop`; zeros where nothing was seen."""
    k, v, kv_segment_ids = visitor
    half = q.shape[1] // 2

    def earlier():  # the visitor's late chunk gets no gradient
        early = (k[:, :half], v[:, :half], _slice(kv_segment_ids, 0, half))
        dq, dk, dv = _gradients(q, early, segment_ids, final, ring, False)
        return dq, _pad_rows(dk, 0, half), _pad_rows(dv, 0, half)

    def later():  # the early query chunk gets no gradient
        dq, dk, dv = _gradients(q, visitor, segment_ids, final, ring, False, rows=slice(half, None))
        return _pad_rows(dq, half, 0), dk, dv

    return lax.cond(visitor_is_earlier, earlier, later)


def _slice(segment_ids, start, stop):
    return None if segment_ids is None else segment_ids[:, start:stop]


def _pad_rows(x, before, after):
    """Zero rows before and after x along the sequence axis 1."""
    return jnp.pad(x, ((0, 0), (before, after), (0, 0), (0, 0)))
