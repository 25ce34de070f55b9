"""research/models/layers.py: RMSNorm, RoPE, SwiGLU width, masks, GQA attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.models import layers


def test_rmsnorm_matches_formula():
    x = jax.random.normal(jax.random.key(0), (2, 3, 8)) * 3
    norm = layers.RMSNorm(eps=1e-5)
    params = norm.init(jax.random.key(1), x)
    expected = x / np.sqrt(np.mean(np.square(x), -1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(norm.apply(params, x), expected, rtol=1e-5, atol=1e-6)


def test_rope_is_a_rotation_that_depends_on_relative_position():
    q = jax.random.normal(jax.random.key(0), (1, 1, 2, 16))
    k = jax.random.normal(jax.random.key(1), (1, 1, 2, 16))

    def score(pq, pk):
        rq = layers.apply_rope(q, jnp.array([[pq]]), 10000.0)
        rk = layers.apply_rope(k, jnp.array([[pk]]), 10000.0)
        return jnp.sum(rq * rk, -1)

    np.testing.assert_allclose(jnp.linalg.norm(layers.apply_rope(q, jnp.array([[7]]), 1e4)), jnp.linalg.norm(q),
                               rtol=1e-5)
    np.testing.assert_allclose(score(5, 2), score(13, 10), rtol=1e-4, atol=1e-5)
    assert not np.allclose(score(5, 2), score(5, 4), atol=1e-3)


def test_rope_rotates_adjacent_pairs_meta_layout():
    x = jnp.zeros((1, 1, 1, 4)).at[..., 0].set(1.0)  # pair (0, 1) = 1 + 0i
    out = layers.apply_rope(x, jnp.array([[1]]), 10000.0)
    np.testing.assert_allclose(out[0, 0, 0], [np.cos(1.0), np.sin(1.0), 0, 0], atol=1e-6)


@pytest.mark.parametrize("dim, multiplier, multiple_of, expected", [
    (4096, None, 256, 11008), (5120, None, 256, 13824), (8192, 1.3, 4096, 28672)])
def test_meta_hidden_dim_rule(dim, multiplier, multiple_of, expected):
    assert layers.llama_hidden_dim(dim, multiplier, multiple_of) == expected


def reference_attention(q, k, v, mask):
    group = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
    s = jnp.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
    s = jnp.where(mask[:, None], s, -1e30)
    return jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(s, -1), v)


@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (4, 2), (4, 1)])
def test_grouped_query_attention_matches_repeated_kv(heads, kv_heads):
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (2, 6, heads, 8))
    k = jax.random.normal(keys[1], (2, 6, kv_heads, 8))
    v = jax.random.normal(keys[2], (2, 6, kv_heads, 8))
    pos = jnp.broadcast_to(jnp.arange(6), (2, 6))
    seg = jnp.array([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 1, 1]])
    mask = layers.attention_mask(pos, pos, seg, seg)
    np.testing.assert_allclose(layers.dot_product_attention(q, k, v, mask), reference_attention(q, k, v, mask),
                               rtol=1e-5, atol=1e-5)


def test_mask_keeps_documents_apart_and_causal():
    pos = jnp.array([[0, 1, 0, 1]])
    seg = jnp.array([[1, 1, 2, 2]])
    mask = np.asarray(layers.attention_mask(pos, pos, seg, seg))[0]
    expected = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]], bool)
    np.testing.assert_array_equal(mask, expected)


def test_unknown_attention_impl_is_rejected():
    x = jnp.zeros((1, 2, 1, 4))
    pos = jnp.zeros((1, 2), jnp.int32)
    with pytest.raises(ValueError, match="attention_impl"):
        layers.attention(x, x, x, pos, pos, impl="magic")


@pytest.mark.parametrize("heads, kv_heads", [(4, 2), (2, 1)])
def test_one_query_reads_the_cache_like_the_batched_matmul_path(heads, kv_heads):
    """A decode step (q_len 1) takes the broadcast-and-sum path; rows see different cache prefixes."""
    keys = jax.random.split(jax.random.key(1), 3)
    q = jax.random.normal(keys[0], (3, 1, heads, 8))
    k = jax.random.normal(keys[1], (3, 7, kv_heads, 8))
    v = jax.random.normal(keys[2], (3, 7, kv_heads, 8))
    q_pos = jnp.array([[0], [3], [6]])
    mask = layers.attention_mask(q_pos, jnp.broadcast_to(jnp.arange(7), (3, 7)))
    out = layers.dot_product_attention(q, k, v, mask)
    assert out.shape == q.shape
    np.testing.assert_allclose(out, reference_attention(q, k, v, mask), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[0, 0], jnp.repeat(v[0, 0], heads // kv_heads, axis=0), rtol=1e-6)
