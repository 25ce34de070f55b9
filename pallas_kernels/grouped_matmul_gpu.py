"""The grouped matmul's two kernels as Triton programs (GPU); the math is pallas_kernels/grouped_matmul.py's.

A Triton grid runs its programs in parallel and each output tile must be written by one program,
so instead of visiting (group, row tile) pairs in order as the TPU kernels do, each program owns
its output tile and loops over the groups that cover it:

    gmm:  program (row tile t, column tile j) loops over the groups g whose rows meet tile t
          (first_group[t] … last_group[t], precomputed with jnp) and the k tiles:
              out[t, j] = Σ_g mask_g ⊙ (lhs[t] · rhs[g][:, j])
          A tile past Σ group_sizes has no group and is written as zeros; only empty groups inside a
          tile's span cost a wasted tile matmul.
    tgmm: program (group g, k tile i, n tile j) loops over the row tiles of its rows [s_g, e_g):
              d_rhs[g][i, j] = Σ_t (mask_g ⊙ lhs[t][:, i])ᵀ · d_out[t][:, j]
          An empty group runs no (or one masked) iteration and writes zeros.

Tiles are powers of two of at least 16 (Triton's rule); the caller pads the dims to whole tiles.
"""

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

MIN_TILE = 16
TRITON_PARAMS = {"num_warps": 4, "num_stages": 3}


def triton_tile(size: int, preferred: int) -> int:
    """The tile for a dim of `size`: the preferred tile, or the dim rounded up to a power of two
    when that is smaller; never under MIN_TILE. Raises ValueError unless `preferred` is a power of two."""
    if preferred < MIN_TILE or preferred & (preferred - 1):
        raise ValueError(f"tiling {preferred}: Triton tiles must be powers of two of at least {MIN_TILE}")
    return max(MIN_TILE, min(preferred, pl.next_power_of_2(size)))


def group_bounds(group_sizes, num_rows: int):
    """(starts, ends) int32 [E]: group g owns rows [starts[g], ends[g]), clipped to num_rows."""
    ends = jnp.minimum(jnp.cumsum(group_sizes.astype(jnp.int32)), num_rows)
    return jnp.concatenate([jnp.zeros((1,), jnp.int32), ends[:-1]]), ends


def gmm(lhs, rhs, group_sizes, tiling, transpose_rhs: bool, cost, *, interpret: bool = False):
    """out [m, n] = lhs [m, k] · rhs[g] per row group; rhs [E, k, n], or [E, n, k] used as rhs[g]ᵀ
    with `transpose_rhs`. m, k, n must be multiples of the (tm, tk, tn) tiling."""
    tm, tk, tn = tiling
    (m, k), n = lhs.shape, rhs.shape[1 if transpose_rhs else 2]
    num_tiles = m // tm
    starts, ends = group_bounds(group_sizes, m)
    tile_starts = jnp.arange(num_tiles, dtype=jnp.int32) * tm
    first_group = jnp.searchsorted(ends, tile_starts, side="right").astype(jnp.int32)
    last_row = jnp.minimum(tile_starts + tm, ends[-1]) - 1
    last_group = jnp.searchsorted(ends, last_row, side="right").astype(jnp.int32)
    num_groups = rhs.shape[0]

    def kernel(first_ref, last_ref, starts_ref, ends_ref, lhs_ref, rhs_ref, out_ref):
        rows = pl.program_id(0) * tm + lax.broadcasted_iota(jnp.int32, (tm, tn), 0)

        def one_group(g, out):
            def k_step(kk, acc):
                columns = pl.ds(pl.multiple_of(kk * tk, tk), tk)
                if transpose_rhs:
                    product = lax.dot_general(lhs_ref[:, columns], rhs_ref[g, :, columns], (((1,), (1,)), ((), ())),
                                              preferred_element_type=jnp.float32)
                else:
                    product = jnp.dot(lhs_ref[:, columns], rhs_ref[g, columns, :], preferred_element_type=jnp.float32)
                return acc + product

            acc = lax.fori_loop(0, k // tk, k_step, jnp.zeros((tm, tn), jnp.float32))
            return jnp.where((rows >= starts_ref[g]) & (rows < ends_ref[g]), acc, out)

        t = pl.program_id(0)
        out = lax.fori_loop(first_ref[t], last_ref[t] + 1, one_group, jnp.zeros((tm, tn), jnp.float32))
        out_ref[...] = out.astype(out_ref.dtype)

    per_tile = pl.BlockSpec((num_tiles,), lambda t, j: (0,))
    per_group = pl.BlockSpec((num_groups,), lambda t, j: (0,))
    rhs_spec = pl.BlockSpec((num_groups, tn, k), lambda t, j: (0, j, 0)) if transpose_rhs \
        else pl.BlockSpec((num_groups, k, tn), lambda t, j: (0, 0, j))
    return pl.pallas_call(
        kernel, grid=(num_tiles, n // tn),
        in_specs=[per_tile, per_tile, per_group, per_group, pl.BlockSpec((tm, k), lambda t, j: (t, 0)), rhs_spec],
        out_specs=pl.BlockSpec((tm, tn), lambda t, j: (t, j)), out_shape=jax.ShapeDtypeStruct((m, n), lhs.dtype),
        interpret=interpret, compiler_params=pltriton.CompilerParams(**TRITON_PARAMS), cost_estimate=cost,
        name="grouped_matmul")(first_group, last_group, starts, ends, lhs, rhs)


def tgmm(lhs, d_out, group_sizes, tiling, cost, *, interpret: bool = False):
    """d_rhs [E, k, n]: d_rhs[g] = Σ over group g's rows of lhs[r]ᵀ · d_out[r], lhs [m, k], d_out [m, n];
    m, k, n multiples of the (tm, tk, tn) tiling."""
    tm, tk, tn = tiling
    (m, k), n = lhs.shape, d_out.shape[1]
    starts, ends = group_bounds(group_sizes, m)
    num_groups = group_sizes.shape[0]

    def kernel(starts_ref, ends_ref, lhs_ref, d_out_ref, out_ref):
        g = pl.program_id(0)
        start, end = starts_ref[g], ends_ref[g]

        def row_tile(t, acc):
            first_row = pl.multiple_of(t * tm, tm)
            rows = first_row + lax.broadcasted_iota(jnp.int32, (tm, tk), 0)
            lhs_rows = jnp.where((rows >= start) & (rows < end), lhs_ref[pl.ds(first_row, tm), :], 0)
            return acc + lax.dot_general(lhs_rows.astype(lhs_ref.dtype), d_out_ref[pl.ds(first_row, tm), :],
                                         (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)

        acc = lax.fori_loop(start // tm, (end + tm - 1) // tm, row_tile, jnp.zeros((tk, tn), jnp.float32))
        out_ref[...] = acc.astype(out_ref.dtype)

    per_group = pl.BlockSpec((num_groups,), lambda g, i, j: (0,))
    return pl.pallas_call(
        kernel, grid=(num_groups, k // tk, n // tn),
        in_specs=[per_group, per_group, pl.BlockSpec((m, tk), lambda g, i, j: (0, i)),
                  pl.BlockSpec((m, tn), lambda g, i, j: (0, j))],
        out_specs=pl.BlockSpec((None, tk, tn), lambda g, i, j: (g, i, j)),
        out_shape=jax.ShapeDtypeStruct((num_groups, k, n), lhs.dtype), interpret=interpret,
        compiler_params=pltriton.CompilerParams(**TRITON_PARAMS), cost_estimate=cost,
        name="grouped_matmul_tgmm")(starts, ends, lhs, d_out)
