"""research/rl/rollout.py: responses as `generate` samples them, masks, and their log-probabilities."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import config as config_lib
from research.decoding.sampling import generate, pad_prompts
from research.models import make_model
from research.rl.rollout import response_mask_of, rollout

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12], [13]]
STOP = 40


@pytest.fixture(scope="module")
def model_and_params():
    overrides = ["model.num_layers=1", "model.vocab_size=48", "data.tokenizer=sentencepiece", "model.dim=32",
                 "model.num_heads=2", "model.num_kv_heads=1", "model.hidden_dim=64"]
    model = make_model(config_lib.load("configs/llama2.py:tiny", [*overrides, "data.vocab_size=48"]).model)
    init = lambda seed: nn.meta.unbox(model.init(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32))["params"])
    return model, init(0), init(1)


def sampled(model, params, reference, prompts=PROMPTS, temperature=1.0, max_new_tokens=6, rng=jax.random.key(3)):
    tokens, lengths = pad_prompts(prompts, 0, model.config.vocab_size)
    run = jax.jit(lambda p, r, t, n, k: rollout(model, p, t, n, k, max_new_tokens=max_new_tokens,
                                                temperature=temperature, stop_ids=(STOP,), reference_params=r))
    return run(params, reference, jnp.asarray(tokens), jnp.asarray(lengths), rng), lengths


def test_tokens_are_what_generate_samples(model_and_params):
    model, params, reference = model_and_params
    result, _ = sampled(model, params, reference)
    expected = generate(model, params, PROMPTS, max_new_tokens=6, temperature=1.0, rng=jax.random.key(3),
                        eos_id=STOP)
    np.testing.assert_array_equal(result.tokens, expected)


def test_log_probs_score_each_response_token_by_the_logits_before_it(model_and_params):
    model, params, reference = model_and_params
    result, lengths = sampled(model, params, reference, temperature=0.7)
    tokens, mask = np.asarray(result.tokens), np.asarray(result.response_mask)
    for weights, log_probs in ((params, result.log_probs), (reference, result.ref_log_probs)):
        logits = np.asarray(model.apply({"params": weights}, jnp.asarray(tokens)), np.float64) / 0.7
        log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        for row, t in zip(*np.nonzero(mask)):
            assert float(log_probs[row, t]) == pytest.approx(log_softmax[row, t - 1, tokens[row, t]], abs=1e-5)
        assert np.all(np.asarray(log_probs)[~mask] == 0)
    assert mask.sum(axis=1).min() >= 1 and not np.any(mask[np.arange(3), lengths - 1])


def test_the_mask_ends_at_the_first_stop_id_and_truncation_is_flagged():
    tokens = jnp.array([[1, 2, 9, STOP, 9, STOP, 0],
                        [1, 2, 3, 9, 9, 9, 9],
                        [1, STOP, 0, 0, 0, 0, 0]])
    mask, truncated = response_mask_of(tokens, jnp.array([2, 3, 1]), max_new_tokens=4, stop_ids=(STOP,))
    np.testing.assert_array_equal(mask, [[0, 0, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1, 1], [0, 1, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(truncated, [False, True, False])
