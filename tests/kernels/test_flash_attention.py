"""Flash attention (interpret mode on CPU) against the dense jnp reference: outputs and dq, dk, dv.

Tolerances, as max |kernel − reference| ≤ tol · (1 + max |reference|) per tensor:
  float32:  tol = 5e-6 for the output and the gradients (only the summation order differs);
  bfloat16: tol = 1e-2 for the output, 1.5e-2 for the gradients (the kernel rounds P and dS to
            bfloat16 before its matmuls and its outputs to bfloat16; the reference is float32 inside).
"""
import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import flash_attention as flash_attention_module
from pallas_kernels.attention_reference import attention_reference
from pallas_kernels.flash_attention import flash_attention

# Interpret mode makes small programs that are slow to compile and quick to run: skip LLVM's optimisations.
FAST_COMPILE = {"xla_backend_optimization_level": 0}
TOLERANCES = {  # dtype -> (output tol, gradient tol)
    jnp.float32: (5e-6, 5e-6),
    jnp.bfloat16: (1e-2, 1.5e-2),
}


class Case(NamedTuple):
    batch: int
    seq: int
    heads: int
    kv_heads: int
    head_dim: int
    causal: bool
    segments: bool
    dtype: type
    block_q: int
    block_k: int
    sm_scale: float | None = None


F32, BF16 = jnp.float32, jnp.bfloat16
# One row per (heads, kv_heads) pair with heads in 1..8 and kv_heads dividing heads (20 pairs);
# the other axes rotate through batch 1-3, lengths 1..255 (mostly not multiples of the blocks),
# head_dim 32/64/128, causal, segments, both dtypes, and blocks of 16/32 so several blocks are walked.
# Head dims that are not multiples of 128 run in the [b, heads, s, d] layout, the others in [b, s, heads·d].
SWEEP = [
    Case(1, 1, 1, 1, 32, True, False, F32, 16, 16),
    Case(2, 5, 2, 1, 32, True, True, F32, 128, 128),
    Case(1, 16, 2, 2, 64, False, True, BF16, 16, 16),
    Case(3, 17, 3, 1, 32, True, True, F32, 16, 16),
    Case(2, 33, 3, 3, 32, False, False, BF16, 16, 32),
    Case(1, 64, 4, 1, 64, True, False, F32, 32, 16),
    Case(2, 50, 4, 2, 32, False, True, F32, 32, 32, 0.3),
    Case(1, 100, 4, 4, 128, True, True, BF16, 32, 32),
    Case(1, 77, 5, 1, 32, True, False, BF16, 16, 32),
    Case(2, 40, 5, 5, 64, False, False, F32, 16, 16),
    Case(1, 127, 6, 1, 32, False, True, F32, 32, 16),
    Case(3, 24, 6, 2, 32, True, True, BF16, 16, 16),
    Case(1, 96, 6, 3, 64, False, False, F32, 32, 32),
    Case(2, 60, 6, 6, 32, True, False, F32, 16, 16),
    Case(1, 45, 7, 1, 32, False, False, BF16, 16, 16),
    Case(1, 70, 7, 7, 32, True, True, F32, 32, 16),
    Case(2, 31, 8, 1, 64, True, True, F32, 16, 16),
    Case(1, 128, 8, 2, 32, False, True, BF16, 32, 32, 0.1),
    Case(1, 81, 8, 4, 128, True, False, F32, 16, 32),
    Case(2, 255, 8, 8, 32, False, False, F32, 32, 32),
]
# The head dims of common models beyond the sweep's: 96 and 256 (Gemma), forward and gradients.
HEAD_DIMS = [
    Case(1, 40, 4, 2, 96, True, True, F32, 16, 32),
    Case(1, 50, 2, 2, 256, True, False, F32, 16, 16),
]
# Longer sequences with the default and with unequal block sizes.
LARGE = [
    Case(1, 1000, 2, 1, 128, True, True, BF16, 128, 128),
    Case(2, 1000, 4, 2, 64, False, True, F32, 64, 128),
    Case(1, 700, 4, 4, 128, True, False, F32, 128, 64),
]


def make_inputs(case, seed=0):
    """Random q, k, v, output cotangent and (optionally) segment ids, drawn with numpy (no compiles)."""
    rng = np.random.default_rng(seed)

    def normal(heads):
        return jnp.asarray(rng.standard_normal((case.batch, case.seq, heads, case.head_dim)).astype(case.dtype))

    q, k, v, d_out = normal(case.heads), normal(case.kv_heads), normal(case.kv_heads), normal(case.heads)
    segment_ids = None
    if case.segments:  # packed sequences: contiguous runs of 0..3, different in every row
        segment_ids = jnp.asarray(np.sort(rng.integers(0, 4, (case.batch, case.seq)), axis=1), jnp.int32)
    return q, k, v, d_out, segment_ids


