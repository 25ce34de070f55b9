"""Chameleon (Chameleon Team, 2024): one early-fusion decoder over interleaved text and image tokens.

A learned VQ tokenizer (research/models/vq_image_tokenizer.py) turns a 512×512 image into
32×32 = 1024 indices of an 8192-entry codebook; the decoder reads and writes those as ordinary
tokens. It is the LLaMA decoder (research/models/llama.py) with Chameleon's stability switches:

    qk_norm     q, k ← LayerNorm over head_dim (gain and bias per head) before RoPE
    swin_norm   h = x + norm(attn(x));  out = h + norm(ffn(h))       (the 34B's norm reordering)
    dropout     residual dropout at that rate in training (0.1 for the 7B)

and a z-loss, z_loss_weight · mean log²Z with Z = Σ_v exp(z_v), that the trainer adds to the
next-token loss (`z_loss`).

Vocabulary. One id space [0, vocab_size) holds text ids, the image codes and two markers:
codebook index c is token id `image_token_offset + c` (c < num_image_codes), an image is
`begin_image_id, image_seq_len codes, end_image_id`, and every other id is text. Chameleon's own
BPE vocabulary of 65,536 puts the 8192 codes at ids 4..8195 ("IMGIMG…" entries of transformers'
`vocabulary_map`), begin-of-image "<racm3:break>" at 8197 and end-of-image "<eoss>" at 8196.

Image tokenizer. `config.model.image_tokenizer` is the VQ tokenizer's config (family
"vq_image_tokenizer"): its codebook is the image codes (num_embeddings = num_image_codes) and
its code grid an image's tokens (side² = image_seq_len). Its parameters sit beside the decoder's
under `params["image_tokenizer"]` where a checkpoint carries them (`load_hf_chameleon`): frozen,
never made by `init` nor read by the decoder (`image_tokens` reads them).
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from research.models import vq_image_tokenizer
from research.models.family import ModelFamily, require
from research.models.llama import Llama, init_tokens
from research.models.llama_checks import validate_context_parallel, validate_llama

IMAGE_TOKENIZER = "image_tokenizer"  # the VQ tokenizer's config field and parameter subtree
Z_LOSS_WEIGHT = 1e-5  # the paper's

VOCABULARY_FIELDS = ("image_token_offset", "num_image_codes", "begin_image_id", "end_image_id", "image_seq_len")


def image_token_ids(model_config) -> np.ndarray:
    """Token id of every codebook index: `[num_image_codes]` int32, id = image_token_offset + index."""
    return model_config.image_token_offset + np.arange(model_config.num_image_codes, dtype=np.int32)


def is_image_token(model_config, token_ids):
    """Whether each token id is an image code (the markers are not)."""
    offset = model_config.image_token_offset
    return (token_ids >= offset) & (token_ids < offset + model_config.num_image_codes)


def codebook_index_of(model_config, token_ids):
    """The codebook index of each image-code token id, −1 for every other id (text, markers)."""
    token_ids = jnp.asarray(token_ids)
    return jnp.where(is_image_token(model_config, token_ids), token_ids - model_config.image_token_offset, -1)


def image_tokens(model_config, params, pixels):
    """Token ids `[batch, image_seq_len]` of images `pixels [batch, H, W, 3]` in [-1, 1]: the VQ
    tokenizer's codes in row-major order of the code grid, each as its token id (no markers)."""
    if IMAGE_TOKENIZER not in model_config:
        raise ValueError(f"model_config has no {IMAGE_TOKENIZER} (the VQ tokenizer's config)")
    if IMAGE_TOKENIZER not in params:
        raise ValueError(f"params hold no {IMAGE_TOKENIZER!r} subtree; load_hf_chameleon returns it")
    codes = vq_image_tokenizer.encode(model_config.image_tokenizer, params[IMAGE_TOKENIZER], pixels)
    return model_config.image_token_offset + codes.reshape(codes.shape[0], -1)


