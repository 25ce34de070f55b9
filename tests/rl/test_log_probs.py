"""research/rl/log_probs.py: token log-probabilities, entropy and sequence sums against NumPy."""

import jax.numpy as jnp
import numpy as np

from research.rl.log_probs import entropy, sequence_log_probs, token_log_probs


def numpy_log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def test_token_log_probs_pick_the_sampled_token_of_the_log_softmax():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 7))
    tokens = rng.integers(0, 7, size=(2, 3))
    expected = np.take_along_axis(numpy_log_softmax(logits), tokens[..., None], axis=-1)[..., 0]
    result = token_log_probs(jnp.asarray(logits, jnp.bfloat16), jnp.asarray(tokens))
    assert result.dtype == jnp.float32
    np.testing.assert_allclose(result, expected, atol=0.05)  # bfloat16 logits: 3 significant digits
    np.testing.assert_allclose(token_log_probs(jnp.asarray(logits, jnp.float32), tokens), expected, rtol=1e-5)


def test_token_log_probs_are_finite_for_huge_logits():
    logits = jnp.array([[[1e4, 0.0, -1e4]]])
    np.testing.assert_allclose(token_log_probs(logits, jnp.array([[0]])), [[0.0]])
    np.testing.assert_allclose(token_log_probs(logits, jnp.array([[1]])), [[-1e4]])


def test_entropy_equals_minus_sum_p_log_p():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 9)) * 3
    log_p = numpy_log_softmax(logits)
    np.testing.assert_allclose(entropy(jnp.asarray(logits)), -(np.exp(log_p) * log_p).sum(-1), rtol=1e-5)
    np.testing.assert_allclose(entropy(jnp.zeros((1, 9))), [np.log(9)], rtol=1e-6)  # uniform: log V


def test_sequence_log_probs_sum_or_average_the_response_tokens():
    token_logps = jnp.array([[-1.0, -2.0, -4.0, -8.0], [-0.5, -1.5, jnp.nan, jnp.nan], [7.0, 7.0, 7.0, 7.0]])
    mask = jnp.array([[0, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_allclose(sequence_log_probs(token_logps, mask), [-6.0, -2.0, 0.0])
    np.testing.assert_allclose(sequence_log_probs(token_logps, mask, average=True), [-3.0, -1.0, 0.0])
