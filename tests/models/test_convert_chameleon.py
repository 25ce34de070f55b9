"""Hugging Face ChameleonForConditionalGeneration interop, against transformers live: logits on text and
interleaved tokens, image tokens, exact round trips, checkpoints of another architecture refused.

The checkpoints are tiny random transformers models (every weight random, norms and the VQ encoder
included) written by `save_pretrained` into a temporary directory.
"""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
from flax import traverse_util
from safetensors.numpy import load_file
from transformers import ChameleonConfig, ChameleonForConditionalGeneration

from research.models import make_model
from research.models.chameleon import image_tokens
from research.models.convert import image_code_name, load_hf_chameleon, save_hf_chameleon, save_hf_llama

TEXT, BEGIN, END, OFFSET, CODES = 510, 510, 511, 512, 512  # ids 0..509 text, markers, codes 512..1023
VOCAB = OFFSET + CODES
IMAGE_SIDE = 16  # pixels; two VQ levels → an 8×8 grid of 64 codes


def vocabulary_map() -> dict[str, int]:
    names = {f"text{i}": i for i in range(TEXT)}
    return {**names, "<racm3:break>": BEGIN, "<eoss>": END, **{image_code_name(c): OFFSET + c for c in range(CODES)}}


def write_random_chameleon(directory, swin_norm: bool) -> ChameleonForConditionalGeneration:
    """A GQA Chameleon with attention in the VQ encoder's second level, all weights N(0, 0.3²), saved."""
    config = ChameleonConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        swin_norm=swin_norm, vocabulary_map=vocabulary_map(),
        vq_config=dict(embed_dim=16, num_embeddings=CODES, latent_channels=32, resolution=IMAGE_SIDE, base_channels=32,
                       channel_multiplier=[1, 2], num_res_blocks=1, attn_resolutions=[IMAGE_SIDE // 2]))
    torch.manual_seed(0)
    model = ChameleonForConditionalGeneration(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3)
    model.save_pretrained(directory)
    return model


def written_and_loaded(tmp_path_factory, swin_norm: bool):
    """(directory, transformers model, (model_config, params) loaded by load_hf_chameleon)."""
    directory = tmp_path_factory.mktemp("hf_chameleon")
    model = write_random_chameleon(directory, swin_norm)
    return directory, model, load_hf_chameleon(directory)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A pre-norm checkpoint, as chameleon-7b."""
    return written_and_loaded(tmp_path_factory, swin_norm=False)


@pytest.fixture(scope="module")
def swin_checkpoint(tmp_path_factory):
    """A checkpoint with norm reordering, as chameleon-30b."""
    return written_and_loaded(tmp_path_factory, swin_norm=True)


BOTH = pytest.mark.parametrize("which", ["checkpoint", "swin_checkpoint"])


def unmasked_logits(model, tokens: np.ndarray) -> np.ndarray:
    """transformers' logits with the image-code columns, which it sets to the float minimum, left out."""
    with torch.no_grad():
        logits = model(torch.tensor(tokens)).logits.numpy()
    return np.delete(logits, np.arange(OFFSET, VOCAB), axis=-1)


def our_unmasked_logits(model_config, params, tokens: np.ndarray) -> np.ndarray:
    model = make_model(model_config)
    logits = np.asarray(jax.jit(lambda p, t: model.apply({"params": p}, t))(params, jnp.asarray(tokens)))
    return np.delete(logits, np.arange(OFFSET, VOCAB), axis=-1)


def our_image_tokens(model_config, params, pixels: np.ndarray) -> np.ndarray:
    return np.asarray(jax.jit(lambda p, x: image_tokens(model_config, p, x))(params, jnp.asarray(pixels)))


def initial_params(model_config, tokens):
    model = make_model(model_config)
    return nn.meta.unbox(jax.jit(model.init)(jax.random.key(1), tokens)["params"])


def random_pixels(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (batch, IMAGE_SIDE, IMAGE_SIDE, 3)).astype(np.float32)


def transformers_image_tokens(model, pixels: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.get_image_tokens(torch.tensor(pixels).permute(0, 3, 1, 2)).numpy()


@BOTH
def test_config_places_the_image_vocabulary_and_the_switches(which, request):
    _, model, (model_config, _) = request.getfixturevalue(which)
    assert (model_config.image_token_offset, model_config.num_image_codes) == (OFFSET, CODES)
    assert (model_config.begin_image_id, model_config.end_image_id, model_config.image_seq_len) == (BEGIN, END, 64)
    assert model_config.qk_norm and model_config.swin_norm == model.config.swin_norm
    assert (model_config.num_kv_heads, model_config.rope_theta) == (2, 500.0)


@BOTH
def test_text_logits_match_transformers(which, request):
    _, model, (model_config, params) = request.getfixturevalue(which)
    tokens = np.random.default_rng(1).integers(0, TEXT, (2, 12))
    np.testing.assert_allclose(our_unmasked_logits(model_config, params, tokens), unmasked_logits(model, tokens),
                               atol=1e-4, rtol=1e-4)


def test_image_tokens_match_transformers(checkpoint):
    _, model, (model_config, params) = checkpoint
    pixels = random_pixels(2)
    ours = our_image_tokens(model_config, params, pixels)
    assert ours.shape == (2, 64) and len(np.unique(ours)) > 8
    np.testing.assert_array_equal(ours, transformers_image_tokens(model, pixels))


@BOTH
def test_interleaved_logits_match_transformers(which, request):
    """Text, an image (begin marker, its 64 codes, end marker), text."""
    _, model, (model_config, params) = request.getfixturevalue(which)
    codes = our_image_tokens(model_config, params, random_pixels(1, seed=3))[0]
    text = np.random.default_rng(2).integers(0, TEXT, 10)
    tokens = np.concatenate([text[:4], [BEGIN], codes, [END], text[4:]])[None]
    np.testing.assert_allclose(our_unmasked_logits(model_config, params, tokens), unmasked_logits(model, tokens),
                               atol=1e-4, rtol=1e-4)


def test_save_then_load_is_exact(checkpoint, tmp_path):
    directory, _, (model_config, params) = checkpoint
    save_hf_chameleon(model_config, params, tmp_path / "saved")
    reloaded_config, reloaded = load_hf_chameleon(tmp_path / "saved")
    assert reloaded_config.to_dict() == model_config.to_dict()
    flat, flat_reloaded = traverse_util.flatten_dict(params), traverse_util.flatten_dict(reloaded)
    assert flat.keys() == flat_reloaded.keys()
    for path in flat:
        np.testing.assert_array_equal(flat[path], flat_reloaded[path], err_msg=str(path))
    original, written = load_file(directory / "model.safetensors"), load_file(tmp_path / "saved" / "model.safetensors")
    assert original.keys() == written.keys()
    for name in original:
        np.testing.assert_array_equal(original[name], written[name], err_msg=name)


def test_our_random_params_load_in_transformers_with_our_logits(swin_checkpoint, tmp_path):
    """Fresh params of our own (perturbed, so no norm is at its initial value) through save_hf_chameleon."""
    _, _, (model_config, loaded) = swin_checkpoint
    decoder = initial_params(model_config, jnp.zeros((1, 4), jnp.int32))
    noise = iter(jax.random.split(jax.random.key(2), len(jax.tree.leaves(decoder))))
    decoder = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(next(noise), x.shape), decoder)
    params = {**decoder, "image_tokenizer": loaded["image_tokenizer"]}
    save_hf_chameleon(model_config, params, tmp_path / "ours")
    theirs = ChameleonForConditionalGeneration.from_pretrained(tmp_path / "ours").eval()
    batch = np.random.default_rng(4).integers(0, VOCAB, (2, 9))
    np.testing.assert_allclose(our_unmasked_logits(model_config, params, batch), unmasked_logits(theirs, batch),
                               atol=1e-4, rtol=1e-4)
    pixels = random_pixels(1, seed=5)
    np.testing.assert_array_equal(our_image_tokens(model_config, params, pixels), transformers_image_tokens(theirs, pixels))


def test_llama_checkpoint_is_refused_naming_its_architecture(tmp_path):
    llama_config = ml_collections.ConfigDict(dict(
        vocab_size=64, dim=16, num_layers=1, num_heads=2, num_kv_heads=2, hidden_dim=32, ffn_dim_multiplier=None,
        multiple_of=16, max_seq_len=32, norm_eps=1e-5, rope_theta=10000.0, dtype="float32", attention_impl="xla",
        remat="none", scan_layers=True))
    save_hf_llama(llama_config, initial_params(llama_config, jnp.zeros((1, 2), jnp.int32)), tmp_path / "llama")
    with pytest.raises(ValueError, match="architectures is \\['LlamaForCausalLM'\\], expected "
                                         "\\['ChameleonForConditionalGeneration'\\]"):
        load_hf_chameleon(tmp_path / "llama")


def edited_config(directory, tmp_path, edit):
    """A copy of the checkpoint with `edit` applied to its config.json; returns the copy's directory."""
    copy = tmp_path / "edited"
    copy.mkdir()
    (copy / "model.safetensors").write_bytes((directory / "model.safetensors").read_bytes())
    config = json.loads((directory / "config.json").read_text())
    edit(config)
    (copy / "config.json").write_text(json.dumps(config))
    return copy


BAD_CONFIGS = [
    (lambda c: c["vocabulary_map"].update({image_code_name(5): 3}), "image codes are not consecutive ids"),
    (lambda c: c["vocabulary_map"].pop("<eoss>"), "vocabulary_map has no '<eoss>'"),
    (lambda c: c.pop("vocabulary_map"), "no vocabulary_map"),
    (lambda c: c["vq_config"].update(num_embeddings=256), "model.num_image_codes: 512 differs from the tokenizer's"),
    (lambda c: c.update(model_type="llama"), "model_type is 'llama', expected 'chameleon'"),
]


@pytest.mark.parametrize("edit, message", BAD_CONFIGS, ids=[m for _, m in BAD_CONFIGS])
def test_bad_config_raises_naming_the_problem(checkpoint, tmp_path, edit, message):
    directory, _, _ = checkpoint
    with pytest.raises(ValueError, match=message):
        load_hf_chameleon(edited_config(directory, tmp_path, edit))
