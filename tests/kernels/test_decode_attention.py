"""Decode attention (interpret mode on CPU) against the dense jnp reference.

Tolerances, as max |kernel − reference| ≤ tol · (1 + max |reference|):
  float32: tol = 5e-6 (only the summation order differs);
  bfloat16: tol = 1e-2 (the kernel rounds P to bfloat16 before P·V and its output to bfloat16).
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import decode_attention as decode_attention_module
from pallas_kernels.attention_reference import decode_attention_reference
from pallas_kernels.decode_attention import decode_attention
from pallas_kernels.flash_attention import flash_attention

# Interpret mode makes small programs that are slow to compile and quick to run: skip LLVM's optimisations.
FAST_COMPILE = {"xla_backend_optimization_level": 0}
F32, BF16 = jnp.float32, jnp.bfloat16
TOLERANCES = {F32: 5e-6, BF16: 1e-2}


class Case(NamedTuple):
    batch: int
    queries: int
    heads: int
    kv_heads: int
    head_dim: int
    cache_len: int
    block_k: int
    lengths: tuple
    dtype: type


SWEEP = [
    Case(2, 1, 4, 2, 32, 64, 16, (5, 64), F32),  # one query; a short row and a full one
    Case(3, 3, 8, 2, 64, 128, 32, (0, 2, 100), F32),  # a row that sees nothing, one shorter than t
    Case(1, 4, 6, 3, 32, 48, 16, (17,), BF16),  # length just past a block boundary
    Case(2, 2, 8, 8, 128, 256, 64, (256, 129), BF16),  # multi-head, head_dim 128
    Case(1, 2, 8, 8, 96, 64, 32, (50,), BF16),  # head_dim 96: programs of 4 K/V heads (384 lanes), 2 per row
    Case(2, 1, 4, 2, 256, 64, 32, (33, 64), F32),  # head_dim 256
    Case(1, 1, 7, 1, 64, 96, 32, (64,), F32),  # multi-query, length on a block boundary
    Case(3, 1, 1, 1, 32, 40, 128, (1, 39, 40), F32),  # block clipped to the whole cache
]


def make_inputs(case, seed=0):
    """Random q and caches (numpy-drawn, no compiles) and the per-row lengths."""
    rng = np.random.default_rng(seed)

    def normal(*shape):
        return jnp.asarray(rng.standard_normal(shape).astype(case.dtype))

    q = normal(case.batch, case.queries, case.heads, case.head_dim)
    k_cache = normal(case.batch, case.cache_len, case.kv_heads, case.head_dim)
    v_cache = normal(case.batch, case.cache_len, case.kv_heads, case.head_dim)
    return q, k_cache, v_cache, jnp.array(case.lengths, jnp.int32)


def decode(q, k_cache, v_cache, lengths, block_k):
    attention = jax.jit(lambda *args: decode_attention(*args, block_k=block_k), compiler_options=FAST_COMPILE)
    return attention(q, k_cache, v_cache, lengths)


@pytest.mark.parametrize("case", SWEEP, ids=str)
def test_matches_reference(case):
    inputs = make_inputs(case)
    got = decode(*inputs, case.block_k)
    want = jax.jit(decode_attention_reference, compiler_options=FAST_COMPILE)(*inputs)
    assert got.dtype == case.dtype and got.shape == inputs[0].shape
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert np.isfinite(got).all()
    tol = TOLERANCES[case.dtype]
    assert np.max(np.abs(got - want)) <= tol * (1 + np.max(np.abs(want)))


def test_rows_that_see_no_cache_entry_are_zero():
    """Three queries at positions lengths − 3 .. lengths − 1: negative positions see nothing, position 0 one key."""
    case = Case(2, 3, 4, 2, 32, 32, 16, (0, 1), F32)
    q, k_cache, v_cache, lengths = make_inputs(case)
    out = np.asarray(decode(q, k_cache, v_cache, lengths, case.block_k))
    np.testing.assert_array_equal(out[0], 0.0)
    np.testing.assert_array_equal(out[1, :2], 0.0)
    only_key_value = np.repeat(np.asarray(v_cache[1, 0]), 2, axis=0)  # query head n reads K/V head n // 2
    np.testing.assert_allclose(out[1, 2], only_key_value, rtol=1e-6, atol=1e-6)


def test_blocks_past_the_length_are_skipped():
    """NaN in every cache block that starts at or after a row's length never reaches the output."""
    case = Case(2, 2, 4, 2, 32, 64, 16, (16, 40), F32)
    q, k_cache, v_cache, lengths = make_inputs(case)
    want = decode_attention_reference(q, k_cache, v_cache, lengths)
    unused_blocks = np.arange(case.cache_len)[None, :] >= np.array([[16], [48]])
    poison = jnp.asarray(unused_blocks)[:, :, None, None]
    got = decode(q, jnp.where(poison, jnp.nan, k_cache), jnp.where(poison, jnp.nan, v_cache), lengths, case.block_k)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_equals_the_last_rows_of_causal_flash_attention():
    """Decoding the last 2 of 40 positions from a 64-slot cache (garbage after 40) = causal attention's last rows."""
    case = Case(2, 2, 4, 1, 64, 64, 16, (40, 40), F32)
    _, k_cache, v_cache, lengths = make_inputs(case)
    q = jnp.asarray(np.random.default_rng(1).standard_normal((2, 40, 4, 64)).astype(np.float32))
    full = jax.jit(lambda q, k, v: flash_attention(q, k, v, causal=True, block_q=16, block_k=16),
                   compiler_options=FAST_COMPILE)(q, k_cache[:, :40], v_cache[:, :40])
    decoded = decode(q[:, -2:], k_cache, v_cache, lengths, case.block_k)
    np.testing.assert_allclose(decoded, full[:, -2:], rtol=1e-5, atol=1e-5)


