"""research/train/chameleon_evaluators.py: greedy generation under the modality constraint, through `generate`,
never writes an image code (nor an id the text tokenizer lacks) in text nor a text id inside an image, and a
drawing is exactly one image."""

import flax.linen as nn
import jax
import numpy as np

from research import config as config_lib
from research.data.interleaved import prompt_ids
from research.data.scenes import scene
from research.data.tokenizer import ByteTokenizer
from research.models import make_model
from research.models.chameleon import image_token_ids, is_image_token
from research.train.chameleon_evaluators import completions, tokenizer_constraint

SHAPE = ["model.dim=32", "model.num_layers=2", "model.num_heads=4", "model.num_kv_heads=2", "model.hidden_dim=64"]
TEXT = ByteTokenizer(vocab_size=265)


def tiny_model():
    config = config_lib.load("configs/chameleon.py:tiny", SHAPE)
    model = make_model(config.model)
    params = nn.meta.unbox(model.init(jax.random.key(0), np.zeros((1, 8), np.int32))["params"])
    # the text tokenizer's logits 0, the image codes' and the unused ids' (265..509) random: unconstrained,
    # greedy decoding would write only codes and ids the tokenizer cannot decode
    tempting = np.r_[np.arange(TEXT.vocab_size, config.model.begin_image_id), image_token_ids(config.model)]
    head = np.zeros(params["lm_head"].shape, np.float32)
    head[:, tempting] = 3 * np.asarray(jax.random.normal(jax.random.key(1), (head.shape[0], len(tempting))))
    return config.model, model, {**params, "lm_head": head}


def test_text_completions_hold_no_image_code_and_drawings_are_one_whole_image():
    model_config, model, params = tiny_model()
    records = [scene("validation", index) for index in range(3)]
    image = model_config.image_token_offset + np.arange(64) % model_config.num_image_codes
    prompts = [prompt_ids("caption", record, image, TEXT, model_config) for record in records]
    texts = completions(model, params, prompts, max_new_tokens=12, eos_id=TEXT.eos_id,  # too few to open an image
                        constraint=tokenizer_constraint(model_config, TEXT))
    for ids in texts:
        assert len(ids) > 0 and (np.asarray(ids) < TEXT.vocab_size).all()  # no code, no marker, no unused id
    drawings = completions(model, params, [prompt_ids("draw", r, None, TEXT, model_config) for r in records],
                           max_new_tokens=model_config.image_seq_len + 1, eos_id=TEXT.eos_id,
                           constraint=tokenizer_constraint(model_config, TEXT, image_codes_written=0))
    for ids in drawings:
        ids = np.asarray(ids)
        assert len(ids) == model_config.image_seq_len + 1 and ids[-1] == model_config.end_image_id
        assert is_image_token(model_config, ids[:-1]).all()
