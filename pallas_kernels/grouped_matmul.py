"""Grouped matmul (the Megablox idea) in Pallas: the expert matmul of a dropless mixture of experts.

Math. The m rows of lhs [m, k] are sorted by group: rows [s_g, e_g) belong to group g, with
e_g = s_g + group_sizes[g] and s_0 = 0; rhs [E, k, n] holds one matrix per group. Then

    out[r] = lhs[r] · rhs[g]     for s_g ≤ r < e_g,    out[r] = 0 for r ≥ Σ group_sizes,

which is `jax.lax.ragged_dot(lhs, rhs, group_sizes)`. Its gradients are two grouped matmuls:

    d_lhs[r]  = d_out[r] · rhs[g]ᵀ                       (`gmm` with rhs transposed)
    d_rhs[g]  = Σ_{s_g ≤ r < e_g} lhs[r]ᵀ · d_out[r]     (`tgmm`, the transposed grouped matmul)

both under one `jax.custom_vjp`.

Cost. Every kernel declares its work as a `pl.CostEstimate`, so that XLA's cost analysis of a program
counts the kernel instead of nothing: 2·r·k·n FLOPs and the bytes of r rows, for r = `expected_rows`
(default m). A buffer that only some rows of fill (an expert-parallel receive buffer: m = ep·T·k rows
of which T·k arrive on average, research/models/moe.py) states its mean r, not its size.

Tiles (TPU and interpret mode). The rows are cut into tiles of tm rows. A "visit" is one
(group, row tile) pair the group's rows overlap; the kernels walk a list of visits, at most
V = tiles + groups − 1, precomputed from group_sizes with jnp (`visits`) and handed to the kernel
as scalar-prefetch arrays: the group of each visit (which rhs block the index map fetches), its row
tile, and its row range [s_g, e_g). A tile that straddles two groups is visited once per group and
each visit keeps only its own rows (a mask), so no tile mixes experts. Compiled by Mosaic, the
visit axis of the grid is dynamic, as long as the visits there are (Megablox's `num_active_tiles`),
so row tiles past Σ group_sizes cost nothing; `gmm`'s output is a zero buffer aliased to the
result, so those tiles read 0. The interpreter needs a static grid: there the unused tail of the
list repeats the last visit with an empty row range, whose block indices do not change (nothing is
fetched) and whose matmul is skipped (`pl.when`). Empty groups are not visited by `gmm`; `tgmm`
visits each once to write its zero gradient.

    gmm:  grid (n tiles, visits, k tiles), k innermost; the [tm, tn] output tile stays in VMEM
          while consecutive visits of the same row tile fill in their rows.
    tgmm: grid (k tiles, n tiles, visits); the [tk, tn] gradient of a group accumulates over the
          group's consecutive visits.

On a GPU the kernels are Triton programs (pallas_kernels/grouped_matmul_gpu.py) that loop over
the groups of a row tile instead. Accumulation is float32; inputs float32 or bfloat16.
"""

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels import grouped_matmul_gpu
from pallas_kernels.compile_target import compile_target

MOSAIC_LANES = 128  # a Mosaic block's last dim: a multiple of 128 or the whole array dim
ROW_ALIGN = 16  # row tiles: whole (16, 128) bfloat16 tiles (8 rows for float32)
DEFAULT_TILING = {"tpu": (128, 512, 512), "interpret": (128, 512, 512), "gpu": (64, 64, 128)}


