"""The ring collectives equal XLA's: lax.psum_scatter, lax.all_gather and lax.psum."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from research.parallel.collectives import (map_fused_by_dtype, ring_all_gather, ring_all_reduce,
                                           ring_reduce_scatter)


def _mesh(sizes, names):
    return jax.make_mesh(sizes, names, axis_types=(AxisType.Auto,) * len(sizes),
                         devices=jax.devices()[:math.prod(sizes)])


def _per_device(fn, mesh, tree):
    """Runs `fn` on device i with the i-th row of every leaf (leaves are [devices, ...]);
    returns its outputs stacked the same way."""
    spec = PartitionSpec(mesh.axis_names)
    tree = jax.device_put(tree, NamedSharding(mesh, spec))
    program = jax.shard_map(
        lambda t: jax.tree.map(lambda y: y[None], fn(jax.tree.map(lambda y: y[0], t))),
        mesh=mesh, in_specs=spec, out_specs=spec)
    return jax.jit(program)(tree)


def _awkward_tree(num_devices, seed=0):
    """Leaves whose sizes are not multiples of the axis size: floats, ints, a scalar."""
    rng = np.random.default_rng(seed)
    return {"kernel": rng.normal(size=(num_devices, 3, 5)).astype(np.float32),
            "bias": rng.normal(size=(num_devices, 7)).astype(np.float32),
            "scale": rng.normal(size=(num_devices,)).astype(np.float32),
            "counts": rng.integers(-2**20, 2**20, size=(num_devices, 13)).astype(np.int32)}


def _assert_equal(actual, expected):
    """Bitwise for integers, summation-order tolerance for floats."""
    for got, want in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        assert got.shape == want.shape and got.dtype == want.dtype
        if jnp.issubdtype(got.dtype, jnp.integer):
            np.testing.assert_array_equal(got, want)
        else:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("p", range(1, 9))
def test_all_reduce_equals_psum_for_any_pytree(p, bidirectional):
    both = _per_device(lambda t: (ring_all_reduce(t, "x", bidirectional=bidirectional),
                                  lax.psum(t, "x")), _mesh((p,), ("x",)), _awkward_tree(p))
    _assert_equal(*both)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("p", [1, 2, 3, 8])
def test_reduce_scatter_and_all_gather_equal_lax(p, bidirectional):
    rng = np.random.default_rng(1)
    tree = {"tiled": rng.normal(size=(p, 2, 3 * p, 5)).astype(np.float32),
            "untiled": rng.integers(-99, 99, size=(p, p, 7)).astype(np.int32),
            "block": rng.normal(size=(p, 3, 5)).astype(np.float32)}

    def both(t):
        ring = dict(
            tiled=ring_reduce_scatter(t["tiled"], "x", bidirectional=bidirectional,
                                      scatter_dimension=1, tiled=True),
            untiled=ring_reduce_scatter(t["untiled"], "x", bidirectional=bidirectional),
            gather_tiled=ring_all_gather(t["block"], "x", bidirectional=bidirectional, axis=1,
                                         tiled=True),
            gather=ring_all_gather(t["untiled"], "x", bidirectional=bidirectional, axis=1))
        xla = dict(
            tiled=lax.psum_scatter(t["tiled"], "x", scatter_dimension=1, tiled=True),
            untiled=lax.psum_scatter(t["untiled"], "x"),
            gather_tiled=lax.all_gather(t["block"], "x", axis=1, tiled=True),
            gather=lax.all_gather(t["untiled"], "x", axis=1))
        return ring, xla

    _assert_equal(*_per_device(both, _mesh((p,), ("x",)), tree))


def test_map_fused_by_dtype_makes_one_call_per_dtype():
    calls = []

    def negate(vector):
        calls.append(vector.dtype)
        return -vector

    tree = {"a": jnp.ones((2, 3)), "b": jnp.arange(5), "c": jnp.full((4,), 2.0)}
    out = map_fused_by_dtype(negate, tree)
    assert sorted(map(str, calls)) == ["float32", "int32"]
    _assert_equal(out, jax.tree.map(lambda y: -y, tree))


def test_bad_input_fails_at_trace_time():
    mesh = _mesh((2,), ("x",))
    with pytest.raises(ValueError, match=r"'data' is not an axis .* \('x',\)"):
        _per_device(lambda y: ring_all_reduce(y, "data"), mesh, np.ones((2, 4), np.float32))
    with pytest.raises(TypeError, match="bool"):
        _per_device(lambda y: ring_all_reduce(y, "x"), mesh, np.ones((2, 4), bool))
    with pytest.raises(ValueError, match="multiple of 2"):
        _per_device(lambda y: ring_reduce_scatter(y, "x", tiled=True), mesh,
                    np.ones((2, 3), np.float32))