def output_and_gradients(attention, case, q, k, v, d_out, segment_ids):
    """(out, dq, dk, dv) of `attention`, jitted as one program."""

    def run(q, k, v, d_out, segment_ids):
        out, vjp = jax.vjp(
            lambda q, k, v: attention(q, k, v, causal=case.causal, segment_ids=segment_ids,
                                      sm_scale=case.sm_scale), q, k, v)
        return (out, *vjp(d_out))

    return jax.jit(run, compiler_options=FAST_COMPILE)(q, k, v, d_out, segment_ids)


def flash_with_blocks(case):
    def attention(q, k, v, **kwargs):
        return flash_attention(q, k, v, block_q=case.block_q, block_k=case.block_k, **kwargs)
    return attention


def assert_close(name, got, want, tol):
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert np.isfinite(got).all(), f"{name} has non-finite entries"
    error = np.max(np.abs(got - want))
    bound = tol + tol * np.max(np.abs(want))
    assert error <= bound, f"{name}: max error {error:.3g} > {bound:.3g}"


@pytest.mark.parametrize("case", SWEEP + HEAD_DIMS + LARGE, ids=str)
def test_matches_reference_forward_and_gradients(case):
    inputs = make_inputs(case)
    got = output_and_gradients(flash_with_blocks(case), case, *inputs)
    want = output_and_gradients(attention_reference, case, *inputs)
    out_tol, grad_tol = TOLERANCES[case.dtype]
    assert got[0].dtype == case.dtype and got[0].shape == inputs[0].shape
    for name, g, w, tol in zip(("out", "dq", "dk", "dv"), got, want, (out_tol, grad_tol, grad_tol, grad_tol)):
        assert g.dtype == case.dtype and g.shape == w.shape
        assert_close(name, g, w, tol)


def test_causal_never_computes_blocks_above_the_diagonal():
    """NaN in V and dO where the causal mask hides them: skipped blocks never see them, computed ones would.

    Values after key 16 are NaN: outputs and dq of queries 0..15 (the first query block) stay exact.
    Cotangents of queries 0..15 are NaN: dk/dv of keys 16.. (blocks that query block 0 cannot see) stay exact.
    """
    case = Case(1, 64, 2, 1, 32, True, False, F32, 16, 16)
    q, k, v, d_out, _ = make_inputs(case)
    future_v = v.at[:, 16:].set(jnp.nan)
    got_out, got_dq, _, _ = output_and_gradients(flash_with_blocks(case), case, q, k, future_v, d_out, None)
    want_out, want_dq, _, _ = output_and_gradients(attention_reference, case, q, k, v, d_out, None)
    assert_close("out of the first query block", got_out[:, :16], want_out[:, :16], TOLERANCES[F32][0])
    assert_close("dq of the first query block", got_dq[:, :16], want_dq[:, :16], TOLERANCES[F32][1])

    _, _, got_dk, got_dv = output_and_gradients(
        flash_with_blocks(case), case, q, k, v, d_out.at[:, :16].set(jnp.nan), None)
    _, _, want_dk, want_dv = output_and_gradients(
        attention_reference, case, q, k, v, d_out.at[:, :16].set(0.0), None)
    assert_close("dk after the first key block", got_dk[:, 16:], want_dk[:, 16:], TOLERANCES[F32][1])
    assert_close("dv after the first key block", got_dv[:, 16:], want_dv[:, 16:], TOLERANCES[F32][1])


def test_segments_keep_packed_sequences_apart():
    """Two sequences packed in one row give exactly what each gives alone."""
    case = Case(1, 48, 2, 2, 32, True, True, F32, 16, 16)
    q, k, v, _, _ = make_inputs(case)
    attention = functools.partial(flash_attention, causal=True, block_q=16, block_k=16)

    def packed_and_alone(q, k, v):
        packed = attention(q, k, v, segment_ids=jnp.array([[0] * 20 + [1] * 28]))
        alone = [attention(q[:, part], k[:, part], v[:, part]) for part in (slice(0, 20), slice(20, 48))]
        return packed, jnp.concatenate(alone, axis=1)

    packed, alone = jax.jit(packed_and_alone, compiler_options=FAST_COMPILE)(q, k, v)
    np.testing.assert_allclose(packed, alone, atol=2e-6, rtol=2e-6)


def shapes(batch=2, seq=32, heads=4, kv_heads=2, head_dim=32, dtype=F32):
    q = jnp.zeros((batch, seq, heads, head_dim), dtype)
    kv = jnp.zeros((batch, seq, kv_heads, head_dim), dtype)
    return q, kv