class Visits(NamedTuple):
    """The visit list of a grouped matmul (module docstring): int32 [V] arrays and the number used."""

    group: jax.Array  # rhs / d_rhs block of the visit
    tile: jax.Array  # row tile of the visit
    row_start: jax.Array  # rows [row_start, row_end) of the tile are the visit's (empty: skip)
    row_end: jax.Array
    count: jax.Array  # int32 scalar: visits in use; the rest repeat the last one with no rows


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Static sizes of one call: tiles and the padded dims (multiples of the tiles)."""

    target: str
    num_groups: int
    expected_rows: int  # rows the cost estimate counts
    tm: int
    tk: int
    tn: int
    m: int
    k: int
    n: int

    @property
    def interpret(self) -> bool:
        return self.target == "interpret"

    @property
    def m_padded(self) -> int:
        return _round_up(self.m, self.tm)

    @property
    def k_padded(self) -> int:
        return _round_up(self.k, self.tk)

    @property
    def n_padded(self) -> int:
        return _round_up(self.n, self.tn)


def grouped_matmul(lhs, rhs, group_sizes, *, tiling=None, expected_rows=None, interpret=None):
    """out[r] = lhs[r] · rhs[g(r)] for rows sorted by group; differentiable in lhs and rhs.

    Args:
      lhs: [m, k], rows sorted by group. rhs: [E, k, n], same floating dtype as lhs.
      group_sizes: int [E], rows per group, Σ ≤ m; rows past the sum give 0 (as ragged_dot).
      tiling: (tm, tk, tn) tile sizes; default per target (`DEFAULT_TILING`). Dims that are not a
        multiple of their tile are padded; on TPU a tile is shrunk to the largest multiple of 128
        that divides its dim (or the whole dim) to avoid padding the weights.
      expected_rows: the rows in groups the declared cost counts (module docstring); default m.
      interpret: run in the Pallas interpreter; None means "when the default backend is CPU".

    Returns:
      [m, n] in lhs's dtype, accumulated in float32.

    Raises:
      ValueError: shapes, dtypes or tiles that do not fit together.
    """
    plan = _make_plan(lhs, rhs, group_sizes, tiling, expected_rows, interpret)
    return _grouped_matmul(lhs, rhs, group_sizes.astype(jnp.int32), plan)


def _make_plan(lhs, rhs, group_sizes, tiling, expected_rows, interpret) -> _Plan:
    if lhs.ndim != 2 or rhs.ndim != 3 or lhs.shape[1] != rhs.shape[1]:
        raise ValueError(f"lhs must be [m, k] and rhs [groups, k, n], got lhs {lhs.shape} and rhs {rhs.shape}")
    if group_sizes.shape != (rhs.shape[0],) or not jnp.issubdtype(group_sizes.dtype, jnp.integer):
        raise ValueError(f"group_sizes must be integer [{rhs.shape[0]}] (one per rhs group), got "
                         f"{group_sizes.dtype} {group_sizes.shape}")
    if lhs.dtype != rhs.dtype or not jnp.issubdtype(lhs.dtype, jnp.floating):
        raise ValueError(f"lhs and rhs must share one floating dtype, got {lhs.dtype} and {rhs.dtype}")
    if min(lhs.shape) < 1 or min(rhs.shape) < 1:
        raise ValueError(f"every dim must be positive, got lhs {lhs.shape} and rhs {rhs.shape}")
    if expected_rows is not None and not (isinstance(expected_rows, int) and 0 <= expected_rows <= lhs.shape[0]):
        raise ValueError(f"expected_rows must be an int in [0, m={lhs.shape[0]}], got {expected_rows!r}")
    target = compile_target(interpret)
    tiling = DEFAULT_TILING[target] if tiling is None else tiling
    if len(tiling) != 3 or not all(isinstance(t, int) and t > 0 for t in tiling):
        raise ValueError(f"tiling must be three positive ints (tm, tk, tn), got {tiling!r}")
    (m, k), n = lhs.shape, rhs.shape[2]
    if target == "gpu":
        tm, tk, tn = (grouped_matmul_gpu.triton_tile(size, tile) for size, tile in zip((m, k, n), tiling))
    else:
        tm = min(tiling[0], _round_up(m, ROW_ALIGN))
        if tm % 8:
            raise ValueError(f"tiling tm={tm}: Mosaic TPU needs row tiles that are multiples of 8")
        tk, tn = _mosaic_tile(k, tiling[1]), _mosaic_tile(n, tiling[2])
    return _Plan(target, rhs.shape[0], m if expected_rows is None else expected_rows, tm, tk, tn, m, k, n)


def _mosaic_tile(size: int, preferred: int) -> int:
    """The whole dim if it fits the preferred tile, else the largest multiple of 128 up to it that
    divides the dim, else the preferred tile rounded to 128 lanes (the dim is then padded)."""
    if size <= preferred:
        return size
    widest = max(MOSAIC_LANES, preferred - preferred % MOSAIC_LANES)
    dividing = [t for t in range(widest, 0, -MOSAIC_LANES) if size % t == 0]
    return dividing[0] if dividing else widest


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def visits(group_sizes, num_rows: int, tile_m: int, *, empty_groups: bool) -> Visits:
    """The visit list (module docstring) of groups of `group_sizes` rows over `num_rows` rows (a
    multiple of tile_m) in tiles of tile_m rows, V = tiles + groups − 1 long; `empty_groups` gives
    each empty group one visit (tgmm: to write its zero gradient)."""
    num_groups = group_sizes.shape[0]
    num_tiles = num_rows // tile_m
    ends = jnp.minimum(jnp.cumsum(group_sizes), num_rows)
    starts = jnp.concatenate([jnp.zeros((1,), jnp.int32), ends[:-1]])
    first_tile = jnp.minimum(starts // tile_m, num_tiles - 1)
    spanned = (ends - 1) // tile_m - first_tile + 1
    count = jnp.where(ends > starts, spanned, 1 if empty_groups else 0)
    visit_end = jnp.cumsum(count)
    used = visit_end[-1]
    position = jnp.arange(num_tiles + num_groups - 1, dtype=jnp.int32)
    index = jnp.clip(position, 0, jnp.maximum(used - 1, 0))  # the tail repeats the last visit
    group = jnp.minimum(jnp.searchsorted(visit_end, index, side="right"), num_groups - 1).astype(jnp.int32)
    tile = jnp.clip(first_tile[group] + index - (visit_end[group] - count[group]), 0, num_tiles - 1)
    in_use = position < used
    return Visits(group=group, tile=tile.astype(jnp.int32), row_start=jnp.where(in_use, starts[group], 0),
                  row_end=jnp.where(in_use, ends[group], 0), count=used)


def _grid_visits(schedule: Visits, plan: _Plan):
    """The grid's visit axis: dynamic (only the visits in use) under Mosaic, the static V interpreted."""
    return schedule.tile.shape[0] if plan.interpret else schedule.count