def z_loss(logits, mask):
    """mean over positions with mask > 0 of log²Z, log Z = logsumexp(logits) over the vocabulary, in float32.

    Chameleon adds 1e-5 · this to the next-token loss: softmax is invariant to shifting every
    logit alike, so nothing else stops the logits drifting; the z-loss pulls log Z towards 0.
    logits `[..., vocab]`, mask `logits.shape[:-1]` (e.g. the targets' weights).
    """
    log_z = jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)
    mask = mask.astype(jnp.float32)
    return jnp.sum(mask * log_z**2) / jnp.maximum(jnp.sum(mask), 1.0)


def validate_vocabulary(model) -> None:
    """Image codes and markers inside [0, vocab_size), markers distinct and outside the codes, an image
    (its markers included) no longer than the context."""
    for field in VOCABULARY_FIELDS:
        require(model[field] >= 0, f"model.{field}", f"must be >= 0, got {model[field]}")
    for field in ("num_image_codes", "image_seq_len"):
        require(model[field] > 0, f"model.{field}", f"must be positive, got {model[field]}")
    last_code = model.image_token_offset + model.num_image_codes
    require(last_code <= model.vocab_size, "model.num_image_codes",
            f"image codes [{model.image_token_offset}, {last_code}) do not fit in vocab_size {model.vocab_size}")
    for field in ("begin_image_id", "end_image_id"):
        require(model[field] < model.vocab_size, f"model.{field}",
                f"{model[field]} is outside the vocabulary [0, {model.vocab_size})")
        require(not is_image_token(model, model[field]), f"model.{field}",
                f"{model[field]} is an image code id (codes are [{model.image_token_offset}, {last_code}))")
    require(model.begin_image_id != model.end_image_id, "model.end_image_id",
            f"equals begin_image_id {model.begin_image_id}")
    require(model.image_seq_len + 2 <= model.max_seq_len, "model.image_seq_len",
            f"an image takes {model.image_seq_len + 2} tokens, more than max_seq_len "
            f"{model.max_seq_len}")


def validate_image_tokenizer(model) -> None:
    """The VQ tokenizer's own fields (named `model.image_tokenizer.*`), and that its codebook and code
    grid are the vocabulary's image codes and an image's tokens."""
    tokenizer = model.image_tokenizer
    try:
        vq_image_tokenizer.validate(ml_collections.ConfigDict({"model": tokenizer}))
    except ValueError as error:
        raise ValueError(str(error).replace("config field model.", f"config field model.{IMAGE_TOKENIZER}.")) from None
    require(tokenizer.num_embeddings == model.num_image_codes, "model.num_image_codes",
            f"{model.num_image_codes} differs from the tokenizer's codebook of {tokenizer.num_embeddings}")
    grid = vq_image_tokenizer.latent_side(tokenizer) ** 2
    require(grid == model.image_seq_len, "model.image_seq_len",
            f"{model.image_seq_len} differs from the tokenizer's {grid} codes an image")


def validate_chameleon(model, seq_len: int) -> None:
    """The decoder's fields (LLaMA's), dropout, the z-loss weight, the vocabulary layout and the image tokenizer."""
    validate_llama(model, seq_len)
    require(0.0 <= model.dropout < 1.0, "model.dropout", f"must be in [0, 1), got {model.dropout}")
    require(model.z_loss_weight >= 0.0, "model.z_loss_weight", f"must be >= 0, got {model.z_loss_weight}")
    require(model.get("moe") is None, "model.moe", "Chameleon's decoder is dense")
    validate_vocabulary(model)
    if IMAGE_TOKENIZER in model:
        validate_image_tokenizer(model)


def validate_chameleon_experiment(config) -> None:
    """`config.model` of a Chameleon model against the experiment's sequence length and mesh."""
    validate_chameleon(config.model, config.train.seq_len)
    validate_context_parallel(config.model, config.train.seq_len, config.mesh)


FAMILY = ModelFamily(build=Llama, init_inputs=init_tokens, validate=validate_chameleon_experiment)
