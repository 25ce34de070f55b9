"""The attention dispatch of research/models/layers.py: "pallas" equals "xla" on packed sequences and on
KV caches (decode steps, a prefill from position 0, a later chunk); "cudnn" and bad settings fail clearly.
"""
import functools
import math
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from research import config as config_lib
from research.models import layers
from research.parallel.mesh import make_mesh

FAST_COMPILE = {"xla_backend_optimization_level": 0}


def normal(seed, *shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


def test_flash_by_index_with_segments_equals_the_position_mask_on_packed_rows():
    """Packed rows: positions restart with each document, padding (segment 0) at the end.

    Every real token gets the same output from both paths; padding rows carry no loss and may differ.
    """
    q, k, v = normal(0, 2, 24, 4, 16), normal(1, 2, 24, 2, 16), normal(2, 2, 24, 2, 16)
    segments = jnp.array([[1] * 7 + [2] * 12 + [0] * 5, [1] * 3 + [2] * 3 + [3] * 18])
    positions = jnp.array([list(range(7)) + list(range(12)) + [0] * 5, [0, 1, 2] * 2 + list(range(18))])

    def both(q, k, v):
        return tuple(layers.attention(q, k, v, positions, positions, segments, segments, impl=impl)
                     for impl in ("xla", "pallas"))

    xla, pallas = jax.jit(both, compiler_options=FAST_COMPILE)(q, k, v)
    real = np.asarray(segments != 0)
    np.testing.assert_allclose(np.asarray(pallas)[real], np.asarray(xla)[real], atol=2e-6)


@pytest.mark.parametrize("num_queries, starts, cache_len", [
    (1, (0, 130, 255), 256),  # decode steps, two splits of the decode kernel, ragged rows
    (3, (4, 9, 0), 40),       # a few queries (speculative-style), cache shorter than one split
    (20, (0, 0, 0), 48),      # a prefill from position 0: flash over the first 20 entries
    (20, (8, 0, 3), 48),      # a later chunk of 20 (row 1 from 0): the dense path for all rows
])
def test_pallas_cached_attention_equals_xla(num_queries, starts, cache_len):
    q = normal(0, 3, num_queries, 4, 16)
    k_cache, v_cache = normal(1, 3, cache_len, 2, 16), normal(2, 3, cache_len, 2, 16)
    positions = jnp.array(starts)[:, None] + jnp.arange(num_queries)[None, :]

    def both(q, k_cache, v_cache):
        return tuple(layers.cached_attention(q, k_cache, v_cache, positions, impl=impl) for impl in ("xla", "pallas"))

    xla, pallas = jax.jit(both, compiler_options=FAST_COMPILE)(q, k_cache, v_cache)
    np.testing.assert_allclose(pallas, xla, atol=2e-6)


def test_pallas_prefill_from_position_zero_reads_only_the_new_entries():
    """NaN in the cache past the prefill: the flash path never reads it (the dense path would give NaN)."""
    q, k_cache, v_cache = normal(0, 2, 20, 4, 16), normal(1, 2, 48, 2, 16), normal(2, 2, 48, 2, 16)
    positions = jnp.broadcast_to(jnp.arange(20), (2, 20))
    stale = v_cache.at[:, 20:].set(jnp.nan)
    pallas = jax.jit(lambda v: layers.cached_attention(q, k_cache, v, positions, impl="pallas"),
                     compiler_options=FAST_COMPILE)(stale)
    np.testing.assert_allclose(pallas, layers.cached_attention(q, k_cache, v_cache, positions), atol=2e-6)


def test_pallas_cache_length_is_rounded_up_to_whole_decode_splits():
    assert layers.kv_cache_length(100, "pallas") == 100
    assert layers.kv_cache_length(129, "pallas") == 256
    assert layers.kv_cache_length(129, "xla") == 129
    q, cache = jnp.zeros((1, 1, 2, 16)), jnp.zeros((1, 200, 2, 16))
    with pytest.raises(ValueError, match="length 200 must be a multiple of 128"):
        layers.cached_attention(q, cache, cache, jnp.zeros((1, 1), jnp.int32), impl="pallas")


def test_cudnn_off_a_gpu_is_a_clear_error():
    x, positions = jnp.zeros((1, 4, 2, 16), jnp.bfloat16), jnp.zeros((1, 4), jnp.int32)
    with pytest.raises(ValueError, match="attention_impl='cudnn' needs a CUDA GPU.*'cpu'"):
        layers.attention(x, x, x, positions, positions, impl="cudnn")
    with pytest.raises(ValueError, match="attention_impl='cudnn' needs a CUDA GPU"):
        layers.cached_attention(x, x, x, positions, impl="cudnn")


def test_config_names_attention_impl_when_it_is_unknown():
    assert config_lib.load("configs/llama2.py:tiny", ["model.attention_impl=pallas"]).model.attention_impl == "pallas"
    with pytest.raises(ValueError, match=re.escape(f"model.attention_impl: 'flash' is not one of {layers.ATTENTION_IMPLS}")):
        config_lib.load("configs/llama2.py:tiny", ["model.attention_impl=flash"])


def mesh_of(**axes):
    sizes = {"data": 1, "fsdp": 1, "tensor": 1, "expert": 1, "context": 1, **axes}
    return make_mesh(ml_collections.ConfigDict(sizes), jax.devices()[:math.prod(sizes.values())])


@pytest.mark.parametrize("axes", [{"data": 2, "tensor": 2}, {"fsdp": 2, "expert": 2, "tensor": 2}])
def test_pallas_on_a_mesh_runs_per_device_and_equals_xla(axes):
    """Under a sharded jit the kernels run inside shard_map on each device's rows and heads (GSPMD cannot
    partition a Pallas kernel), for training attention, a decode step and a prefill."""
    mesh = mesh_of(**axes)
    q, k, v = normal(0, 4, 24, 4, 16), normal(1, 4, 24, 2, 16), normal(2, 4, 24, 2, 16)
    segments = jnp.array([[1] * 10 + [2] * 14] * 4)
    positions = jnp.broadcast_to(jnp.arange(24), (4, 24))
    decode_positions = jnp.array([[5], [23], [0], [17]])

    def run(impl, mesh):
        return (layers.attention(q, k, v, positions, positions, segments, segments, impl=impl, mesh=mesh),
                layers.cached_attention(q[:, :1], k, v, decode_positions, impl=impl, mesh=mesh),
                layers.cached_attention(q[:, :20], k, v, positions[:, :20], impl=impl, mesh=mesh))

    sharded = jax.jit(functools.partial(run, "pallas", mesh), compiler_options=FAST_COMPILE)
    assert str(sharded.trace().jaxpr).count("shard_map") == 3
    for got, want in zip(sharded(), run("xla", None)):
        np.testing.assert_allclose(got, want, atol=2e-6)
