"""research/rl/advantages.py: GAE against its definition, group advantages by hand, masked statistics."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.rl.advantages import gae, group_advantages, masked_mean, masked_var, masked_whiten

# prompt then response then padding; two episodes in one row; no response at all; response only
MASK = np.array([[0, 0, 1, 1, 1, 0, 0],
                 [1, 1, 0, 1, 1, 1, 0],
                 [0, 0, 0, 0, 0, 0, 0],
                 [1, 1, 1, 1, 1, 1, 1]], bool)


def episodes(mask_row):
    """(first, last) index of every run of 1s in a row of the mask."""
    runs, start = [], None
    for t, real in enumerate(list(mask_row) + [False]):
        if real and start is None:
            start = t
        if not real and start is not None:
            runs.append((start, t - 1))
            start = None
    return runs


def gae_by_definition(rewards, values, mask, gamma, lam):
    """A_t = Σ_k (γλ)^k δ_{t+k} over the rest of t's episode, δ_t = r_t + γV_{t+1} − V_t, V past the end 0."""
    advantages = np.zeros(rewards.shape)
    for b in range(rewards.shape[0]):
        for first, last in episodes(mask[b]):
            next_values = [values[b, t + 1] if t < last else 0.0 for t in range(first, last + 1)]
            deltas = [rewards[b, t] + gamma * v - values[b, t] for t, v in zip(range(first, last + 1), next_values)]
            for t in range(first, last + 1):
                advantages[b, t] = sum((gamma * lam) ** k * deltas[t - first + k] for k in range(last - t + 1))
    return advantages, (advantages + values) * mask


def garbage_outside(x, mask):
    """x with NaN and huge numbers where the mask is 0: what padding may hold."""
    junk = np.where(np.arange(x.size).reshape(x.shape) % 2, np.nan, 1e30)
    return np.where(mask, x, junk).astype(np.float32)


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 0.0)])
def test_gae_equals_the_sum_of_discounted_deltas_per_episode(gamma, lam):
    rng = np.random.default_rng(0)
    rewards, values = rng.normal(size=(2,) + MASK.shape)
    expected_advantages, expected_returns = gae_by_definition(rewards, values, MASK, gamma, lam)
    run = jax.jit(functools.partial(gae, gamma=gamma, lam=lam))
    advantages, returns = run(garbage_outside(rewards, MASK), garbage_outside(values, MASK), jnp.asarray(MASK))
    np.testing.assert_allclose(advantages, expected_advantages, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(returns, expected_returns, rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(advantages)[~MASK] == 0) and np.all(np.asarray(returns)[~MASK] == 0)


def test_gae_with_lambda_one_returns_the_discounted_reward_to_go():
    rewards = np.array([[0.0, 1.0, 2.0, 3.0, 9.0]], np.float32)
    mask = np.array([[0, 1, 1, 1, 0]], bool)
    values = np.array([[5.0, 0.3, -0.7, 0.2, 4.0]], np.float32)
    _, returns = gae(rewards, values, mask, gamma=0.5, lam=1.0)
    np.testing.assert_allclose(returns, [[0.0, 1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0, 0.0]], rtol=1e-6)


def test_gae_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"rewards, values and mask of one shape"):
        gae(jnp.zeros((2, 3)), jnp.zeros((2, 4)), jnp.ones((2, 3)), gamma=1.0, lam=1.0)


def test_group_advantages_by_hand():
    rewards = jnp.array([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0, 0.0, 3.0, 0.0, 1.0])
    sample_std = np.sqrt((4 * 0.5**2) / 3)  # group 1: mean 0.5, each reward 0.5 away, n − 1 = 3
    expected_first = np.array([0.5, -0.5, -0.5, 0.5]) / (sample_std + 1e-3)
    third_std = np.sqrt(((0 - 1) ** 2 + (3 - 1) ** 2 + (0 - 1) ** 2 + (1 - 1) ** 2) / 3)
    expected_third = np.array([-1.0, 2.0, -1.0, 0.0]) / (third_std + 1e-3)  # rewards 0, 3, 0, 1: mean 1
    advantages = jax.jit(group_advantages, static_argnums=1)(rewards, 4)
    np.testing.assert_allclose(advantages, np.concatenate([expected_first, np.zeros(4), expected_third]), rtol=1e-6)


def test_group_advantages_without_std_are_centred_rewards():
    advantages = group_advantages(jnp.array([1.0, 0.0, 0.0, 4.0, 2.0, 0.0]), 3, scale_by_std=False)
    np.testing.assert_allclose(advantages, [2 / 3, -1 / 3, -1 / 3, 2.0, 0.0, -2.0], rtol=1e-6)


def test_a_group_with_almost_equal_rewards_is_bounded_by_the_floor():
    advantages = group_advantages(jnp.array([1.0, 1.0 + 1e-6]), 2, std_floor=1e-3)
    assert np.all(np.abs(np.asarray(advantages)) < 1e-3)


def test_group_size_one_gives_zero_advantages():
    np.testing.assert_array_equal(group_advantages(jnp.array([3.0, -1.0, 7.0]), 1), np.zeros(3))


@pytest.mark.parametrize("group_size", [3, 0])
def test_group_advantages_reject_a_bad_group_size(group_size):
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(jnp.zeros(8), group_size)


def test_masked_mean_and_var_equal_numpy_over_the_selected_entries():
    rng = np.random.default_rng(1)
    x = rng.normal(size=MASK.shape).astype(np.float32)
    padded = garbage_outside(x, MASK)
    np.testing.assert_allclose(masked_mean(padded, MASK), x[MASK].mean(), rtol=1e-5)
    np.testing.assert_allclose(masked_var(padded, MASK), x[MASK].var(), rtol=1e-5)
    np.testing.assert_allclose(masked_var(padded, MASK, unbiased=True), x[MASK].var(ddof=1), rtol=1e-5)
    rows = [MASK[b].any() for b in range(len(MASK))]
    np.testing.assert_allclose(np.asarray(masked_mean(padded, MASK, axis=1))[rows],
                               [x[b][MASK[b]].mean() for b in range(len(MASK)) if rows[b]], rtol=1e-5)
    assert masked_mean(padded, MASK, axis=1)[2] == 0  # the row without response tokens


@pytest.mark.parametrize("shift_mean", [True, False])
def test_masked_whiten_standardises_the_selected_entries(shift_mean):
    rng = np.random.default_rng(2)
    x = (3.0 + 2.0 * rng.normal(size=MASK.shape)).astype(np.float32)
    whitened = np.asarray(masked_whiten(garbage_outside(x, MASK), MASK, shift_mean=shift_mean))
    selected = x[MASK]
    expected = (selected - selected.mean()) / selected.std() + (0.0 if shift_mean else selected.mean())
    np.testing.assert_allclose(whitened[MASK], expected, rtol=1e-4, atol=1e-5)
    assert np.all(whitened[~MASK] == 0)
