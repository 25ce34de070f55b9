"""research/rl/losses.py: clipped policy and value losses (values and gradients where the clip binds and
where it does not), GSPO's sequence ratio, and Kimi k1.5's gradient against its closed form."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.rl import losses
from research.rl.log_probs import sequence_log_probs, token_log_probs
from research.rl.losses import clipped_policy_loss, clipped_value_loss, kimi_surrogate_loss
from research.rl.preference_losses import ranking_loss

# one row of five response tokens and a padding token: (ratio, advantage) per token
RATIOS = np.array([[1.5, 1.5, 0.5, 0.5, 1.0, 1.25, 9.0]], np.float32)
ADVANTAGES = np.array([[1.0, -1.0, -1.0, 1.0, 2.0, 1.0, np.nan]], np.float32)  # padding may hold anything
MASK = np.array([[1, 1, 1, 1, 1, 1, 0]], bool)
OLD_LOG_PROBS = np.log(np.array([[0.2, 0.3, 0.4, 0.5, 0.6, 0.1, 1.0]], np.float32))
OLD_LOG_PROBS[~MASK] = np.nan


def policy_loss(log_probs, clip_high=0.2, **kwargs):
    return clipped_policy_loss(log_probs, OLD_LOG_PROBS, ADVANTAGES, MASK, clip_low=0.2, clip_high=clip_high, **kwargs)


@pytest.mark.parametrize("clip_high", [0.2, 0.28])
def test_clipped_tokens_get_no_gradient_and_the_others_minus_ratio_times_advantage(clip_high):
    log_probs = OLD_LOG_PROBS + np.log(RATIOS)
    loss_fn = functools.partial(policy_loss, clip_high=clip_high, aggregation="token_mean")
    run = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    (loss, metrics), grad = run(log_probs)
    # per token −min(ρA, clip(ρ)A): 1.5·1 clipped to 1.2 (ε_high .2) or 1.28 (.28); 1.5·−1 kept; 0.5·−1 clipped
    # to −0.8; 0.5·1 kept; 1·2; 1.25·1 clipped to 1.2 under ε_high .2 only
    high = 1 + clip_high
    expected = -np.array([high, -1.5, -0.8, 0.5, 2.0, min(1.25, high)])
    np.testing.assert_allclose(loss, expected.mean(), rtol=1e-6)
    # d(−ρA)/d log π = −ρA where unclipped; 0 where the clip binds (and on the padding)
    expected_grad = np.where(MASK, -RATIOS * ADVANTAGES / 6, 0.0)
    expected_grad[np.array([[True, False, True, False, False, clip_high < 0.25, False]])] = 0.0
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(metrics["clip_fraction"], (2 + (clip_high < 0.25)) / 6, rtol=1e-6)
    k3 = RATIOS[MASK] - 1 - np.log(RATIOS[MASK])  # KL(π_old‖π_θ) from samples of π_old
    np.testing.assert_allclose(metrics["approx_kl"], k3.mean(), rtol=1e-5)


def test_gspo_clips_the_geometric_mean_ratio_of_each_sequence():
    rng = np.random.default_rng(0)
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], bool)
    old = rng.normal(size=mask.shape).astype(np.float32) - 2
    shift = np.array([[0.05, 0.1, -0.03, 7.0], [0.9, 0.7, 0.0, 0.0], [-0.02, 0.01, 0.0, 0.04]], np.float32)
    advantages = np.array([1.0, 1.0, -2.0], np.float32)  # sequence 2's s = e^0.8 > 1.2: clipped, A > 0
    run = functools.partial(clipped_policy_loss, aggregation="seq_mean_token_mean", ratio_level="sequence")
    (loss, _), grad = jax.jit(jax.value_and_grad(run, has_aux=True))(old + shift, old, advantages, mask)
    s = np.exp([shift[i][mask[i]].mean() for i in range(3)])
    np.testing.assert_allclose(loss, np.mean(-np.minimum(s * advantages, np.clip(s, 0.8, 1.2) * advantages)),
                               rtol=1e-5)
    lengths = mask.sum(1)
    expected_grad = np.where(mask, (-s * advantages / lengths / 3)[:, None], 0.0)
    expected_grad[1] = 0.0  # clipped
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-7)


def test_a_bad_ratio_level_is_refused():
    with pytest.raises(ValueError, match="ratio_level='word'"):
        policy_loss(OLD_LOG_PROBS, ratio_level="word")


def test_value_clipping_stops_the_gradient_only_where_the_clipped_error_is_larger():
    old_values = np.array([[0.0, 0.0, 0.0, np.inf]], np.float32)
    values = np.array([[1.0, 1.0, 0.1, 5.0]], np.float32)
    returns = np.array([[2.0, 0.0, 1.0, np.nan]], np.float32)  # padding may hold anything
    mask = np.array([[1, 1, 1, 0]], bool)

    def loss(v, clip):
        return clipped_value_loss(v, old_values, returns, mask, clip=clip)

    (clipped, metrics), grad = jax.value_and_grad(loss, has_aux=True)(values, 0.2)
    # token 0: V moved 1 > ε and (0.2 − 2)² > (1 − 2)²: the clipped term, constant in V; token 1: (1 − 0)² > 0.2²
    np.testing.assert_allclose(clipped, 0.5 * (1.8**2 + 1.0 + 0.9**2) / 3, rtol=1e-6)
    np.testing.assert_allclose(grad, [[0.0, 1.0 / 3, -0.9 / 3, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(metrics["clip_fraction"], 1 / 3, rtol=1e-6)
    (unclipped, metrics), grad = jax.value_and_grad(loss, has_aux=True)(values, None)
    np.testing.assert_allclose(unclipped, 0.5 * (1.0 + 1.0 + 0.9**2) / 3, rtol=1e-6)
    np.testing.assert_allclose(grad, [[-1.0 / 3, 1.0 / 3, -0.9 / 3, 0.0]], rtol=1e-6)
    assert metrics["clip_fraction"] == 0


def test_kimi_gradient_equals_the_papers_closed_form():
    """∇L = −2τ·(1/k)·Σ_j [(r_j − r̄)·∇log π(y_j) − (τ/2)·∇(log π(y_j)/π_old(y_j))²], through real logits."""
    rng = np.random.default_rng(3)
    num_samples, time, vocab, tau = 6, 4, 5, 0.3
    logits = jnp.asarray(rng.normal(size=(num_samples, time, vocab)), jnp.float32)
    tokens = jnp.asarray(rng.integers(0, vocab, size=(num_samples, time)))
    mask = jnp.asarray(rng.random((num_samples, time)) < 0.8).at[:, 0].set(True)
    old_log_probs = token_log_probs(logits + 0.3 * rng.normal(size=logits.shape), tokens)
    rewards = jnp.asarray(rng.random(num_samples), jnp.float32)
    mean_per_group = np.repeat(np.asarray(rewards).reshape(2, 3).mean(axis=1), 3)  # 2 prompts × k = 3 samples

    def surrogate(z):
        return kimi_surrogate_loss(token_log_probs(z, tokens), old_log_probs, rewards, mask, tau=tau, group_size=3)[0]

    def log_pi(z):  # log π_θ(y_j) of every sample
        return sequence_log_probs(token_log_probs(z, tokens), mask)

    def log_ratio_squared(z):
        return jnp.square(sequence_log_probs(token_log_probs(z, tokens) - old_log_probs, mask))

    grad_log_pi = jax.jit(jax.jacrev(log_pi))(logits)
    grad_ratio_squared = jax.jit(jax.jacrev(log_ratio_squared))(logits)
    advantage = (np.asarray(rewards) - mean_per_group)[:, None, None, None]
    closed_form = -2 * tau * np.mean(advantage * grad_log_pi - tau / 2 * grad_ratio_squared, axis=0)
    np.testing.assert_allclose(jax.jit(jax.grad(surrogate))(logits), closed_form, rtol=1e-4, atol=1e-6)
    assert np.abs(closed_form).max() > 1e-3  # not trivially zero


def test_kimi_surrogate_is_zero_at_the_old_policy_when_rewards_equal_their_group_mean():
    mask = jnp.ones((4, 3))
    log_probs = jnp.full((4, 3), -1.0)
    loss, metrics = kimi_surrogate_loss(log_probs, log_probs, jnp.array([1.0, 1.0, 0.0, 0.0]), mask, tau=0.5,
                                        group_size=2)
    assert loss == 0 and metrics["log_ratio"] == 0


def test_the_ranking_loss_is_importable_from_losses():
    assert losses.ranking_loss is ranking_loss
