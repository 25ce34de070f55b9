"""research/models/medusa.py and the tree attention it decodes with (research/models/layers.py)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import config as config_lib
from research.decoding.medusa_tree import medusa_tree
from research.models import count_params, make_model
from research.models.llama import Llama, init_cache
from research.models.medusa import MedusaLM, fresh_heads

TINY = ["model.dim=32", "model.num_layers=2", "model.num_heads=4", "model.num_kv_heads=2", "model.hidden_dim=64",
        "model.vocab_size=260", "data.tokenizer=byte", "model.medusa.num_heads=3"]


def medusa_model_config(*overrides):
    return config_lib.load("configs/medusa.py:tiny", TINY + list(overrides)).model


@pytest.mark.parametrize("shared", [False, True])
def test_heads_at_init_predict_what_the_base_model_predicts(shared):
    model = make_model(medusa_model_config(f"model.medusa.shared_lm_head={shared}"))
    assert isinstance(model, MedusaLM)
    tokens = jnp.array([[1, 5, 9, 200, 7, 3]])
    params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), tokens)["params"])
    logits, medusa_logits = jax.jit(model.apply)({"params": params}, tokens)
    assert medusa_logits.shape == (3, *logits.shape)
    np.testing.assert_allclose(medusa_logits, jnp.broadcast_to(logits, medusa_logits.shape), rtol=1e-6, atol=1e-6)
    assert ("lm_head" in params["medusa"]) != shared


def test_fresh_heads_copy_the_given_backbones_lm_head():
    config = medusa_model_config()
    backbone = {"lm_head": jax.random.normal(jax.random.key(3), (config.dim, config.vocab_size))}
    heads = nn.meta.unbox(fresh_heads(config, jax.random.key(0), backbone))
    np.testing.assert_array_equal(heads["lm_head"], jnp.broadcast_to(backbone["lm_head"], (3, 32, 260)))
    assert not np.asarray(heads["w"]).any() and not np.asarray(heads["bias"]).any()


def test_the_family_counts_the_heads():
    config = medusa_model_config()
    backbone = count_params(config_lib.load("configs/llama2.py:tiny", TINY[:-1]).model)["total"]
    assert count_params(config)["total"] == backbone + 3 * (32 * 32 + 32 + 32 * 260)


def test_bad_medusa_fields_are_named():
    with pytest.raises(ValueError, match="model.medusa.num_heads: must be an int >= 1"):
        medusa_model_config("model.medusa.num_heads=0")


def test_tree_attention_gives_every_node_the_logits_of_its_path_alone():
    """A tree after ragged caches: node n's logits equal the plain decoder's after prompt + root → n."""
    config = medusa_model_config()
    model = Llama(config)
    params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(1), jnp.zeros((1, 4), jnp.int32))["params"])
    tree = medusa_tree([(0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0)], num_heads=3, max_top_k=10)
    prompts = np.array([[3, 4, 5, 6, 7], [8, 9, 0, 0, 0]])
    lengths = np.array([5, 2])
    tree_tokens = np.array([[20 + n for n in range(tree.num_nodes)], [40 + 2 * n for n in range(tree.num_nodes)]])

    @jax.jit
    def tree_logits(params):
        _, cache = model.apply({"params": params}, prompts, cache=init_cache(config, 2, 16), decode=True)
        cache = {**cache, "lengths": jnp.asarray(lengths)}
        logits, _ = model.apply({"params": params}, tree_tokens, positions=lengths[:, None] + tree.depths,
                                cache=cache, decode=True, tree_mask=tree.attention_mask)
        return logits

    paths = [[*prompts[b, :lengths[b]], *tree_tokens[b, np.flatnonzero(tree.attention_mask[n])]]
             for b in range(2) for n in range(tree.num_nodes)]
    padded = np.zeros((len(paths), max(map(len, paths))), np.int32)
    for i, path in enumerate(paths):
        padded[i, : len(path)] = path
    plain = jax.jit(model.apply)({"params": params}, padded)  # causal: padding after a path never reaches it
    expected = np.stack([plain[i, len(path) - 1] for i, path in enumerate(paths)]).reshape(2, tree.num_nodes, -1)
    np.testing.assert_allclose(tree_logits(params), expected, rtol=2e-5, atol=2e-5)


def test_a_tree_needs_a_cache_and_the_xla_or_cudnn_attention():
    config = medusa_model_config()
    model = Llama(config)
    mask = np.tril(np.ones((2, 2), bool))
    with pytest.raises(ValueError, match="tree_mask verifies a token tree after a KV cache"):
        model.init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32), tree_mask=mask)
    pallas = Llama(medusa_model_config("model.attention_impl=pallas"))
    with pytest.raises(ValueError, match="attention_impl='pallas' has no tree attention"):
        pallas.init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32), positions=jnp.array([[0, 1]]),
                    cache=init_cache(config, 1, 4), decode=True, tree_mask=mask)
