"""Pallas ring kernels in TPU interpret mode on fake CPU devices, with the race detector on.

The reference is XLA's own collective (lax.psum_scatter / lax.all_gather / lax.psum) run in
the same program. The race detector prints "RACE DETECTED" for every race it finds and sets
a flag on the state of the kernel interpreted last; the tests check both.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax._src.pallas.mosaic.interpret import interpret_pallas_call as tpu_interpret
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from pallas_kernels.ring_collectives import ring_all_gather, ring_all_reduce, ring_reduce_scatter

DETECT_RACES = pltpu.InterpretParams(detect_races=True)


def _run(fn, sizes, names, inputs):
    """`fn` per device under shard_map over the first prod(sizes) devices; leaves are
    [devices, ...] with row i on device i, and so are the outputs."""
    mesh = jax.make_mesh(sizes, names, axis_types=(AxisType.Auto,) * len(sizes),
                         devices=jax.devices()[:math.prod(sizes)])
    spec = PartitionSpec(names)
    program = jax.shard_map(
        lambda t: jax.tree.map(lambda y: y[None], fn(jax.tree.map(lambda y: y[0], t))),
        mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False)
    inputs = jax.device_put(inputs, NamedSharding(mesh, spec))
    return jax.block_until_ready(jax.jit(program)(inputs))


def _assert_no_race(capfd):
    assert "RACE DETECTED" not in capfd.readouterr().out
    assert not tpu_interpret.races.races_found


@pytest.mark.parametrize("p, bidirectional", [(8, False), (8, True), (3, True), (2, False)])
def test_kernels_equal_lax_without_races(p, bidirectional, capfd):
    rng = np.random.default_rng(p)
    inputs = {"f32": rng.normal(size=(p, 5 * p, 3)).astype(np.float32),
              "i32": rng.integers(-2**20, 2**20, size=(p, 7, 11)).astype(np.int32),
              # small integers: every partial sum is exact in bfloat16, so equality is bitwise
              "bf16": rng.integers(-8, 8, size=(p, 300)).astype(jnp.bfloat16)}

    def both(t):
        kernels = dict(
            reduce_scatter=ring_reduce_scatter(t["f32"], "x", bidirectional=bidirectional,
                                               tiled=True, interpret=DETECT_RACES),
            all_gather=ring_all_gather(t["i32"], "x", bidirectional=bidirectional,
                                       interpret=DETECT_RACES),
            all_reduce=ring_all_reduce(t["bf16"], "x", bidirectional=bidirectional,
                                       interpret=DETECT_RACES))
        xla = dict(reduce_scatter=lax.psum_scatter(t["f32"], "x", tiled=True),
                   all_gather=lax.all_gather(t["i32"], "x"),
                   all_reduce=lax.psum(t["bf16"], "x"))
        return kernels, xla

    kernels, xla = _run(both, (p,), ("x",), inputs)
    np.testing.assert_allclose(kernels["reduce_scatter"], xla["reduce_scatter"],
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(kernels["all_gather"], xla["all_gather"])
    np.testing.assert_array_equal(kernels["all_reduce"], xla["all_reduce"])
    _assert_no_race(capfd)


def test_all_reduce_on_one_axis_of_a_two_axis_mesh(capfd):
    x = np.random.default_rng(0).normal(size=(8, 1000)).astype(np.float32)
    kernel, xla = _run(
        lambda y: (ring_all_reduce(y, "chips", bidirectional=True, interpret=DETECT_RACES),
                   lax.psum(y, "chips")),
        (2, 4), ("slices", "chips"), x)
    np.testing.assert_allclose(kernel, xla, rtol=1e-5, atol=1e-5)
    _assert_no_race(capfd)


def test_axis_of_size_one_returns_its_input():
    x = np.arange(10, dtype=np.float32).reshape(1, 10)
    out = _run(lambda y: (ring_all_reduce(y, "x"), ring_all_gather(y, "x", tiled=True),
                          ring_reduce_scatter(y[None], "x")), (1,), ("x",), x)
    for result in out:
        np.testing.assert_array_equal(result, x)


def test_race_detector_reports_an_unsynchronised_kernel(capfd):
    """The control: a kernel that writes a buffer while its neighbour's DMA writes it too."""
    def racy_kernel(x_ref, o_ref, send_sem, recv_sem):
        right = (lax.axis_index("x") + 1) % 2
        copy = pltpu.make_async_remote_copy(x_ref, o_ref, send_sem, recv_sem,
                                            device_id={"x": right},
                                            device_id_type=pl.DeviceIdType.MESH)
        copy.start()
        o_ref[...] = x_ref[...]
        copy.wait()

    def racy(y):
        return pl.pallas_call(racy_kernel, out_shape=jax.ShapeDtypeStruct(y.shape, y.dtype),
                              scratch_shapes=[pltpu.SemaphoreType.DMA(())] * 2,
                              interpret=DETECT_RACES)(y)

    _run(racy, (2,), ("x",), np.ones((2, 8, 128), np.float32))
    assert "RACE DETECTED" in capfd.readouterr().out
    assert tpu_interpret.races.races_found


def test_bad_input_fails_at_trace_time():
    def trace(fn, x):
        mesh = jax.make_mesh((2,), ("x",), axis_types=(AxisType.Auto,), devices=jax.devices()[:2])
        spec = PartitionSpec("x")
        program = jax.shard_map(fn, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False)
        jax.eval_shape(program, x)

    with pytest.raises(TypeError, match="int8"):
        trace(lambda y: ring_all_reduce(y, "x"), jnp.ones((2, 256), jnp.int8))
    with pytest.raises(ValueError, match="'data' is not an axis"):
        trace(lambda y: ring_all_gather(y, "data"), jnp.ones((2, 256), jnp.float32))
    with pytest.raises(ValueError, match="multiple of 2"):
        trace(lambda y: ring_reduce_scatter(y, "x", tiled=True), jnp.ones((6, 256), jnp.float32))
