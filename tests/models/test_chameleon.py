"""research/models/chameleon.py: QK-Norm, norm reordering, dropout, z-loss, the vocabulary, config checks, sizes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import config as config_lib
from research.models import count_params, make_model
from research.models.chameleon import codebook_index_of, image_token_ids, is_image_token, z_loss

TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 1024, (2, 10)), jnp.int32)


def tiny(*other_overrides, **overrides):
    """configs/chameleon.py:tiny, one layer, with `overrides` of config.model and `other_overrides` ("a.b=v")."""
    pairs = {"num_layers": 1, **overrides}
    return config_lib.load("configs/chameleon.py:tiny", [f"model.{k}={v}" for k, v in pairs.items()]
                           + list(other_overrides))


def init(model_config):
    """(model, params, logits(params) of TOKENS), init and apply jitted."""
    model = make_model(model_config)
    params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), TOKENS)["params"])
    return model, params, jax.jit(lambda p: model.apply({"params": p}, TOKENS))


def scaled(params, path, factor):
    """`params` with the parameter at layers/`path` multiplied by `factor`."""
    return jax.tree_util.tree_map_with_path(
        lambda p, x: x * factor if tuple(k.key for k in p) == ("layers", *path) else x, params)


def test_qk_norm_adds_a_gain_and_bias_per_head_and_makes_attention_blind_to_the_scale_of_q_and_k():
    _, params, logits = init(tiny().model)
    attention = params["layers"]["attention"]
    assert attention["q_norm"]["scale"].shape == attention["q_norm"]["bias"].shape == (1, 4, 32)
    assert attention["k_norm"]["scale"].shape == attention["k_norm"]["bias"].shape == (1, 2, 32)
    for weight in ("q", "k"):
        np.testing.assert_allclose(logits(scaled(params, ("attention", weight), 8.0)), logits(params),
                                   rtol=1e-4, atol=1e-4)
    _, plain_params, plain_logits = init(tiny(qk_norm=False).model)
    assert "q_norm" not in plain_params["layers"]["attention"]
    assert np.abs(plain_logits(scaled(plain_params, ("attention", "q"), 8.0)) - plain_logits(plain_params)).max() > 1e-2


@pytest.mark.parametrize("sublayer_output", [("attention", "o"), ("ffn", "down")])
def test_swin_norm_normalises_what_each_sublayer_adds(sublayer_output):
    """h = x + norm(f(x)): scaling f's output projection changes nothing; pre-norm h = x + f(norm(x)) it changes."""
    for swin_norm in (True, False):
        _, params, logits = init(tiny(swin_norm=swin_norm).model)
        difference = np.abs(logits(scaled(params, sublayer_output, 8.0)) - logits(params)).max()
        assert (difference < 1e-4) if swin_norm else (difference > 1e-2)


def test_dropout_acts_only_with_a_dropout_rng():
    model, params, logits = init(tiny(dropout=0.5).model)
    _, _, logits_without_dropout = init(tiny(dropout=0.0).model)
    without = logits(params)
    np.testing.assert_array_equal(without, logits_without_dropout(params))
    with_rng = jax.jit(lambda key: model.apply({"params": params}, TOKENS, rngs={"dropout": key}))
    first, again, other = with_rng(jax.random.key(1)), with_rng(jax.random.key(1)), with_rng(jax.random.key(2))
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - without).max() > 1e-3 and np.abs(first - other).max() > 1e-3