@pytest.mark.parametrize("make_call, message", [
    (lambda q, kv: (q[0], kv, kv, {}), "q must be"),
    (lambda q, kv: (q, kv, kv[:, :, :1], {}), "k and v must have the same shape"),
    (lambda q, kv: (q, kv[:1], kv[:1], {}), "must agree in batch, seq and head_dim"),
    (lambda q, kv: (q, kv[:, :16], kv[:, :16], {}), "must agree in batch, seq and head_dim"),
    (lambda q, kv: (q, kv[..., :16], kv[..., :16], {}), "must agree in batch, seq and head_dim"),
    (lambda q, kv: (q[:, :, :3], kv, kv, {}), r"heads \(3\) must be divisible by kv_heads \(2\)"),
    (lambda q, kv: (q.astype(BF16), kv, kv, {}), "share one floating dtype"),
    (lambda q, kv: (q, kv, kv, {"segment_ids": jnp.zeros((2, 31), jnp.int32)}), "segment_ids must be"),
    (lambda q, kv: (q, kv, kv, {"segment_ids": jnp.zeros((2, 32), jnp.float32)}), "segment_ids must be"),
    (lambda q, kv: (q, kv, kv, {"block_q": 0}), "block_q must be a positive int"),
    (lambda q, kv: (q, kv, kv, {"block_k": 16.0}), "block_k must be a positive int"),
    (lambda q, kv: (q, kv, kv, {"sm_scale": -0.1}), "sm_scale must be positive"),
])
def test_bad_input_raises_value_error(make_call, message):
    q, k, v, kwargs = make_call(*shapes())
    with pytest.raises(ValueError, match=message):
        flash_attention(q, k, v, **kwargs)


@pytest.mark.parametrize("backend, kwargs, head_dim, message", [
    ("cpu", {"block_q": 12}, 128, "block_q=12: Mosaic TPU"),
    ("tpu", {"block_k": 20}, 128, "block_k=20: Mosaic TPU"),
    ("gpu", {"block_k": 24}, 64, "block_k=24: Triton"),
    ("gpu", {}, 48, "head_dim=48: Triton"),
])
def test_blocks_the_compile_target_cannot_tile_raise_value_error(monkeypatch, backend, kwargs, head_dim, message):
    """Compiled (not interpreted) calls check the tiling rules of the default backend's compiler."""
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    q, kv = shapes(seq=256, head_dim=head_dim)
    with pytest.raises(ValueError, match=message):
        flash_attention(q, kv, kv, interpret=False, **kwargs)


@pytest.mark.parametrize("case", [
    Case(2, 100, 4, 2, 32, True, False, F32, 16, 32),
    Case(1, 90, 2, 1, 32, True, True, F32, 32, 16),
    Case(2, 64, 2, 2, 32, False, False, F32, 16, 16),
], ids=str)
def test_every_launch_order_gives_the_same_results(monkeypatch, case):
    """All three kernels launched block-first and longest-first (the GPU's options), run by the interpreter."""
    make_tiling = flash_attention_module._make_tiling
    every_kernel = frozenset({"forward", "dq", "dkdv"})
    monkeypatch.setattr(flash_attention_module, "_make_tiling", lambda *args: dataclasses.replace(
        make_tiling(*args), blocks_first=every_kernel, longest_first=every_kernel - {"dkdv"}))
    inputs = make_inputs(case)
    got = output_and_gradients(flash_with_blocks(case), case, *inputs)
    want = output_and_gradients(attention_reference, case, *inputs)
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        assert_close(name, g, w, TOLERANCES[F32][0])


@pytest.mark.parametrize("causal, segments, head_dim", [(True, False, 128), (False, True, 64)])
def test_kernels_lower_through_triton_for_a_gpu(monkeypatch, causal, segments, head_dim):
    """The forward and both backward kernels lower to Triton (checked on this CPU host, nothing runs),
    in the [b, s, heads·d] layout at every head_dim."""
    monkeypatch.setattr(flash_attention_module, "compile_target", lambda interpret: "gpu")
    q = jax.ShapeDtypeStruct((2, 512, 4, head_dim), BF16)
    kv = jax.ShapeDtypeStruct((2, 512, 2, head_dim), BF16)
    ids = jax.ShapeDtypeStruct((2, 512), jnp.int32) if segments else None

    def loss(q, k, v, segment_ids):
        return flash_attention(q, k, v, causal=causal, segment_ids=segment_ids).astype(F32).sum()

    lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(q, kv, kv, ids).lower(lowering_platforms=("cuda",))
    text = lowered.as_text()
    for kernel in ("flash_attention_forward", "flash_attention_dq", "flash_attention_dkdv"):
        assert kernel in text
    assert text.count("__gpu$xla.gpu.triton") >= 3
    assert f"tensor<2x512x{4 * head_dim}xbf16>" in text