def shapes(batch=2, queries=1, heads=4, kv_heads=2, head_dim=32, cache_len=64, dtype=F32):
    q = jnp.zeros((batch, queries, heads, head_dim), dtype)
    cache = jnp.zeros((batch, cache_len, kv_heads, head_dim), dtype)
    return q, cache, jnp.zeros((batch,), jnp.int32)


@pytest.mark.parametrize("make_call, message", [
    (lambda q, kv, n: (q[0], kv, kv, n, {}), "q must be"),
    (lambda q, kv, n: (q, kv, kv[:, :32], n, {}), "must have the same shape"),
    (lambda q, kv, n: (q, kv[:1], kv[:1], n, {}), "must agree in batch and head_dim"),
    (lambda q, kv, n: (q, kv[..., :16], kv[..., :16], n, {}), "must agree in batch and head_dim"),
    (lambda q, kv, n: (q[:, :, :3], kv, kv, n, {}), r"heads \(3\) must be divisible by kv_heads \(2\)"),
    (lambda q, kv, n: (q.astype(BF16), kv, kv, n, {}), "share one floating dtype"),
    (lambda q, kv, n: (q, kv, kv, n[:1], {}), "lengths must be integer"),
    (lambda q, kv, n: (q, kv, kv, n.astype(F32), {}), "lengths must be integer"),
    (lambda q, kv, n: (q, kv, kv, n, {"block_k": 0}), "block_k must be a positive int"),
    (lambda q, kv, n: (q, kv, kv, n, {"block_k": 24}), "block_k=24 must divide the cache length 64"),
])
def test_bad_input_raises_value_error(make_call, message):
    q, k_cache, v_cache, lengths, kwargs = make_call(*shapes())
    with pytest.raises(ValueError, match=message):
        decode_attention(q, k_cache, v_cache, lengths, **kwargs)


@pytest.mark.parametrize("backend, block_k, head_dim, message", [
    ("tpu", 4, 128, "block_k=4: Mosaic TPU"),
    ("gpu", 8, 64, "block_k=8: Triton"),
    ("gpu", 64, 48, "head_dim=48: Triton"),
])
def test_blocks_the_compile_target_cannot_tile_raise_value_error(monkeypatch, backend, block_k, head_dim, message):
    """Compiled (not interpreted) calls check the tiling rules of the default backend's compiler."""
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    q, cache, lengths = shapes(head_dim=head_dim, cache_len=256)
    with pytest.raises(ValueError, match=message):
        decode_attention(q, cache, cache, lengths, block_k=block_k, interpret=False)


def test_decode_kernel_lowers_through_triton_for_a_gpu(monkeypatch):
    """The flash-decoding kernel lowers to Triton (checked on this CPU host, nothing runs)."""
    monkeypatch.setattr(decode_attention_module, "compile_target", lambda interpret: "gpu")
    q = jax.ShapeDtypeStruct((4, 1, 8, 128), BF16)
    cache = jax.ShapeDtypeStruct((4, 1024, 2, 128), BF16)
    lengths = jax.ShapeDtypeStruct((4,), jnp.int32)
    lowered = jax.jit(decode_attention).trace(q, cache, cache, lengths).lower(lowering_platforms=("cuda",))
    assert lowered.as_text().count("__gpu$xla.gpu.triton") == 1
