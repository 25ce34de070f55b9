"""A tiny random LLaMA over the byte vocabulary (265 ids padded to 272), shared by the tests here."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from research import config as config_lib
from research.data.tokenizer import ByteTokenizer
from research.models import make_model

TINY = ["model.num_layers=1", "model.vocab_size=272", "data.tokenizer=byte", "model.dim=32", "model.num_heads=2",
        "model.num_kv_heads=1", "model.hidden_dim=64", "model.max_seq_len=640"]


@pytest.fixture(scope="session")
def random_model():
    model = make_model(config_lib.load("configs/llama2.py:tiny", TINY).model)
    params = nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
    return model, params


@pytest.fixture(scope="session")
def byte_tokenizer():
    return ByteTokenizer(vocab_size=272)
