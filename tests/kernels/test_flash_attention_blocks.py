"""Flash attention over a block of keys (interpret mode on CPU): the log-sum-exp output, its gradient,
key blocks of another length than the queries, and per-block gradients from the final O and L.

Reference: dense float32 scores S with the mask, out = softmax(S) v, L = log Σ_j exp(S_ij).
Tolerance (float32 only; bfloat16 is covered by test_flash_attention.py): max |kernel − reference|
≤ 5e-6 · (1 + max |reference|) per tensor.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.attention_reference import masked_attention
from pallas_kernels.flash_attention import flash_attention_backward, flash_attention_with_lse

FAST_COMPILE = {"xla_backend_optimization_level": 0}
TOL = 5e-6


def normal(rng, *shape):
    return jnp.asarray(rng.standard_normal(shape).astype(np.float32))


def visibility(q_len, kv_len, causal, q_ids, kv_ids):
    """[b, q_len, kv_len]: key j visible to query i (j ≤ i if causal, equal segment ids if given)."""
    visible = jnp.ones((q_ids.shape[0] if q_ids is not None else 1, q_len, kv_len), bool)
    if causal:
        visible &= jnp.arange(kv_len)[None, None, :] <= jnp.arange(q_len)[None, :, None]
    if q_ids is not None:
        visible &= q_ids[:, :, None] == kv_ids[:, None, :]
    return visible


def reference_with_lse(q, k, v, visible):
    """(out, lse [b, q_len, heads]) from the dense masked scores."""
    batch, q_len, heads, head_dim = q.shape
    group = heads // k.shape[2]
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, jnp.repeat(k, group, axis=2)) * head_dim ** -0.5
    scores = jnp.where(jnp.broadcast_to(visible, (batch, q_len, k.shape[1]))[:, None], scores, -jnp.inf)
    return masked_attention(q, k, v, jnp.broadcast_to(visible, (batch, q_len, k.shape[1]))), \
        jax.nn.logsumexp(scores, axis=-1).transpose(0, 2, 1)


def assert_close(name, got, want):
    got, want = np.asarray(got), np.asarray(want)
    assert np.array_equal(np.isneginf(got), np.isneginf(want)), f"{name}: -inf entries differ"
    got, want = np.where(np.isneginf(got), 0, got), np.where(np.isneginf(want), 0, want)
    error, bound = np.max(np.abs(got - want)), TOL * (1 + np.max(np.abs(want)))
    assert error <= bound, f"{name}: max error {error:.3g} > {bound:.3g}"


@pytest.mark.parametrize("q_len, kv_len, heads, kv_heads, causal, segments", [
    (40, 24, 4, 2, False, True),   # more queries than keys, separate segment ids per side
    (24, 40, 2, 1, True, False),   # fewer queries than keys, causal by index
    (37, 37, 2, 2, True, True),    # equal lengths, not a multiple of the blocks
])
def test_output_lse_and_their_gradients_match_the_reference(q_len, kv_len, heads, kv_heads, causal, segments):
    rng = np.random.default_rng(0)
    q, d_out, d_lse = normal(rng, 2, q_len, heads, 32), normal(rng, 2, q_len, heads, 32), normal(rng, 2, q_len, heads)
    k, v = normal(rng, 2, kv_len, kv_heads, 32), normal(rng, 2, kv_len, kv_heads, 32)
    q_ids = jnp.asarray(rng.integers(0, 3, (2, q_len)), jnp.int32) if segments else None
    kv_ids = jnp.asarray(rng.integers(0, 3, (2, kv_len)), jnp.int32) if segments else None
    visible = visibility(q_len, kv_len, causal, q_ids, kv_ids)

    def kernel(q, k, v):
        return flash_attention_with_lse(q, k, v, causal=causal, q_segment_ids=q_ids, kv_segment_ids=kv_ids,
                                        block_q=16, block_k=16)

    def outputs_and_gradients(attention):
        def run(q, k, v):
            (out, lse), vjp = jax.vjp(attention, q, k, v)
            # rows that see no key have lse = -inf: give them no lse cotangent
            return (out, lse, *vjp((d_out, jnp.where(jnp.isneginf(lse), 0.0, d_lse))))
        return jax.jit(run, compiler_options=FAST_COMPILE)(q, k, v)

    got = outputs_and_gradients(kernel)
    want = outputs_and_gradients(lambda q, k, v: reference_with_lse(q, k, v, visible))
    assert got[1].shape == (2, q_len, heads) and got[1].dtype == jnp.float32
    for name, g, w in zip(("out", "lse", "dq", "dk", "dv"), got, want):
        assert_close(name, g, w)


def test_block_gradients_from_the_final_output_add_up_to_the_full_gradients():
    """Keys split in two blocks: Σ over blocks of flash_attention_backward(final O, L) = full dq, dk, dv."""
    rng = np.random.default_rng(1)
    q, d_out = normal(rng, 1, 48, 4, 32), normal(rng, 1, 48, 4, 32)
    k, v = normal(rng, 1, 48, 2, 32), normal(rng, 1, 48, 2, 32)
    ids = jnp.asarray(np.sort(rng.integers(0, 2, (1, 48)), axis=1), jnp.int32)
    options = dict(block_q=16, block_k=16)

    def blockwise(q, k, v, d_out):
        out, lse = flash_attention_with_lse(q, k, v, causal=True, q_segment_ids=ids, kv_segment_ids=ids, **options)
        early = flash_attention_backward(q, k[:, :32], v[:, :32], out, lse, d_out, causal=True, q_segment_ids=ids,
                                         kv_segment_ids=ids[:, :32], **options)
        late = flash_attention_backward(q[:, 32:], k[:, 32:], v[:, 32:], out[:, 32:], lse[:, 32:], d_out[:, 32:],
                                        causal=True, q_segment_ids=ids[:, 32:], kv_segment_ids=ids[:, 32:], **options)
        return (early[0].at[:, 32:].add(late[0]), jnp.concatenate([early[1], late[1]], axis=1),
                jnp.concatenate([early[2], late[2]], axis=1))

    def full(q, k, v, d_out):
        visible = visibility(48, 48, True, ids, ids)
        return jax.vjp(lambda q, k, v: masked_attention(q, k, v, visible), q, k, v)[1](d_out)

    got = jax.jit(blockwise, compiler_options=FAST_COMPILE)(q, k, v, d_out)
    want = jax.jit(full)(q, k, v, d_out)
    for name, g, w in zip(("dq", "dk", "dv"), got, want):
        assert_close(name, g, w)


@pytest.mark.parametrize("call, message", [
    (lambda q, kv, ids: flash_attention_with_lse(q, kv, kv, q_segment_ids=ids), "must be given together"),
    (lambda q, kv, ids: flash_attention_with_lse(q, kv, kv, q_segment_ids=ids, kv_segment_ids=ids),
     r"kv_segment_ids must be integer \[batch, seq\] = \(2, 16\)"),
    (lambda q, kv, ids: flash_attention_backward(q, kv, kv, q, q[..., 0, 0], q), "lse must have shape"),
])
def test_bad_input_raises_value_error(call, message):
    q, kv = jnp.zeros((2, 32, 4, 32)), jnp.zeros((2, 16, 2, 32))
    with pytest.raises(ValueError, match=message):
        call(q, kv, jnp.zeros((2, 32), jnp.int32))
