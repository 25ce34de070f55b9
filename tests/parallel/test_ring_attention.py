"""research/parallel/ring_attention.py on 4 and 8 fake CPU devices: forward and gradients equal full
attention (the dense jnp reference), the zig-zag layout balances causal work, the LSE merge is exact.

Tolerance: max |ring − reference| ≤ tol · (1 + max |reference|) per tensor, tol = 5e-6 in float32
(only the summation order differs) and 2e-2 in bfloat16 (the kernels round P and dS to bfloat16).
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from pallas_kernels.attention_reference import attention_reference, masked_attention
from research.parallel.mesh import MESH_AXES, batch_sharding, logical_to_sharding, make_mesh, mesh_shape
from research.parallel.ring_attention import merge_partial_attention, ring_attention, zigzag_order

FAST_COMPILE = {"xla_backend_optimization_level": 0}
TOLERANCES = {jnp.float32: 5e-6, jnp.bfloat16: 2e-2}


def context_mesh(context, data=1):
    sizes = {"data": data, "fsdp": 1, "tensor": 1, "expert": 1, "context": context}
    return make_mesh(ml_collections.ConfigDict(sizes), jax.devices()[:data * context])


def output_and_gradients(attention, q, k, v, d_out):
    def run(q, k, v, d_out):
        out, vjp = jax.vjp(attention, q, k, v)
        return (out, *vjp(d_out))
    return jax.jit(run, compiler_options=FAST_COMPILE)(q, k, v, d_out)


@pytest.mark.parametrize("context, data, heads, kv_heads, causal, segments, dtype", [
    (4, 1, 4, 1, True, False, jnp.float32),
    (8, 1, 4, 2, True, True, jnp.bfloat16),
    (4, 2, 2, 2, False, True, jnp.float32),
])
def test_ring_attention_equals_full_attention(context, data, heads, kv_heads, causal, segments, dtype):
    rng = np.random.default_rng(context)
    seq = 16 * 2 * context  # two 16-token zig-zag chunks per device

    def normal(h):
        return jnp.asarray(rng.standard_normal((2, seq, h, 32)), dtype)

    q, k, v, d_out = normal(heads), normal(kv_heads), normal(kv_heads), normal(heads)
    ids = jnp.asarray(np.sort(rng.integers(0, 3, (2, seq)), axis=1), jnp.int32) if segments else None
    mesh = context_mesh(context, data)
    got = output_and_gradients(
        lambda q, k, v: ring_attention(q, k, v, mesh, causal=causal, segment_ids=ids, block_q=16, block_k=16),
        q, k, v, d_out)
    want = output_and_gradients(
        lambda q, k, v: attention_reference(q, k, v, causal=causal, segment_ids=ids), q, k, v, d_out)
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        assert g.dtype == dtype and g.shape == w.shape
        g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
        error, bound = np.max(np.abs(g - w)), TOLERANCES[dtype] * (1 + np.max(np.abs(w)))
        assert error <= bound, f"{name}: max error {error:.3g} > {bound:.3g}"


@pytest.mark.parametrize("devices", [4, 8])
def test_zigzag_layout_gives_every_device_pair_the_same_causal_work(devices):
    """Visible (query, key) pairs between the tokens of device i and those of device j ≠ i: always 2c²,
    so every hop after the first costs every device the same. A contiguous split would give 0 or 4c²."""
    chunk = 4
    order = zigzag_order(2 * devices * chunk, devices).reshape(devices, 2 * chunk)
    work = [[int(np.sum(order[i][:, None] >= order[j][None, :])) for j in range(devices)] for i in range(devices)]
    off_diagonal = {work[i][j] for i in range(devices) for j in range(devices) if i != j}
    assert off_diagonal == {2 * chunk * chunk}
    assert sorted(order.ravel().tolist()) == list(range(2 * devices * chunk))
    assert order[0, :chunk].tolist() == list(range(chunk))  # device 0: the first chunk and the last
    assert order[0, chunk:].tolist() == list(range((2 * devices - 1) * chunk, 2 * devices * chunk))


def test_merge_of_two_key_halves_equals_attention_over_all_keys():
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((1, 6, 2, 8)), jnp.float32) for _ in range(3))
    visible = jnp.ones((1, 6, 6), bool).at[:, 0, 3:].set(False)  # query 0 sees only the first half

    def half(keys):
        scores = jnp.einsum("bqhd,bkhd->bqhk", q, k[:, keys]) * 8 ** -0.5
        lse = jax.nn.logsumexp(jnp.where(visible[:, :, None, keys], scores, -jnp.inf), axis=-1)
        return masked_attention(q, k[:, keys], v[:, keys], visible[:, :, keys]), lse

    out, _ = merge_partial_attention(*half(slice(0, 3)), *half(slice(3, 6)))
    np.testing.assert_allclose(out, masked_attention(q, k, v, visible), atol=1e-6)


@pytest.mark.parametrize("seq, axis_name, message", [
    (36, "context", r"divisible by 2 × 4 shards"),
    (64, "sequence", "is not an axis of the mesh"),
])
def test_bad_layout_or_axis_raises_value_error(seq, axis_name, message):
    x = jnp.zeros((1, seq, 1, 16))
    with pytest.raises(ValueError, match=message):
        ring_attention(x, x, x, context_mesh(4), axis_name=axis_name)


def test_context_axis_joins_the_project_mesh_only_when_set():
    mesh = context_mesh(4, data=2)
    assert mesh.axis_names == ("data", "fsdp", "context", "tensor", "expert") and mesh.shape["context"] == 4
    sizes = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1, "expert": 1, "context": 4})
    assert mesh_shape(sizes, 8) == (2, 1, 4, 1, 1)
    assert make_mesh(ml_collections.ConfigDict({"data": -1, "context": 1})).axis_names == MESH_AXES
    assert logical_to_sharding({"x": P("batch", "seq")}, mesh)["x"].spec == P(("data", "fsdp", "expert"), "context")
    assert batch_sharding(mesh).spec == P(("data", "fsdp", "expert"), "context")
