"""research/decoding/speculative_verify.py: the accept-or-correct step keeps p exactly; greedy is argmax."""

import jax
import jax.numpy as jnp
import numpy as np

from research.decoding.speculative_verify import (overlap, residual_distribution, token_probabilities,
                                                  verify_proposals)


def random_distributions(seed, shape):
    return jax.nn.softmax(3 * jax.random.normal(jax.random.key(seed), shape), axis=-1)


def test_accepting_or_correcting_gives_p_exactly():
    """P(x) = q(x)·min(1, p(x)/q(x)) + (1 − β)·norm(max(0, p − q))(x) = p(x), for any p and q."""
    p, q = np.asarray(random_distributions(0, (64, 10))), np.asarray(random_distributions(1, (64, 10)))
    residual = np.asarray(jax.jit(residual_distribution)(p, q))
    accepted_mass = q * np.minimum(1.0, p / q)
    corrected = (1 - np.asarray(overlap(p, q)))[:, None] * residual
    np.testing.assert_allclose(accepted_mass + corrected, p, atol=1e-6)
    np.testing.assert_allclose(residual.sum(-1), 1.0, rtol=1e-6)
    assert (residual[p <= q] == 0).all()
    np.testing.assert_array_equal(jax.jit(residual_distribution)(p, p), p)  # nothing to correct: p itself


def test_greedy_accepts_the_agreeing_prefix_and_corrects_to_the_targets_argmax():
    target_choice = jnp.array([[1, 2, 3, 4], [1, 0, 3, 4], [0, 2, 3, 4]])  # γ + 1 = 4 positions
    proposals = jnp.array([[1, 2, 3], [1, 2, 3], [1, 2, 3]])
    one_hot = lambda ids: token_probabilities(jax.nn.one_hot(ids, 6), temperature=0.0, top_k=None, top_p=None)
    accepted, next_token = jax.jit(verify_proposals)(jax.random.key(0), proposals, one_hot(target_choice),
                                                     one_hot(proposals))
    np.testing.assert_array_equal(accepted, [3, 1, 0])
    np.testing.assert_array_equal(next_token, [4, 0, 0])  # the bonus, then the target's argmax at the rejection


def test_token_probabilities_are_what_sampling_draws_from():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    np.testing.assert_array_equal(token_probabilities(logits, temperature=0.0, top_k=None, top_p=None),
                                  [[1, 0, 0, 0]])
    np.testing.assert_allclose(token_probabilities(logits, temperature=1.0, top_k=2, top_p=None),
                               [[0.625, 0.375, 0, 0]], rtol=1e-6)
