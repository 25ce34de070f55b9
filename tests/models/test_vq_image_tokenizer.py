"""research/models/vq_image_tokenizer.py: straight-through gradients, the VQ losses, EMA and dead-code
updates, encode/decode shapes, the parameter tree and the errors for bad images and configs."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import config as config_lib
from research.models import abstract_params, make_model
from research.models import vq_image_tokenizer as vq

SMALL = {"model.base_channels": 8, "model.channel_multiplier": "(1, 2, 2)", "model.norm_groups": 4,
         "model.latent_channels": 8, "model.embed_dim": 4, "model.num_embeddings": 16}
CHAMELEON_VQVAE_PARAMETERS = 29_423_616  # transformers' ChameleonVQVAE (encoder, quant convs, codebook)


def small_config(**overrides):
    pairs = {**SMALL, **{k.replace("__", "."): v for k, v in overrides.items()}}
    return config_lib.load("configs/vq_image_tokenizer.py:tiny", [f"{k}={v}" for k, v in pairs.items()]).model


@pytest.fixture(scope="module")
def small():
    config = small_config()
    model = make_model(config)
    variables = jax.jit(model.init)(vq.init_key(jax.random.key(0)), jnp.zeros((1, 32, 32, 3)))
    images = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3), minval=-1, maxval=1)
    return config, model, variables, images


def test_the_reconstruction_gradient_reaches_the_encoder_straight_through_the_codebook(small):
    config, model, variables, images = small

    def reconstruction_error(params):
        return jnp.mean((model.apply({"params": params}, images)["reconstruction"] - images) ** 2)

    grads = jax.jit(jax.grad(reconstruction_error))(variables["params"])
    assert np.abs(grads["encoder"]["conv_in"]["kernel"]).sum() > 0
    assert np.abs(grads["quant_conv"]["kernel"]).sum() > 0
    np.testing.assert_array_equal(grads["quantize"]["embedding"], 0)  # z_q's gradient goes to z_e only


@pytest.mark.parametrize("codebook_loss", [True, False])
def test_vq_loss_is_codebook_plus_beta_commitment_with_their_gradients(codebook_loss):
    latents = jnp.array([[0.0, 0.0], [2.0, 1.0]])
    embedding = jnp.array([[0.0, 1.0], [2.0, 2.0]])
    beta = 0.25

    def loss(z, e):
        return vq.quantize(z, e, beta, codebook_loss=codebook_loss)[2]

    quantized, codes, value = vq.quantize(latents, embedding, beta, codebook_loss=codebook_loss)
    np.testing.assert_array_equal(codes, [0, 1])
    np.testing.assert_array_equal(quantized, embedding)
    distance = np.mean((np.asarray(latents) - np.asarray(embedding)) ** 2)  # (0 + 1 + 0 + 1) / 4
    np.testing.assert_allclose(value, (codebook_loss + beta) * distance, rtol=1e-6)
    grad_z, grad_e = jax.grad(loss, argnums=(0, 1))(latents, embedding)
    np.testing.assert_allclose(grad_z, beta * 2 * (latents - embedding) / latents.size, rtol=1e-6)
    np.testing.assert_allclose(grad_e, codebook_loss * 2 * (embedding - latents) / latents.size, rtol=1e-6)


def test_ema_update_on_a_hand_example():
    count, total = jnp.array([1.0, 1.0]), jnp.array([[0.0, 0.0], [2.0, 2.0]])
    latents, codes = jnp.array([[1.0, 0.0], [3.0, 3.0], [1.0, 2.0]]), jnp.array([0, 1, 0])
    count, total = vq.ema_statistics(count, total, latents, codes, decay=0.5)
    np.testing.assert_allclose(count, [0.5 + 0.5 * 2, 0.5 + 0.5 * 1])
    np.testing.assert_allclose(total, [[0.5 * 2, 0.5 * 2], [0.5 * 2 + 0.5 * 3, 0.5 * 2 + 0.5 * 3]])
    epsilon = 0.1
    smoothed = (np.array([1.5, 1.0]) + epsilon) / (2.5 + 2 * epsilon) * 2.5
    np.testing.assert_allclose(vq.ema_codebook(count, total, epsilon), np.asarray(total) / smoothed[:, None],
                               rtol=1e-6)


def test_an_ema_codebook_starts_from_its_values_and_steps_to_the_new_averages():
    config = small_config(model__codebook_update="ema", model__dead_code_steps=0)
    latents = jax.random.normal(jax.random.key(2), (2, 8, 8, config.embed_dim))
    variables = vq.VectorQuantizer(config).init(jax.random.key(0), latents)
    params, stats = variables["params"], variables[vq.CODEBOOK_STATS]
    np.testing.assert_array_equal(stats["ema_sum"], params["embedding"])
    np.testing.assert_array_equal(stats["ema_count"], 1)
    codes = vq.nearest_codes(latents, params["embedding"])
    updated, new_stats = vq.update_codebook(config, {"quantize": params}, {"quantize": stats}, latents, codes,
                                            jax.random.key(3))
    count, total = vq.ema_statistics(stats["ema_count"], stats["ema_sum"], latents, codes, config.ema_decay)
    np.testing.assert_allclose(new_stats["quantize"]["ema_count"], count)
    np.testing.assert_allclose(updated["quantize"]["embedding"], vq.ema_codebook(count, total, config.ema_epsilon))


def test_dead_code_restart_replaces_only_codes_unused_long_enough():
    embedding = jnp.arange(12.0).reshape(6, 2)
    unused = jnp.array([0, 5, 2, 7, 0, 5])
    latents = 100 + jax.random.normal(jax.random.key(0), (3, 2))
    restarted, counters, dead = vq.restart_dead_codes(embedding, unused, latents, jax.random.key(1), after_steps=5)
    np.testing.assert_array_equal(dead, [False, True, False, True, False, True])
    np.testing.assert_array_equal(restarted[~dead], embedding[~dead])
    for row in restarted[dead]:
        assert any(np.array_equal(row, latent) for latent in np.asarray(latents))
    np.testing.assert_array_equal(counters, [0, 0, 2, 0, 0, 0])


def test_update_codebook_counts_steps_unused_and_restarts_after_dead_code_steps():
    config = small_config(model__dead_code_steps=2)
    k = config.num_embeddings
    params = {"quantize": {"embedding": jnp.zeros((k, config.embed_dim))}}
    stats = {"quantize": {"unused_steps": jnp.zeros((k,), jnp.int32)}}
    latents = jnp.ones((1, 1, 2, config.embed_dim))
    codes = jnp.array([[[3, 5]]])
    params, stats = vq.update_codebook(config, params, stats, latents, codes, jax.random.key(0))
    expected = np.ones(k, np.int32)
    expected[[3, 5]] = 0
    np.testing.assert_array_equal(stats["quantize"]["unused_steps"], expected)
    np.testing.assert_array_equal(params["quantize"]["embedding"], 0)  # nothing dead after one step
    params, stats = vq.update_codebook(config, params, stats, latents, codes, jax.random.key(1))
    restarted = np.asarray(params["quantize"]["embedding"]).any(axis=1)
    np.testing.assert_array_equal(restarted, expected.astype(bool))  # codes 3 and 5 were used: kept
    np.testing.assert_array_equal(stats["quantize"]["unused_steps"], 0)


def test_codebook_usage_and_perplexity():
    counts = vq.code_counts(jnp.array([0, 0, 1, 1]), 4)
    metrics = vq.codebook_metrics(counts)
    np.testing.assert_allclose(metrics["codebook_usage"], 0.5)
    np.testing.assert_allclose(metrics["perplexity"], 2.0, rtol=1e-6)  # two codes equally often
    np.testing.assert_allclose(vq.codebook_metrics(vq.code_counts(jnp.zeros(5, jnp.int32), 4))["perplexity"], 1.0)


def test_encode_and_decode_shapes_and_ranges(small):
    config, _, variables, images = small
    codes = jax.jit(lambda p, x: vq.encode(config, p, x))(variables["params"], images)
    assert codes.shape == (2, 8, 8) and codes.dtype == jnp.int32
    assert 0 <= int(codes.min()) and int(codes.max()) < config.num_embeddings
    pixels = jax.jit(lambda p, c: vq.decode(config, p, c))(variables["params"], codes)
    assert pixels.shape == images.shape and float(jnp.abs(pixels).max()) <= 1.0


@pytest.mark.parametrize("shape", [(1, 16, 16, 3), (1, 32, 32, 1), (32, 32, 3)])
def test_an_image_of_the_wrong_size_or_channels_is_named(small, shape):
    config, _, variables, _ = small
    with pytest.raises(ValueError, match=rf"pixels of shape \({', '.join(map(str, shape))}\).*32, 32, 3"):
        vq.encode(config, variables["params"], jnp.zeros(shape))


def test_codes_of_the_wrong_grid_are_named(small):
    config, _, variables, _ = small
    with pytest.raises(ValueError, match=r"codes of shape \(1, 4, 4\).*\[batch, 8, 8\]"):
        vq.decode(config, variables["params"], jnp.zeros((1, 4, 4), jnp.int32))


def test_the_parameter_tree_follows_the_vqgan_layout(small):
    params = small[2]["params"]
    assert params["quantize"]["embedding"].shape == (16, 4)
    assert params["encoder"]["down_1"]["block_0"]["nin_shortcut"]["kernel"].shape == (1, 1, 8, 16)
    assert set(params["encoder"]["mid"]) == {"block_1", "attn_1", "block_2"}
    assert set(params["encoder"]["mid"]["attn_1"]) == {"norm", "q", "k", "v", "proj_out"}
    assert set(params["decoder"]["up_0"]) == {"block_0", "block_1"}  # num_res_blocks + 1, no upsampling
    assert "upsample" in params["decoder"]["up_2"] and "downsample" not in params["encoder"]["down_2"]


def test_the_chameleon_encoder_half_is_the_size_of_transformers_chameleon_vqvae():
    model_config = config_lib.load("configs/vq_image_tokenizer.py:chameleon").model
    flat = flax.traverse_util.flatten_dict(abstract_params(model_config), sep="/")
    encoder_half = sum(int(np.prod(leaf.shape)) for path, leaf in flat.items() if not path.startswith("decoder/"))
    assert encoder_half == CHAMELEON_VQVAE_PARAMETERS
    assert vq.latent_side(model_config) ** 2 == 1024


@pytest.mark.parametrize("override, message", [
    ("model.resolution=34", "model.resolution: 34 does not halve 2 times"),
    ("model.norm_groups=5", "model.norm_groups: 5 groups do not divide"),
    ("model.attn_resolutions=(12,)", r"model.attn_resolutions: \(12,\) holds resolutions"),
    ("model.codebook_update=kmeans", "model.codebook_update: 'kmeans' is not one of"),
])
def test_bad_model_fields_are_named(override, message):
    with pytest.raises(ValueError, match=message):
        config_lib.load("configs/vq_image_tokenizer.py:tiny", [override])
