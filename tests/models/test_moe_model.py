"""The decoder with mixture-of-experts layers: parameter counts, interleaved layers, KV cache."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import config as config_lib
from research.models import count_params, make_model
from research.models.llama import init_cache, unstack_layers
from research.models.moe import MOE_COLLECTION
from research.train.moe_aux import layer_statistics

MIXTRAL_8X7B = {"model.dim": 4096, "model.num_layers": 32, "model.num_heads": 32, "model.num_kv_heads": 8,
                "model.vocab_size": 32000, "model.moe.num_experts": 8, "model.moe.top_k": 2,
                "model.moe.num_shared_experts": 0, "model.moe.expert_hidden_dim": 14336}


def moe_config(variant="full", **overrides):
    return config_lib.load(f"configs/seed_thinking.py:{variant}", [f"{k}={v}" for k, v in overrides.items()])


SMALL = {"model.num_layers": 2, "model.vocab_size": 300, "data.tokenizer": "byte", "model.dim": 32,
         "model.num_heads": 4, "model.num_kv_heads": 2, "model.moe.num_experts": 4, "model.moe.expert_hidden_dim": 16}


def small_moe(**overrides):
    config = moe_config("tiny", **{**SMALL, **overrides})
    model = make_model(config.model)
    params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
    return config, model, params


def test_mixtral_8x7b_count_is_exact():
    assert count_params(moe_config(**MIXTRAL_8X7B).model) == {"total": 46_702_792_704, "active": 12_879_925_248}


def test_seed_thinking_full_is_200b_total_20b_active_within_two_percent():
    counts = count_params(moe_config("full").model)
    assert abs(counts["total"] / 200e9 - 1) < 0.02 and abs(counts["active"] / 20e9 - 1) < 0.02, counts


def test_tiny_moe_activates_as_many_parameters_as_the_dense_tiny_plus_routers():
    moe, dense = moe_config("tiny").model, config_lib.load("configs/llama2.py:tiny").model
    routers = moe.num_layers * moe.dim * moe.moe.num_experts
    assert count_params(moe)["active"] == count_params(dense)["active"] + routers
    assert count_params(moe)["total"] > 2 * count_params(moe)["active"]


def test_interleaved_layers_put_the_moe_in_every_kth_layer_scanned_and_unrolled_alike():
    interleaved = {"model.num_layers": 4, "model.moe.every_k_layers": 2}
    _, model, params = small_moe(**interleaved)
    assert set(params["layers"]) == {"block_0", "block_1"}
    assert "ffn" in params["layers"]["block_0"] and "moe" in params["layers"]["block_1"]
    assert params["layers"]["block_1"]["moe"]["gate"].shape == (2, 4, 32, 16)  # [groups, experts, dim, hidden]
    tokens = jax.random.randint(jax.random.key(1), (2, 8), 3, 300)
    scanned, sown = model.apply({"params": params}, tokens, mutable=[MOE_COLLECTION])
    unrolled_model = make_model(moe_config("tiny", **{**SMALL, **interleaved, "model.scan_layers": False}).model)
    unrolled, sown_unrolled = unrolled_model.apply({"params": unstack_layers(params)}, tokens,
                                                   mutable=[MOE_COLLECTION])
    np.testing.assert_allclose(scanned, unrolled, rtol=1e-5, atol=1e-5)
    stats, stats_unrolled = layer_statistics(sown[MOE_COLLECTION]), layer_statistics(sown_unrolled[MOE_COLLECTION])
    assert stats["expert_load"].shape == (2, 4)  # two MoE layers of four layers
    np.testing.assert_allclose(stats["expert_load"], stats_unrolled["expert_load"], rtol=1e-6)


@pytest.mark.parametrize("dispatch", ["dropless", "capacity"])
def test_decoding_with_the_cache_reproduces_the_full_forward(dispatch):
    config, model, params = small_moe(**{"model.moe.dispatch": dispatch, "model.moe.capacity_factor": 8.0})
    tokens = jax.random.randint(jax.random.key(2), (2, 6), 3, 300)
    full = model.apply({"params": params}, tokens)
    cache = init_cache(config.model, 2, 8)
    prefill, cache = model.apply({"params": params}, tokens[:, :4], cache=cache, decode=True)
    step, _ = model.apply({"params": params}, tokens[:, 4:6], cache=cache, decode=True)
    np.testing.assert_allclose(jnp.concatenate([prefill, step], axis=1), full, rtol=1e-4, atol=1e-4)
