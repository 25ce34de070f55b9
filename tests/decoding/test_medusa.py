"""research/decoding/medusa.py: greedy Medusa decoding is greedy decoding; the cache compaction is exact."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import config as config_lib
from research.decoding.medusa import compact_cache, medusa_generate, node_acceptance
from research.decoding.medusa_tree import medusa_tree
from research.decoding.sampling import generate
from research.models.llama import Llama, init_cache
from research.models.medusa import MedusaLM

VOCAB = 260
CHAIN = [(0,), (0, 0), (0, 0, 0)]
TREE = [(0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0)]
PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12], [13]]


def tiny_medusa_config(num_heads=3):
    config = config_lib.load("configs/medusa.py:tiny", [
        "model.dim=32", "model.num_layers=2", "model.num_heads=4", "model.num_kv_heads=2", "model.hidden_dim=64",
        f"model.vocab_size={VOCAB}", "data.tokenizer=byte", f"model.medusa.num_heads={num_heads}"])
    return config.model


@pytest.fixture(scope="module")
def predictable_model():
    """A MedusaLM whose heads guess well: its layers are scaled down so the argmax after token x is
    mostly π(x) for a fixed permutation π (lm_head[:, v] = embed[π⁻¹(v)]), and head k's own LM head
    reads π^{k+2}(x) the same way; attention still moves the logits, so the cache matters."""
    model = MedusaLM(tiny_medusa_config())
    params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
    backbone = jax.tree_util.tree_map_with_path(
        lambda path, p: p * 0.2 if jax.tree_util.keystr(path).endswith(("['o']", "['down']")) else p,
        params["backbone"])
    embed = np.asarray(backbone["embed"])
    inverse = np.argsort(np.random.default_rng(0).permutation(VOCAB))  # π⁻¹

    def reading(power):  # lm_head [d, V] whose column v is embed[π^{-power}(v)]
        index = np.arange(VOCAB)
        for _ in range(power):
            index = inverse[index]
        return jnp.asarray(embed[index].T)

    backbone["lm_head"] = reading(1)
    medusa = {**params["medusa"], "lm_head": jnp.stack([reading(k + 2) for k in range(3)])}
    return model, {"backbone": backbone, "medusa": medusa}


@pytest.fixture(scope="module")
def greedy_tokens(predictable_model):
    model, params = predictable_model
    return np.asarray(generate(Llama(model.config), params["backbone"], PROMPTS, max_new_tokens=12))


def stopped_at(tokens, eos: int, pad_id: int = 0):
    """`generate`'s layout with a stop id: each row's new tokens padded after its first `eos`."""
    tokens = tokens.copy()
    for row, prompt in zip(tokens, PROMPTS):
        new = row[len(prompt): len(prompt) + 12]
        if eos in new.tolist():
            new[new.tolist().index(eos) + 1:] = pad_id
    return tokens


@pytest.mark.parametrize("choices", [CHAIN, TREE], ids=["chain", "tree"])
def test_greedy_medusa_equals_greedy_generate(predictable_model, greedy_tokens, choices):
    model, params = predictable_model
    eos = int(greedy_tokens[1, 5 + 6])  # row 1 stops after its 7th new token
    expected = stopped_at(greedy_tokens, eos)
    assert (expected != greedy_tokens).any()
    tokens, stats = medusa_generate(model, params, PROMPTS, max_new_tokens=12, medusa_choices=choices, eos_id=eos)
    np.testing.assert_array_equal(np.asarray(tokens), expected)
    assert stats["mean_accepted_length"] > 2.0
    assert stats["forward_passes"] < 12


def test_typical_acceptance_samples_reproducibly_and_accepts_more_than_one(predictable_model):
    model, params = predictable_model

    def run(seed):
        return medusa_generate(model, params, PROMPTS, max_new_tokens=12, medusa_choices=TREE, acceptance="typical",
                               temperature=0.7, rng=jax.random.key(seed))

    (first, stats), (again, _) = run(0), run(0)
    np.testing.assert_array_equal(np.asarray(first), np.asarray(again))
    assert np.asarray(first)[0, :3].tolist() == PROMPTS[0] and np.asarray(first)[2, 1:].min() >= 0
    assert 1.0 < stats["mean_accepted_length"] <= 4.0


def test_typical_acceptance_threshold():
    # parent node 0: a peaked distribution (H small, threshold ε); node 1 reads it
    logits = jnp.log(jnp.array([[[0.9, 0.05, 0.05], [1 / 3, 1 / 3, 1 / 3]]]))
    for token, accepted in ((0, True), (1, False)):
        result, _ = node_acceptance(logits, jnp.array([[0, token]]), np.array([0, 0]), acceptance="typical",
                                    temperature=1.0, posterior_threshold=0.09, posterior_alpha=0.3)
        assert bool(result[0, 1]) == accepted
    # a flat parent: threshold δ·exp(−log 3) = 0.1 < 1/3, so any token is accepted
    result, _ = node_acceptance(logits, jnp.array([[0, 2]]), np.array([0, 1]), acceptance="typical",
                                temperature=1.0, posterior_threshold=0.5, posterior_alpha=0.3)
    assert bool(result[0, 1])


def test_compacted_cache_continues_like_a_cache_of_the_accepted_tokens():
    """A tree pass over ragged rows, each row keeping a different path, compacted: the next token's
    logits equal those over a plain cache of prompt + accepted tokens."""
    config = tiny_medusa_config()
    model = Llama(config)
    params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(1), jnp.zeros((1, 4), jnp.int32))["params"])
    tree = medusa_tree(TREE, num_heads=3, max_top_k=VOCAB)
    prompts = np.array([[3, 4, 5, 6], [7, 8, 0, 0]])
    lengths = jnp.array([4, 2])
    tree_tokens = np.array([[20 + n for n in range(tree.num_nodes)], [40 + n for n in range(tree.num_nodes)]])
    kept = [[0, 1, 3, 6], [0, 2, 5]]  # row 0: root + 3 nodes; row 1: root + 2 (node 5 is (1, 0))
    next_tokens = jnp.array([[50], [51]])

    @jax.jit
    def next_logits(params):
        _, cache = model.apply({"params": params}, prompts, cache=init_cache(config, 2, 24), decode=True)
        cache = {**cache, "lengths": lengths}
        _, cache = model.apply({"params": params}, tree_tokens, positions=lengths[:, None] + tree.depths,
                               cache=cache, decode=True, tree_mask=tree.attention_mask)
        path_nodes = jnp.array([kept[0], kept[1] + [0]])
        compacted = {name: compact_cache(cache[name], lengths, path_nodes) for name in ("k", "v")}
        compacted["lengths"] = lengths + jnp.array([len(nodes) for nodes in kept])
        return model.apply({"params": params}, next_tokens, cache=compacted, decode=True)[0][:, 0]

    sequences = [[*prompts[row, :length].tolist(), *tree_tokens[row, nodes].tolist(), int(next_tokens[row, 0])]
                 for row, (length, nodes) in enumerate(zip([4, 2], kept))]
    full_forward = jax.jit(lambda params, tokens: model.apply({"params": params}, tokens)[0, -1])
    logits = next_logits(params)
    for row, sequence in enumerate(sequences):
        np.testing.assert_allclose(logits[row], full_forward(params, jnp.array([sequence])), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": 0.5}, "acceptance='greedy' follows the base model's argmax"),
    ({"acceptance": "typical", "temperature": 0.5}, "needs an rng key"),
    ({"acceptance": "beam"}, "acceptance must be one of"),
    ({"medusa_choices": [(0,), (0, 0), (0, 0, 0), (0, 0, 0, 0)]}, "but the model has 3 Medusa heads"),
    ({"medusa_choices": [(0,), (1, 1)]}, r"needs its prefix \(1,\)"),
    ({"posterior_alpha": 0.0}, r"posterior_alpha \(δ\) must be in"),
    ({"max_new_tokens": 0}, "max_new_tokens must be an int"),
])
def test_bad_arguments_are_named(predictable_model, kwargs, message):
    model, params = predictable_model
    arguments = {"max_new_tokens": 4, "medusa_choices": CHAIN, **kwargs}
    with pytest.raises(ValueError, match=message):
        medusa_generate(model, params, PROMPTS, **arguments)