def _pad(x, shape):
    return jnp.pad(x, [(0, want - have) for have, want in zip(x.shape, shape)])


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _grouped_matmul(lhs, rhs, group_sizes, plan):
    return _forward(lhs, rhs, group_sizes, plan)[0]


def _forward(lhs, rhs, group_sizes, plan):
    out = gmm(_pad(lhs, (plan.m_padded, plan.k_padded)),
              _pad(rhs, (plan.num_groups, plan.k_padded, plan.n_padded)), group_sizes, plan, transpose_rhs=False)
    return out[:plan.m, :plan.n], (lhs, rhs, group_sizes)


def _backward(plan, residuals, d_out):
    lhs, rhs, group_sizes = residuals
    d_out = _pad(d_out.astype(lhs.dtype), (plan.m_padded, plan.n_padded))
    rhs_padded = _pad(rhs, (plan.num_groups, plan.k_padded, plan.n_padded))
    transposed = dataclasses.replace(plan, k=plan.n, n=plan.k, tk=plan.tn, tn=plan.tk)
    d_lhs = gmm(d_out, rhs_padded, group_sizes, transposed, transpose_rhs=True)[:plan.m, :plan.k]
    d_rhs = tgmm(_pad(lhs, (plan.m_padded, plan.k_padded)), d_out, group_sizes, plan)[:, :plan.k, :plan.n]
    return d_lhs, d_rhs, None


_grouped_matmul.defvjp(_forward, _backward)


def gmm(lhs, rhs, group_sizes, plan: _Plan, *, transpose_rhs: bool):
    """out [m, n] = lhs [m, k] · rhs[g] per row group, rhs [E, k, n] (or [E, n, k] with
    `transpose_rhs`, multiplied as rhs[g]ᵀ). Dims are the plan's padded ones."""
    m, k, n, rows = plan.m_padded, plan.k_padded, plan.n_padded, plan.expected_rows
    cost = pl.CostEstimate(flops=2 * rows * k * n, transcendentals=0,
                           bytes_accessed=(rows * k + rhs.size + rows * n) * lhs.dtype.itemsize)
    if plan.target == "gpu":
        return grouped_matmul_gpu.gmm(lhs, rhs, group_sizes, (plan.tm, plan.tk, plan.tn), transpose_rhs, cost)
    tm, tk, tn = plan.tm, plan.tk, plan.tn
    num_k = k // tk
    rhs_block, rhs_index = ((None, tn, tk), lambda j, v, kk, groups, *_: (groups[v], j, kk)) if transpose_rhs \
        else ((None, tk, tn), lambda j, v, kk, groups, *_: (groups[v], kk, j))

    def kernel(groups, tiles, row_start, row_end, lhs_ref, rhs_ref, zeros_ref, out_ref, acc_ref):
        del zeros_ref  # the output's initial value (aliased): tiles no visit writes stay 0
        v, kk = pl.program_id(1), pl.program_id(2)

        @pl.when(kk == 0)
        def _():
            acc_ref[...] = jnp.zeros_like(acc_ref)

        @pl.when(row_end[v] > row_start[v])
        def _():
            contract = (((1,), (1,)), ((), ())) if transpose_rhs else (((1,), (0,)), ((), ()))
            acc_ref[...] += lax.dot_general(lhs_ref[...], rhs_ref[...], contract, preferred_element_type=jnp.float32)

        @pl.when(kk == num_k - 1)
        def _():
            rows = tiles[v] * tm + lax.broadcasted_iota(jnp.int32, (tm, tn), 0)
            mine = (rows >= row_start[v]) & (rows < row_end[v])
            first_visit_of_tile = (v == 0) | (tiles[v] != tiles[jnp.maximum(v - 1, 0)])
            kept = jnp.where(first_visit_of_tile, 0.0, out_ref[...].astype(jnp.float32))
            out_ref[...] = jnp.where(mine, acc_ref[...], kept).astype(out_ref.dtype)

    schedule = visits(group_sizes, m, tm, empty_groups=False)
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=4, grid=(n // tn, _grid_visits(schedule, plan), num_k),
        in_specs=[pl.BlockSpec((tm, tk), lambda j, v, kk, groups, tiles, *_: (tiles[v], kk)),
                  pl.BlockSpec(rhs_block, rhs_index), pl.BlockSpec(memory_space=pl.ANY)],
        out_specs=pl.BlockSpec((tm, tn), lambda j, v, kk, groups, tiles, *_: (tiles[v], j)),
        scratch_shapes=[pltpu.VMEM((tm, tn), jnp.float32)])
    return pl.pallas_call(
        kernel, grid_spec=grid_spec, out_shape=jax.ShapeDtypeStruct((m, n), lhs.dtype), interpret=plan.interpret,
        compiler_params=_mosaic_params(plan, ("parallel", "arbitrary", "arbitrary")), cost_estimate=cost,
        input_output_aliases={6: 0}, name="grouped_matmul")(*schedule[:4], lhs, rhs, jnp.zeros((m, n), lhs.dtype))


