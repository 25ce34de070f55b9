"""pallas_kernels/grouped_matmul.py in interpret mode against `jax.lax.ragged_dot`, forward and backward.

Groups are uneven: empty experts, one expert taking every row, sizes that are no multiple of the row tile,
and rows past Σ group_sizes (which must come out 0). Tolerances, max |got − want| ≤ tol · (1 + max |want|):
float32 1e-5 (only the summation order differs: the reference runs at HIGHEST precision); bfloat16 1e-2
(inputs are bfloat16, both sides accumulate in float32 and round the result to bfloat16 once, a relative
error of at most 2⁻⁸ per element).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl

from pallas_kernels import grouped_matmul_gpu
from pallas_kernels.grouped_matmul import grouped_matmul, visits

TOLERANCES = {jnp.float32: 1e-5, jnp.bfloat16: 1e-2}
SMALL_TILES = (16, 128, 128)  # row tiles of 16; k and n (≤ 128 here) in one tile each


def operands(group_sizes, m, k, n, dtype, seed=0):
    keys = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(keys[0], (m, k)).astype(dtype),
            jax.random.normal(keys[1], (len(group_sizes), k, n)).astype(dtype),
            jnp.asarray(group_sizes, jnp.int32),
            jax.random.normal(keys[2], (m, n)).astype(dtype))


def output_and_gradients(matmul, lhs, rhs, group_sizes, d_out):
    """(out, d_lhs, d_rhs) for the cotangent d_out, compiled once."""
    def run(lhs, rhs):
        out, vjp = jax.vjp(lambda lhs, rhs: matmul(lhs, rhs, group_sizes), lhs, rhs)
        return (out, *vjp(d_out))
    return jax.jit(run)(lhs, rhs)


def reference(lhs, rhs, group_sizes):
    return jax.lax.ragged_dot(lhs, rhs, group_sizes, precision=jax.lax.Precision.HIGHEST,
                              preferred_element_type=jnp.float32).astype(lhs.dtype)


def assert_close(names, got, want, tol):
    for name, g, w in zip(names, got, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype, name
        g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
        error, bound = np.max(np.abs(g - w)), tol * (1 + np.max(np.abs(w)))
        assert error <= bound, f"{name}: max error {error:.3g} > {bound:.3g}"


@pytest.mark.parametrize("group_sizes, m", [
    ([5, 0, 20, 7], 32),  # uneven, an empty expert, boundaries inside row tiles
    ([0, 40, 0, 0], 40),  # one expert takes every row; 40 is no multiple of the 16-row tile
    ([3, 0, 0, 10], 40),  # 27 rows past the last group give 0; two empty experts
])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_equals_ragged_dot_forward_and_backward(group_sizes, m, dtype):
    lhs, rhs, sizes, d_out = operands(group_sizes, m, 24, 40, dtype)
    got = output_and_gradients(lambda *a: grouped_matmul(*a, tiling=SMALL_TILES, interpret=True), lhs, rhs, sizes,
                               d_out)
    want = output_and_gradients(reference, lhs, rhs, sizes, d_out)
    assert_close(("out", "d_lhs", "d_rhs"), got, want, TOLERANCES[dtype])
    total = sum(group_sizes)
    assert not np.any(np.asarray(got[0][total:])) and not np.any(np.asarray(got[2][np.array(group_sizes) == 0]))


def test_dims_that_are_no_multiple_of_their_tiles_are_padded():
    """k = 24 and n = 40 in tiles of 16: several k tiles accumulate, the padded columns are cut off."""
    lhs, rhs, sizes, d_out = operands([9, 14, 0, 9], 32, 24, 40, jnp.float32)
    got = output_and_gradients(lambda *a: grouped_matmul(*a, tiling=(16, 16, 16), interpret=True), lhs, rhs, sizes,
                               d_out)
    assert_close(("out", "d_lhs", "d_rhs"), got, output_and_gradients(reference, lhs, rhs, sizes, d_out), 1e-5)


def test_visits_skip_empty_groups_and_repeat_the_last_block_in_the_tail():
    """Groups [0, 5), [5, 25) (group 1 is empty), [25, 32) over 48 rows in tiles of 16: group 2 straddles
    tiles 0 and 1, tile 2 (past the groups) is not visited. 4 visits in use of V = 3 tiles + 4 groups − 1;
    the tail repeats the last block indices with an empty row range (nothing fetched, nothing computed)."""
    got = visits(jnp.array([5, 0, 20, 7], jnp.int32), 48, 16, empty_groups=False)
    assert int(got.count) == 4
    np.testing.assert_array_equal(got.group, [0, 2, 2, 3, 3, 3])
    np.testing.assert_array_equal(got.tile, [0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(got.row_start, [0, 5, 5, 25, 0, 0])
    np.testing.assert_array_equal(got.row_end, [5, 25, 25, 32, 0, 0])


def test_the_transposed_visits_give_each_empty_group_one_visit():
    """tgmm writes every group's gradient, so the empty group 1 is visited once (with no rows)."""
    got = visits(jnp.array([5, 0, 20, 7], jnp.int32), 48, 16, empty_groups=True)
    assert int(got.count) == 5
    np.testing.assert_array_equal(got.group, [0, 1, 2, 2, 3, 3])
    np.testing.assert_array_equal(got.tile, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(got.row_end - got.row_start, [5, 0, 20, 20, 7, 0])


def declared_flops(fn, *args) -> list[int]:
    """The FLOPs each pallas_call in fn's jaxpr declares in its cost estimate."""
    eqns = jax.make_jaxpr(fn)(*args).jaxpr.eqns
    return [eqn.params["cost_estimate"].flops for eqn in eqns if eqn.primitive.name == "pallas_call"]


def test_each_kernel_declares_two_flops_per_multiply_add_of_the_expected_rows():
    """64 rows (of which 16 expected in groups), k 32, n 48: gmm, gmm with rhs transposed and tgmm each
    declare 2·r·k·n, r = expected_rows or all 64."""
    lhs, rhs, sizes, d_out = operands([4, 4, 4, 4], 64, 32, 48, jnp.float32)

    def forward_and_backward(lhs, rhs, expected_rows):
        out, vjp = jax.vjp(lambda x, w: grouped_matmul(x, w, sizes, tiling=SMALL_TILES, expected_rows=expected_rows,
                                                       interpret=True), lhs, rhs)
        return vjp(d_out)

    assert declared_flops(lambda x, w: forward_and_backward(x, w, None), lhs, rhs) == [2 * 64 * 32 * 48] * 3
    assert declared_flops(lambda x, w: forward_and_backward(x, w, 16), lhs, rhs) == [2 * 16 * 32 * 48] * 3
    with pytest.raises(ValueError, match=r"expected_rows must be an int in \[0, m=64\]"):
        grouped_matmul(lhs, rhs, sizes, expected_rows=65)


@pytest.mark.parametrize("transpose_rhs", [False, True])
def test_triton_kernels_equal_ragged_dot_in_interpret_mode(transpose_rhs):
    """The GPU kernels' group loops (pallas_kernels/grouped_matmul_gpu.py), run by the interpreter."""
    lhs, rhs, sizes, d_out = operands([5, 0, 20, 7], 48, 32, 32, jnp.float32)
    cost = pl.CostEstimate(flops=0, transcendentals=0, bytes_accessed=0)
    weights = jnp.swapaxes(rhs, 1, 2) if transpose_rhs else rhs
    out = jax.jit(lambda x, w: grouped_matmul_gpu.gmm(x, w, sizes, (16, 16, 16), transpose_rhs, cost,
                                                      interpret=True))(lhs, weights)
    d_rhs = jax.jit(lambda x, d: grouped_matmul_gpu.tgmm(x, d, sizes, (16, 16, 16), cost, interpret=True))(lhs, d_out)
    _, d_out_matrices, d_rhs_want = output_and_gradients(reference, lhs, rhs, sizes, d_out)
    assert d_out_matrices.shape == lhs.shape
    assert_close(("out", "d_rhs"), (out, d_rhs), (reference(lhs, rhs, sizes), d_rhs_want), 1e-5)


@pytest.mark.parametrize("lhs_shape, rhs_shape, sizes_shape, rhs_dtype, message", [
    ((8, 4), (2, 5, 3), (2,), jnp.float32, r"lhs must be \[m, k\] and rhs \[groups, k, n\]"),
    ((8, 4), (2, 4, 3), (3,), jnp.float32, r"group_sizes must be integer \[2\]"),
    ((8, 4), (2, 4, 3), (2,), jnp.bfloat16, "lhs and rhs must share one floating dtype"),
])
def test_mismatched_operands_raise_value_error(lhs_shape, rhs_shape, sizes_shape, rhs_dtype, message):
    with pytest.raises(ValueError, match=message):
        grouped_matmul(jnp.zeros(lhs_shape), jnp.zeros(rhs_shape, rhs_dtype), jnp.zeros(sizes_shape, jnp.int32))


def test_tiles_the_target_cannot_use_raise_value_error():
    lhs, rhs, sizes = jnp.zeros((32, 8)), jnp.zeros((2, 8, 8)), jnp.array([16, 16], jnp.int32)
    with pytest.raises(ValueError, match="Mosaic TPU needs row tiles that are multiples of 8"):
        grouped_matmul(lhs, rhs, sizes, tiling=(12, 128, 128), interpret=True)
    with pytest.raises(ValueError, match="Triton tiles must be powers of two"):
        grouped_matmul_gpu.triton_tile(100, 48)
    with pytest.raises(ValueError, match="tiling must be three positive ints"):
        grouped_matmul(lhs, rhs, sizes, tiling=(16, 0, 16), interpret=True)
