"""attention_impl="ring": the decoder split over a `context` mesh axis equals the unsplit decoder."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from research import config as config_lib
from research.models import make_model
from research.parallel.mesh import make_mesh
from research.train.losses import weighted_nll_sum

SMALL = {"model.num_layers": 2, "model.vocab_size": 300, "data.tokenizer": "byte", "model.dim": 32,
         "model.num_heads": 4, "model.num_kv_heads": 2, "model.hidden_dim": 48, "train.seq_len": 32}


def model_config(impl):
    return config_lib.load("configs/llama2.py:tiny", [f"{k}={v}" for k, v in
                                                      {**SMALL, "model.attention_impl": impl}.items()]).model


def context_mesh(data, context):
    return make_mesh(ml_collections.ConfigDict(dict(data=data, fsdp=1, tensor=1, expert=1, context=context)),
                     jax.devices()[:data * context])


def packed_batch(seed=0, batch=2, seq=32):
    tokens = jax.random.randint(jax.random.key(seed), (batch, seq + 1), 3, 300)
    segment_ids = jnp.where(jnp.arange(seq) < 11, 1, 2)[None].repeat(batch, 0)
    positions = jnp.where(segment_ids == 1, jnp.arange(seq), jnp.arange(seq) - 11)
    return tokens[:, :-1], tokens[:, 1:], positions, segment_ids


def loss_fn(model):
    def loss(params, inputs, targets, positions, segment_ids):
        logits = model.apply({"params": params}, inputs, positions=positions, segment_ids=segment_ids)
        nll, weight = weighted_nll_sum(logits, targets, jnp.ones_like(targets))
        return nll / weight, logits
    return jax.jit(jax.value_and_grad(loss, has_aux=True))


@pytest.mark.parametrize("data, context", [(2, 4), (1, 8)])
def test_ring_attention_model_equals_the_unsplit_model_in_logits_and_gradients(data, context):
    reference_model = make_model(model_config("xla"))
    inputs = packed_batch()
    params = nn.meta.unbox(reference_model.init(jax.random.key(0), inputs[0])["params"])
    (loss, logits), grads = loss_fn(reference_model)(params, *inputs)
    ring_model = make_model(model_config("ring"), context_mesh(data, context))
    (ring_loss, ring_logits), ring_grads = loss_fn(ring_model)(params, *inputs)
    np.testing.assert_allclose(ring_logits, logits, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(ring_loss, loss, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), ring_grads, grads)


def test_ring_without_a_context_axis_is_flash_attention():
    inputs = packed_batch(seed=1)
    pallas_model, ring_model = make_model(model_config("pallas")), make_model(model_config("ring"))
    params = nn.meta.unbox(pallas_model.init(jax.random.key(0), inputs[0])["params"])
    np.testing.assert_array_equal(loss_fn(ring_model)(params, *inputs)[0][1],
                                  loss_fn(pallas_model)(params, *inputs)[0][1])


def test_config_rejects_a_sequence_that_does_not_cut_into_zigzag_chunks():
    with pytest.raises(ValueError, match="train.seq_len: 36 is not divisible by 2 × mesh.context = 8"):
        config_lib.load("configs/llama2.py:tiny", ["model.attention_impl=ring", "mesh.context=4",
                                                   "train.seq_len=36"])