def tgmm(lhs, d_out, group_sizes, plan: _Plan):
    """d_rhs [E, k, n]: d_rhs[g] = Σ over group g's rows r of lhs[r]ᵀ · d_out[r], lhs [m, k] and
    d_out [m, n]; zero for an empty group. Dims are the plan's padded ones."""
    m, k, n, rows = plan.m_padded, plan.k_padded, plan.n_padded, plan.expected_rows
    cost = pl.CostEstimate(flops=2 * rows * k * n, transcendentals=0,
                           bytes_accessed=(rows * k + rows * n + plan.num_groups * k * n) * lhs.dtype.itemsize)
    if plan.target == "gpu":
        return grouped_matmul_gpu.tgmm(lhs, d_out, group_sizes, (plan.tm, plan.tk, plan.tn), cost)
    tm, tk, tn = plan.tm, plan.tk, plan.tn

    def kernel(groups, tiles, row_start, row_end, lhs_ref, d_out_ref, out_ref, acc_ref):
        v = pl.program_id(2)

        @pl.when((v == 0) | (groups[v] != groups[jnp.maximum(v - 1, 0)]))
        def _():
            acc_ref[...] = jnp.zeros_like(acc_ref)

        @pl.when(row_end[v] > row_start[v])
        def _():
            rows = tiles[v] * tm + lax.broadcasted_iota(jnp.int32, (tm, tk), 0)
            mine = (rows >= row_start[v]) & (rows < row_end[v])
            lhs_rows = jnp.where(mine, lhs_ref[...], jnp.zeros_like(lhs_ref))
            acc_ref[...] += lax.dot_general(lhs_rows, d_out_ref[...], (((0,), (0,)), ((), ())),
                                            preferred_element_type=jnp.float32)

        out_ref[...] = acc_ref[...].astype(out_ref.dtype)

    schedule = visits(group_sizes, m, tm, empty_groups=True)
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=4, grid=(k // tk, n // tn, _grid_visits(schedule, plan)),
        in_specs=[pl.BlockSpec((tm, tk), lambda i, j, v, groups, tiles, *_: (tiles[v], i)),
                  pl.BlockSpec((tm, tn), lambda i, j, v, groups, tiles, *_: (tiles[v], j))],
        out_specs=pl.BlockSpec((None, tk, tn), lambda i, j, v, groups, *_: (groups[v], i, j)),
        scratch_shapes=[pltpu.VMEM((tk, tn), jnp.float32)])
    return pl.pallas_call(
        kernel, grid_spec=grid_spec, out_shape=jax.ShapeDtypeStruct((plan.num_groups, k, n), lhs.dtype),
        interpret=plan.interpret, compiler_params=_mosaic_params(plan, ("parallel", "parallel", "arbitrary")),
        cost_estimate=cost, name="grouped_matmul_tgmm")(*schedule[:4], lhs, d_out)


def _mosaic_params(plan: _Plan, dimension_semantics):
    return None if plan.interpret else pltpu.CompilerParams(dimension_semantics=dimension_semantics)
