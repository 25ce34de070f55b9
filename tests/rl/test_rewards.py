"""research/rl/rewards.py: the reward-shaping tables of DAPO, Kimi k1.5 and LLaMA 2, by hand."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.rl.rewards import (clip_reward, kimi_length_reward, kl_penalised_rewards, length_reward_weight,
                                 llama2_gated_reward, logit_whiten, overlong_filter_mask, soft_overlong_punishment)


def test_soft_overlong_punishment_table():
    # L_max 20, L_cache 4: free up to 16, then −1/4 per token, −1 past 20
    lengths = jnp.array([0, 16, 17, 18, 19, 20, 21, 100])
    run = jax.jit(functools.partial(soft_overlong_punishment, max_length=20, cache_length=4))
    np.testing.assert_allclose(run(lengths), [0, 0, -0.25, -0.5, -0.75, -1, -1, -1])


@pytest.mark.parametrize("max_length, cache_length", [(20, 0), (20, 21)])
def test_soft_overlong_punishment_refuses_a_bad_cache(max_length, cache_length):
    with pytest.raises(ValueError, match="cache_length"):
        soft_overlong_punishment(jnp.zeros(2), max_length=max_length, cache_length=cache_length)


def test_overlong_filter_zeroes_the_rows_of_truncated_responses():
    mask = jnp.array([[0, 1, 1], [1, 1, 1], [0, 0, 1]], jnp.float32)
    filtered = overlong_filter_mask(mask, jnp.array([False, True, False]))
    np.testing.assert_array_equal(filtered, [[0, 1, 1], [0, 0, 0], [0, 0, 1]])
    assert filtered.dtype == mask.dtype


def test_kimi_length_reward_table():
    lengths = jnp.array([10, 20, 30, 10, 7, 7, 7, 7, 5, 9, 8, 6])
    correct = jnp.array([True, False, True, False, True, False, True, True, False, True, False, True])
    # group 1: λ = 0.5, 0, −0.5, 0.5; wrong answers keep only a penalty: min(0, λ)
    # group 2: equal lengths → 0; group 3: min 5, max 9: λ = 0.5, −0.5, −0.25, 0.25
    expected = [0.5, 0.0, -0.5, 0.0, 0, 0, 0, 0, 0.0, -0.5, -0.25, 0.25]
    np.testing.assert_allclose(jax.jit(kimi_length_reward, static_argnums=2)(lengths, correct, 4), expected, atol=1e-6)


def test_kimi_length_reward_refuses_a_partial_group():
    with pytest.raises(ValueError, match="group_size=4"):
        kimi_length_reward(jnp.zeros(6), jnp.zeros(6, bool), 4)


def test_length_reward_is_off_during_warm_up_then_constant():
    steps = jnp.array([0, 9, 10, 500])
    np.testing.assert_allclose(length_reward_weight(steps, warmup_steps=10, weight=0.3), [0, 0, 0.3, 0.3])


def test_llama2_uses_the_safety_score_for_unsafe_prompts_or_below_the_threshold():
    safety = jnp.array([0.1, 0.5, 0.9, 0.14, 0.15])
    helpfulness = jnp.array([0.7, 0.6, 0.2, 0.8, 0.3])
    unsafe = jnp.array([False, True, False, False, False])
    np.testing.assert_allclose(llama2_gated_reward(safety, helpfulness, unsafe), [0.1, 0.5, 0.2, 0.14, 0.3])


def test_logit_whitening_undoes_the_sigmoid_then_standardises():
    scores = np.array([0.1, 0.5, 0.9, 0.99, 0.3], np.float32)
    logits = np.log(scores / (1 - scores))
    np.testing.assert_allclose(logit_whiten(jnp.asarray(scores)), (logits - logits.mean()) / logits.std(), rtol=1e-4)
    assert np.isfinite(np.asarray(logit_whiten(jnp.array([0.0, 1.0, 0.5])))).all()  # saturated heads


def test_kl_penalty_on_every_response_token_and_the_reward_on_the_last():
    kl = jnp.array([[0.1, 0.2, 0.3, 0.4], [0.1, -0.2, 0.3, 0.4], [1.0, 1.0, 1.0, 1.0]])
    mask = jnp.array([[0, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    rewards = kl_penalised_rewards(jnp.array([5.0, -1.0, 3.0]), kl, mask, beta=0.5)
    np.testing.assert_allclose(rewards, [[0, -0.1, -0.15 + 5, 0], [-0.05, 0.1, -0.15, -0.2 - 1], [0, 0, 0, 0]],
                               rtol=1e-6)


def test_clip_reward():
    np.testing.assert_allclose(clip_reward(jnp.array([-20.0, -3.0, 0.5, 12.0]), 10.0), [-10, -3, 0.5, 10])
