"""Ring reduce-scatter, all-gather and all-reduce from `lax.ppermute`, inside `jax.shard_map`.

The p devices along `axis_name` form a ring; device i sends to i+1 (shift +1) and, in the
bidirectional variant, also to i−1 (shift −1). Every collective takes p−1 ppermute steps.

Reduce-scatter. Each device's buffer is p chunks x_i[0..p−1]. With shift δ, device i starts
with the accumulator a = x_i[i−δ]; at step s = 1..p−1 it passes a to i+δ, receives its
left neighbour's accumulator, which holds chunk k = i−δ(s+1) (mod p), and adds x_i[k].
After step p−1, k = i: device i holds Σ_j x_j[i], the result of `lax.psum_scatter`.

All-gather. Device i passes on the block it received in the previous step (its own at step
1); at step s it receives the block of device i−δs and writes it in place into row i−δs of
the output, so the output is the only full-size buffer; after p−1 steps it has all p rows.

All-reduce = reduce-scatter + all-gather: 2(p−1) steps of N/p bytes, so every device sends
2(p−1)/p·N bytes for an N-byte buffer, independent of p: the bandwidth-optimal ring.

Bidirectional: every chunk is cut in two halves; the first half runs the ring with shift
+1, the second with shift −1, so both directions of every link carry N/(2p) per step.

Results equal `lax.psum_scatter`, `lax.all_gather` and `lax.psum`: bitwise for integers,
up to the summation order for floats (the ring adds chunk k in the order k+δ, k+2δ, ...).
Outputs are typed as varying over `axis_name` (there is no public varying→invariant cast),
so give `shard_map` an out_spec over the axis or `check_vma=False` to return them replicated.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def axis_size(axis_name) -> int:
    """The size of `axis_name` in the enclosing `shard_map`; a clear error if it is not bound."""
    try:
        return lax.axis_size(axis_name)
    except NameError:
        mesh_axes = jax.sharding.get_abstract_mesh().axis_names
        raise ValueError(f"axis_name {axis_name!r} is not an axis of the enclosing shard_map; "
                         f"its mesh axes are {mesh_axes}") from None


def _check_summable(x):
    dtype = jnp.result_type(x)
    if not (jnp.issubdtype(dtype, jnp.number)):
        raise TypeError(f"ring reductions add numbers; got an array of dtype {dtype}")


def _shift_permutation(p: int, shift: int) -> list[tuple[int, int]]:
    return [(i, (i + shift) % p) for i in range(p)]


def _shifts(bidirectional: bool) -> tuple[int, ...]:
    return (1, -1) if bidirectional else (1,)


def _split_lanes(x, num_lanes: int):
    """[..., c] → `num_lanes` arrays [..., ceil(c/num_lanes)], zero-padded: one per direction."""
    width = -(-x.shape[-1] // num_lanes)
    padding = [(0, 0)] * (x.ndim - 1) + [(0, width * num_lanes - x.shape[-1])]
    return jnp.split(jnp.pad(x, padding), num_lanes, axis=-1)


def _reduce_scatter_lanes(lanes, axis_name, p: int, shifts):
    """Lane l: [p, h] chunks → [h] on device i, Σ_j lane_j[i], run with shift `shifts[l]`.

    All lanes advance together, so each of the p−1 steps issues one ppermute per lane.
    """
    index = lax.axis_index(axis_name)

    def own_chunk(lane, k):
        return lax.dynamic_index_in_dim(lane, k % p, axis=0, keepdims=False)

    accumulators = [own_chunk(lane, index - shift) for lane, shift in zip(lanes, shifts)]
    for step in range(1, p):
        accumulators = [
            lax.ppermute(acc, axis_name, _shift_permutation(p, shift))
            + own_chunk(lane, index - shift * (step + 1))
            for acc, lane, shift in zip(accumulators, lanes, shifts)]
    return accumulators


def _all_gather_lanes(lanes, axis_name, p: int, shifts):
    """Lane l: [h] → one flat [p·L·h] vector laid out as [device, lane, h], in p−1 steps.

    Each arriving block is written straight into its place in the output (an in-place
    dynamic-update-slice), so the result is the only buffer of full size.
    """
    index = lax.axis_index(axis_name)
    num_lanes, width = len(lanes), lanes[0].shape[0]
    gathered = jnp.zeros((p * num_lanes * width,), lanes[0].dtype)

    def place(gathered, block, device, lane):
        offset = ((device % p) * num_lanes + lane) * width
        return lax.dynamic_update_slice(gathered, block, (offset,))

    for lane, (block, shift) in enumerate(zip(lanes, shifts)):
        gathered = place(gathered, block, index, lane)
        for step in range(1, p):
            block = lax.ppermute(block, axis_name, _shift_permutation(p, shift))
            gathered = place(gathered, block, index - shift * step, lane)
    return gathered


def ring_reduce_scatter(x, axis_name, *, bidirectional=False, scatter_dimension=0, tiled=False):
    """`lax.psum_scatter(x, axis_name, scatter_dimension=..., tiled=...)` on a ring, leafwise.

    Each device sends (p−1)/p·N bytes for an N-byte leaf. `x.shape[scatter_dimension]` must
    be p (untiled: that dimension is removed) or, tiled, a multiple of p (it shrinks p-fold).
    """
    p = axis_size(axis_name)

    def one_leaf(leaf):
        _check_summable(leaf)
        rows = leaf.shape[scatter_dimension]
        if (rows % p) if tiled else (rows != p):
            raise ValueError(f"ring_reduce_scatter over {axis_name!r} of size {p}: dimension "
                             f"{scatter_dimension} of a leaf of shape {leaf.shape} must be "
                             f"{'a multiple of ' if tiled else ''}{p}")
        if p == 1:
            return leaf if tiled else jnp.squeeze(leaf, scatter_dimension)
        moved = jnp.moveaxis(leaf, scatter_dimension, 0)
        chunks = moved.reshape(p, -1)
        shifts = _shifts(bidirectional)
        lanes = _reduce_scatter_lanes(_split_lanes(chunks, len(shifts)), axis_name, p, shifts)
        reduced = jnp.concatenate(lanes)[:chunks.shape[1]]
        if not tiled:
            return reduced.reshape(moved.shape[1:])
        reduced = reduced.reshape((rows // p,) + moved.shape[1:])
        return jnp.moveaxis(reduced, 0, scatter_dimension)

    return jax.tree.map(one_leaf, x)


def ring_all_gather(x, axis_name, *, bidirectional=False, axis=0, tiled=False):
    """`lax.all_gather(x, axis_name, axis=..., tiled=...)` on a ring, leafwise.

    Each device sends (p−1)·B bytes for a B-byte block, i.e. (p−1)/p·N of the N-byte result.
    """
    p = axis_size(axis_name)

    def one_leaf(leaf):
        if p == 1:
            rows = jnp.expand_dims(leaf, 0)
        else:
            shifts = _shifts(bidirectional)
            lanes = _split_lanes(leaf.reshape(-1), len(shifts))
            rows = _all_gather_lanes(lanes, axis_name, p, shifts).reshape(p, -1)
            rows = rows[:, :leaf.size].reshape((p,) + leaf.shape)
        gathered = jnp.moveaxis(rows, 0, axis)
        if not tiled:
            return gathered
        return gathered.reshape(leaf.shape[:axis] + (p * leaf.shape[axis],) + leaf.shape[axis + 1:])

    return jax.tree.map(one_leaf, x)


def ring_all_reduce(x, axis_name, *, bidirectional=False):
    """`lax.psum(x, axis_name)` as a ring reduce-scatter followed by a ring all-gather.

    All leaves of one dtype are fused into a single vector (fewer, larger messages), which is
    zero-padded to a multiple of p (2p bidirectional), split into p chunks, reduce-scattered,
    gathered and stripped. Every device sends 2(p−1)/p·N bytes for N bytes of leaves, in
    2(p−1) steps.
    """
    p = axis_size(axis_name)
    jax.tree.map(_check_summable, x)
    shifts = _shifts(bidirectional)

    def all_reduce_vector(vector):
        padded = jnp.pad(vector, (0, (-vector.size) % (p * len(shifts))))
        chunks = padded.reshape(p, len(shifts), -1)
        lanes = [chunks[:, lane] for lane in range(len(shifts))]
        shards = _reduce_scatter_lanes(lanes, axis_name, p, shifts)
        return _all_gather_lanes(shards, axis_name, p, shifts)[:vector.size]

    return x if p == 1 else map_fused_by_dtype(all_reduce_vector, x)


def map_fused_by_dtype(vector_fn, tree):
    """Applies `vector_fn` ([n] → [n]) once per dtype to the concatenation of the tree's leaves.

    This is how any array all-reduce (these rings, the Pallas kernels) reduces a whole
    gradient pytree in one collective per dtype, like the buckets of PyTorch DDP.
    """
    leaves, treedef = jax.tree.flatten(tree)
    leaves = [jnp.asarray(leaf) for leaf in leaves]
    results = [None] * len(leaves)
    for dtype in dict.fromkeys(leaf.dtype for leaf in leaves):
        members = [i for i, leaf in enumerate(leaves) if leaf.dtype == dtype]
        fused = jnp.concatenate([leaves[i].reshape(-1) for i in members])
        offsets = np.cumsum([leaves[i].size for i in members])[:-1]
        for i, piece in zip(members, jnp.split(vector_fn(fused), offsets)):
            results[i] = piece.reshape(leaves[i].shape)
    return jax.tree.unflatten(treedef, results)