def test_z_loss_is_the_masked_mean_of_squared_log_normaliser():
    logits = jax.random.normal(jax.random.key(0), (2, 3, 7)) * 3
    mask = jnp.array([[1, 1, 0], [1, 0, 0]], jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    np.testing.assert_allclose(z_loss(logits, mask), (log_z[0, 0]**2 + log_z[0, 1]**2 + log_z[1, 0]**2) / 3,
                               rtol=1e-6)
    assert z_loss(logits.at[1, 2].add(100.0), mask) == z_loss(logits, mask)  # masked positions are ignored
    np.testing.assert_allclose(z_loss(logits - log_z[..., None], mask), 0.0, atol=1e-10)  # normalised logits
    grad = jax.grad(lambda z: z_loss(z, mask))(logits)
    assert jnp.all(jnp.sign(grad.sum(-1)) == jnp.sign(log_z) * mask)  # pushes log Z towards 0


def test_image_codes_map_to_token_ids_and_back():
    model_config = tiny().model
    ids = image_token_ids(model_config)
    np.testing.assert_array_equal(ids, 512 + np.arange(512))
    np.testing.assert_array_equal(codebook_index_of(model_config, ids), np.arange(512))
    others = jnp.array([0, 258, 509, model_config.begin_image_id, model_config.end_image_id])
    np.testing.assert_array_equal(codebook_index_of(model_config, others), [-1] * 5)
    assert not np.any(is_image_token(model_config, others))


BAD_OVERRIDES = [
    ({"dropout": 1.0}, "model.dropout"),
    ({"z_loss_weight": -1e-5}, "model.z_loss_weight"),
    ({"image_token_offset": 600}, "model.num_image_codes: image codes \\[600, 1112\\) do not fit"),
    ({"begin_image_id": 700}, "model.begin_image_id: 700 is an image code"),
    ({"end_image_id": 1024}, "model.end_image_id: 1024 is outside the vocabulary"),
    ({"end_image_id": 510}, "model.end_image_id: equals begin_image_id"),
    ({"image_seq_len": 16}, "model.image_seq_len: 16 differs from the tokenizer's 64"),
    ({"num_image_codes": 256}, "model.num_image_codes: 256 differs from the tokenizer's codebook of 512"),
    ({"image_tokenizer.norm_groups": 7}, "model.image_tokenizer.norm_groups"),
    ({"max_seq_len": 64}, "model.image_seq_len: an image takes 66 tokens, more than max_seq_len 64"),
    ({"num_kv_heads": 3}, "model.num_kv_heads"),
]


@pytest.mark.parametrize("overrides, message", BAD_OVERRIDES, ids=[m.split(":")[0] for _, m in BAD_OVERRIDES])
def test_bad_config_raises_naming_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny("train.seq_len=32", **overrides)



@pytest.mark.parametrize("variant, expected", [("7b", 7_013_666_816), ("34b", 34_294_308_864)])
def test_count_params_matches_the_published_shapes(variant, expected):
    """Decoder parameters of facebook/chameleon-7b and -30b (config.json shapes; the VQ tokenizer is
    counted apart, the Hub's 7.04B figure for chameleon-7b includes its encoder):

    7b:  2·65536·4096 + 32·(4·4096² + 3·4096·11008 + 2·4096 + 2·2·32·128) + 4096
    34b: 2·65536·8192 + 48·(2·8192² + 2·8192·1024 + 3·8192·22016 + 2·8192 + 2·(64 + 8)·128) + 8192
    """
    model_config = config_lib.load(f"configs/chameleon.py:{variant}").model
    assert count_params(model_config) == {"total": expected, "active": expected}
    dim, vocab, layers = model_config.dim, model_config.vocab_size, model_config.num_layers
    head_dim = dim // model_config.num_heads
    kv = model_config.num_kv_heads * head_dim
    per_layer = (2 * dim * dim + 2 * dim * kv + 3 * dim * model_config.hidden_dim + 2 * dim
                 + 2 * (model_config.num_heads + model_config.num_kv_heads) * head_dim)
    assert expected == 2 * vocab * dim + layers * per_layer + dim


def test_34b_reorders_norms_and_7b_drops_out():
    seven, thirty_four = (config_lib.load(f"configs/chameleon.py:{v}").model for v in ("7b", "34b"))
    assert (seven.swin_norm, seven.dropout, thirty_four.swin_norm, thirty_four.dropout) == (False, 0.1, True, 0.0)
    assert seven.qk_norm and thirty_four.qk_norm and seven.z_loss_weight == thirty_four.z_loss_weight == 1e-5
