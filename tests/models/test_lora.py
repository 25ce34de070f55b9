"""research/models/lora.py: targets, shapes and logical axes of the adapters, the adapted model equal to the
base at init, gradients only into the adapters, scanned = unrolled, and export through the HF layout.

Everything that computes runs jitted: on 8 fake CPU devices op-by-op dispatch is many times slower."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util
from jax.sharding import PartitionSpec as P

from research import config as config_lib
from research.models import make_model
from research.models.convert import load_hf_llama, save_hf_llama
from research.models.llama import Llama, unstack_layers
from research.models.lora import LLAMA_LORA_PATTERNS, init_lora, lora_targets, matrix_split, merge_lora
from research.parallel.mesh import make_mesh, sharded_abstract

RANK, ALPHA = 4, 8.0
TOKENS = jnp.array([[1, 5, 9, 2, 7, 3], [4, 4, 8, 0, 6, 1]], jnp.int32)
BLOCK_MATRICES = ["attention/k", "attention/o", "attention/q", "attention/v", "ffn/down", "ffn/gate", "ffn/up"]


@functools.cache
def tiny_model(scan_layers: bool):
    """(model config, model, boxed params) of a 2-layer GQA LLaMA, the parameters drawn with NumPy into
    the boxes `model.init` would make (traced, not compiled: compiling the init is most of the cost)."""
    pairs = {"model.num_layers": 2, "model.vocab_size": 300, "data.tokenizer": "byte", "model.dim": 32,
             "model.num_heads": 4, "model.num_kv_heads": 2, "model.hidden_dim": 48, "model.scan_layers": scan_layers}
    model_config = config_lib.load("configs/llama2.py:tiny", [f"{k}={v}" for k, v in pairs.items()]).model
    model = make_model(model_config)
    abstract = jax.eval_shape(model.init, jax.random.key(0), TOKENS)["params"]
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: (0.3 * rng.normal(size=x.shape)).astype(np.float32), abstract)
    return model_config, model, params


def llama_adapters(boxed, patterns=LLAMA_LORA_PATTERNS):
    return jax.jit(functools.partial(init_lora, rank=RANK, patterns=tuple(patterns)))(jax.random.key(1), boxed)


def randomised_b(adapters):
    """The adapters with B drawn at random, so that A·B is not zero."""
    rng = np.random.default_rng(2)
    return traverse_util.unflatten_dict({
        path: box.replace_boxed(0.1 * rng.normal(size=box.value.shape).astype(np.float32)) if path[-1] == "b" else box
        for path, box in traverse_util.flatten_dict(adapters).items()})


merged = jax.jit(functools.partial(merge_lora, alpha=ALPHA, rank=RANK))


@functools.cache
def jitted_apply(model):
    return jax.jit(model.apply)


def logits_of(model, params, adapters=None):
    params = nn.meta.unbox(params)
    if adapters is not None:
        params = merged(params, adapters)
    return jitted_apply(model)({"params": params}, TOKENS)


@pytest.mark.parametrize("scan_layers, prefixes", [(True, ["layers"]), (False, ["layers_0", "layers_1"])])
def test_the_llama_patterns_target_every_block_matrix(scan_layers, prefixes):
    _, _, boxed = tiny_model(scan_layers)
    expected = sorted(f"{prefix}/{matrix}" for prefix in prefixes for matrix in BLOCK_MATRICES)
    assert lora_targets(boxed, LLAMA_LORA_PATTERNS) == expected
    assert lora_targets(boxed, [r"lm_head$"]) == ["lm_head"]


def test_a_pattern_that_matches_nothing_is_named():
    _, _, boxed = tiny_model(True)
    with pytest.raises(ValueError, match=r"\['wq\$'\] match no parameter"):
        lora_targets(boxed, [r"attention/q$", r"wq$"])
    with pytest.raises(ValueError, match="sequence of regexes"):
        lora_targets(boxed, r"attention/q$")


@pytest.mark.parametrize("names, split", [
    (("layers", "embed", "heads", "head_dim"), (1, 1)),   # q, k, v: x·W reads the model width
    (("layers", "heads", "head_dim", "embed"), (1, 2)),   # o: writes the model width from heads × head_dim
    (("mlp", "embed"), (0, 1)),                           # down, unrolled
    (("vocab", "embed"), (0, 1)),                         # the embedding table: one-hot token in
    (("embed", "vocab"), (0, 1)),                         # lm_head
    (("layers", "expert", "mlp", "embed"), (2, 1)),       # a mixture's down, scanned
])
def test_matrix_split_reads_stacked_input_and_output_axes(names, split):
    assert matrix_split("w", names) == split


def test_a_vector_is_not_a_lora_target():
    _, _, boxed = tiny_model(True)
    with pytest.raises(ValueError, match="layers/attention_norm/scale .* is not a matrix"):
        init_lora(jax.random.key(0), boxed, rank=RANK, patterns=["attention_norm/scale"])


def test_adapters_have_the_shapes_and_logical_axes_of_their_weights():
    _, _, boxed = tiny_model(True)
    adapters = llama_adapters(boxed)
    q, o = adapters["layers"]["attention"]["q"], adapters["layers"]["attention"]["o"]
    assert (q["a"].value.shape, q["a"].names) == ((2, 32, RANK), ("layers", "embed", None))
    assert (q["b"].value.shape, q["b"].names) == ((2, RANK, 4, 8), ("layers", None, "heads", "head_dim"))
    assert (o["a"].value.shape, o["a"].names) == ((2, 4, 8, RANK), ("layers", "heads", "head_dim", None))
    assert (o["b"].value.shape, o["b"].names) == ((2, RANK, 32), ("layers", None, "embed"))
    assert np.all(np.asarray(q["b"].value) == 0)
    np.testing.assert_allclose(np.std(np.asarray(adapters["layers"]["ffn"]["down"]["a"].value)), 48**-0.5, rtol=0.2)


def test_adapters_shard_like_their_base_weights():
    mesh = make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=4, tensor=2, expert=1)))
    _, _, boxed = tiny_model(True)
    adapters = jax.eval_shape(lambda: init_lora(jax.random.key(0), boxed, rank=RANK, patterns=LLAMA_LORA_PATTERNS))
    _, shardings = sharded_abstract(adapters, mesh)
    q = shardings["layers"]["attention"]["q"]
    assert q["a"].spec == P(None, "fsdp", None) and q["b"].spec == P(None, None, "tensor", None)
    assert shardings["layers"]["ffn"]["down"]["a"].spec == P(None, "tensor", None)


@pytest.mark.parametrize("scan_layers", [True, False], ids=["scanned", "unrolled"])
def test_the_adapted_model_at_init_equals_the_base(scan_layers):
    _, model, boxed = tiny_model(scan_layers)
    adapted = merged(boxed, llama_adapters(boxed))
    assert isinstance(adapted["lm_head"], nn.LogicallyPartitioned)  # boxes kept
    np.testing.assert_array_equal(logits_of(model, adapted), logits_of(model, boxed))


def test_gradients_reach_only_the_adapters():
    _, model, boxed = tiny_model(True)
    params, adapters = nn.meta.unbox(boxed), nn.meta.unbox(randomised_b(llama_adapters(boxed)))

    def loss(params, adapters):
        adapted = merge_lora(jax.lax.stop_gradient(params), adapters, alpha=ALPHA, rank=RANK)
        return jnp.mean(jnp.square(model.apply({"params": adapted}, TOKENS)))

    base_grads, adapter_grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, adapters)
    assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(base_grads))
    assert all(np.abs(np.asarray(g)).max() > 0 for g in jax.tree.leaves(adapter_grads))


def test_scanned_and_unrolled_merges_agree():
    _, _, boxed = tiny_model(True)
    params, adapters = nn.meta.unbox(boxed), nn.meta.unbox(randomised_b(llama_adapters(boxed)))
    scanned_then_unstacked = jax.jit(lambda p, a: unstack_layers(merged(p, a)))(params, adapters)
    unstacked_then_merged = jax.jit(lambda p, a: merged(unstack_layers(p), unstack_layers(a)))(params, adapters)
    for a, b in zip(jax.tree.leaves(scanned_then_unstacked), jax.tree.leaves(unstacked_then_merged)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_merged_adapters_export_to_hugging_face_and_back(tmp_path):
    model_config, model, boxed = tiny_model(True)
    adapters = randomised_b(llama_adapters(boxed))
    adapted_logits = logits_of(model, boxed, adapters)
    assert np.abs(adapted_logits - logits_of(model, boxed)).max() > 1e-2  # the adapters change the model
    save_hf_llama(model_config, merged(nn.meta.unbox(boxed), adapters), tmp_path / "hf")
    loaded_config, loaded = load_hf_llama(tmp_path / "hf")
    np.testing.assert_allclose(jax.jit(Llama(loaded_config).apply)({"params": loaded}, TOKENS), adapted_logits,
                               rtol=1e-5, atol=1e-5)


def test_merge_refuses_adapters_of_another_rank_or_weight():
    _, _, boxed = tiny_model(True)
    adapters = llama_adapters(boxed, [r"attention/q$"])
    with pytest.raises(ValueError, match="layers/attention/q: A .* of rank 2"):
        merge_lora(boxed, adapters, alpha=ALPHA, rank=2)
    with pytest.raises(ValueError, match="adapter layers/attention/q .* does not adapt"):
        merge_lora({"lm_head": boxed["lm_head"]}, adapters, alpha=ALPHA, rank=RANK)
    with pytest.raises(ValueError, match="needs params boxed"):
        init_lora(jax.random.key(1), nn.meta.unbox(boxed), rank=RANK, patterns=[r"attention/q$"])
