"""research/models/llama.py and count_params: shapes, GQA cache, packing, exact sizes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from research import config as config_lib
from research.models import count_params, make_model
from research.models.llama import init_cache, per_layer_cache, unstack_layers


def small_model(**overrides):
    pairs = {"model.num_layers": 2, "model.vocab_size": 300, "data.tokenizer": "byte", "model.dim": 64,
             "model.num_heads": 4, "model.num_kv_heads": 2, "model.hidden_dim": 96, **overrides}
    config = config_lib.load("configs/llama2.py:tiny", [f"{k}={v}" for k, v in pairs.items()])
    model = make_model(config.model)
    params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
    return config, model, params


@pytest.mark.parametrize("variant, expected", [
    ("7b", 6_738_415_616), ("13b", 13_015_864_320), ("70b", 68_976_648_192)])
def test_count_params_is_exact_for_meta_shapes(variant, expected):
    model_config = config_lib.load(f"configs/llama2.py:{variant}").model
    assert count_params(model_config) == {"total": expected, "active": expected}


def test_70b_uses_grouped_kv_heads_and_published_ffn():
    model_config = config_lib.load("configs/llama2.py:70b").model
    assert (model_config.dim, model_config.num_layers, model_config.num_heads, model_config.num_kv_heads) == (
        8192, 80, 64, 8)
    from research.models.llama import hidden_dim_of
    assert hidden_dim_of(model_config) == 28672


def test_params_are_unbiased_untied_and_kv_sized_by_kv_heads():
    config, _, params = small_model()
    attn = params["layers"]["attention"]
    assert attn["q"].shape == (2, 64, 4, 16)
    assert attn["k"].shape == attn["v"].shape == (2, 64, 2, 16)
    assert params["embed"].shape == (300, 64) and params["lm_head"].shape == (64, 300)
    assert not any("bias" in "/".join(map(str, p)) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0])
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))


def test_cache_stores_kv_heads_only():
    config, _, _ = small_model()
    cache = init_cache(config.model, batch_size=3, max_len=10)
    assert cache["k"].shape == (2, 3, 10, 2, 16)


def test_causal_future_tokens_do_not_change_past_logits():
    _, model, params = small_model()
    tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, 300)
    changed = tokens.at[:, 8:].set(7)
    a = model.apply({"params": params}, tokens)
    b = model.apply({"params": params}, changed)
    np.testing.assert_allclose(a[:, :8], b[:, :8], atol=1e-5)
    assert not np.allclose(a[:, 8:], b[:, 8:], atol=1e-3)


@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_packed_documents_equal_separate_forward_passes(impl):
    _, model, params = small_model(**{"model.attention_impl": impl})
    doc_a = jax.random.randint(jax.random.key(2), (1, 5), 0, 300)
    doc_b = jax.random.randint(jax.random.key(3), (1, 7), 0, 300)
    packed = jnp.concatenate([doc_a, doc_b], axis=1)
    positions = jnp.concatenate([jnp.arange(5), jnp.arange(7)])[None]
    segments = jnp.array([[1] * 5 + [2] * 7])

    @jax.jit
    def packed_and_separate(params):
        logits = model.apply({"params": params}, packed, positions=positions, segment_ids=segments)
        return logits, model.apply({"params": params}, doc_a), model.apply({"params": params}, doc_b)

    logits, logits_a, logits_b = packed_and_separate(params)
    np.testing.assert_allclose(logits[:, :5], logits_a, atol=1e-4)
    np.testing.assert_allclose(logits[:, 5:], logits_b, atol=1e-4)


@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_incremental_decoding_with_cache_equals_full_forward(impl):
    config, model, params = small_model(**{"model.attention_impl": impl})
    tokens = jax.random.randint(jax.random.key(4), (2, 10), 0, 300)
    xla_model = model.clone(config=ml_collections.FrozenConfigDict({**model.config, "attention_impl": "xla"}))
    full = xla_model.apply({"params": params}, tokens)
    cache = init_cache(config.model, 2, 16)
    apply = jax.jit(model.apply, static_argnames="decode")
    prefill, cache = apply({"params": params}, tokens[:, :6], cache=cache, decode=True)
    steps = [prefill]
    for t in range(6, 10):
        logits, cache = apply({"params": params}, tokens[:, t:t + 1], cache=cache, decode=True)
        steps.append(logits)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=1e-4)
    np.testing.assert_array_equal(cache["lengths"], [10, 10])


def test_bfloat16_compute_keeps_float32_params_and_logits():
    _, model, params = small_model(**{"model.dtype": "bfloat16"})
    logits = model.apply({"params": params}, jnp.zeros((1, 4), jnp.int32))
    assert logits.dtype == jnp.float32 and jnp.all(jnp.isfinite(logits))


def test_remat_gives_the_same_gradients():
    _, model, params = small_model()
    _, remat_model, _ = small_model(**{"model.remat": "full"})
    tokens = jax.random.randint(jax.random.key(5), (2, 8), 0, 300)

    def loss(m, p):
        return jnp.mean(m.apply({"params": p}, tokens) ** 2)

    g1 = jax.grad(lambda p: loss(model, p))(params)
    g2 = jax.grad(lambda p: loss(remat_model, p))(params)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_decode_without_cache_is_an_error():
    _, model, params = small_model()
    with pytest.raises(ValueError, match="init_cache"):
        model.apply({"params": params}, jnp.zeros((1, 1), jnp.int32), decode=True)


def test_a_per_layer_cache_decodes_like_the_stacked_one_and_keeps_its_form():
    config, model, params = small_model()
    unrolled = model.clone(config=ml_collections.FrozenConfigDict({**model.config, "scan_layers": False}))
    params = unstack_layers(params)
    tokens = jax.random.randint(jax.random.key(5), (2, 5), 0, 300)
    apply = jax.jit(unrolled.apply, static_argnames="decode")
    stacked, split = init_cache(config.model, 2, 8), per_layer_cache(init_cache(config.model, 2, 8))
    for t in range(5):
        logits, stacked = apply({"params": params}, tokens[:, t:t + 1], cache=stacked, decode=True)
        split_logits, split = apply({"params": params}, tokens[:, t:t + 1], cache=split, decode=True)
        np.testing.assert_allclose(split_logits, logits, atol=1e-5)
    assert isinstance(split["k"], tuple) and len(split["k"]) == config.model.num_layers
    np.testing.assert_allclose(jnp.stack(split["k"]), stacked["k"], atol=1e-5)
    np.testing.assert_array_equal(split["lengths"], stacked["lengths"])


def test_a_per_layer_cache_needs_unrolled_layers():
    config, model, params = small_model()
    with pytest.raises(ValueError, match="scan_layers=False"):
        model.apply({"params": params}, jnp.zeros((1, 1), jnp.int32),
                    cache=per_layer_cache(init_cache(config.model, 1, 4)), decode=True)
