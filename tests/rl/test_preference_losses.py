"""research/rl/preference_losses.py: ranking with LLaMA 2 margins, DPO's loss and gradient, ORPO vs NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.rl.preference_losses import LLAMA2_MARGINS, dpo_loss, log1m_exp, margin_for, orpo_loss, ranking_loss


def minus_log_sigmoid(z):
    return np.log1p(np.exp(-np.asarray(z, np.float64)))


@pytest.mark.parametrize("table", ["small", "large"])
def test_ranking_loss_with_margin_equals_the_formula(table):
    chosen, rejected = jnp.array([2.0, 0.5, -1.0, 3.0]), jnp.array([1.0, 0.7, -4.0, 3.0])
    strengths = jnp.array([0, 1, 2, 3])
    margin = margin_for(strengths, LLAMA2_MARGINS[table])
    np.testing.assert_allclose(margin, LLAMA2_MARGINS[table], rtol=1e-6)
    expected = minus_log_sigmoid(np.asarray(chosen - rejected) - np.asarray(LLAMA2_MARGINS[table])).mean()
    np.testing.assert_allclose(jax.jit(ranking_loss)(chosen, rejected, margin), expected, rtol=1e-6)
    np.testing.assert_allclose(ranking_loss(chosen, rejected), minus_log_sigmoid(chosen - rejected).mean(), rtol=1e-6)


def test_llama2_margins_are_the_papers():
    assert LLAMA2_MARGINS["large"] == (3, 2, 1, 0)
    np.testing.assert_allclose(LLAMA2_MARGINS["small"], (1, 2 / 3, 1 / 3, 0))


def test_dpo_loss_gradient_and_metrics_on_hand_made_log_probs():
    beta = 0.1
    policy_chosen, policy_rejected = jnp.array([-1.0, -2.0]), jnp.array([-3.0, -1.0])
    ref_chosen, ref_rejected = jnp.array([-1.5, -2.0]), jnp.array([-2.5, -1.5])
    logits = np.array([0.1 * (0.5 - -0.5), 0.1 * (0.0 - 0.5)])  # β[(π_c − ref_c) − (π_r − ref_r)] = 0.1, −0.05

    def loss(chosen, rejected):
        return dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=beta)

    (value, metrics), (grad_chosen, grad_rejected) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
        policy_chosen, policy_rejected)
    np.testing.assert_allclose(value, minus_log_sigmoid(logits).mean(), rtol=1e-6)
    weight = 1 / (1 + np.exp(logits))  # σ(−z): d(−log σ(z))/dz = −σ(−z)
    np.testing.assert_allclose(grad_chosen, -beta * weight / 2, rtol=1e-5)
    np.testing.assert_allclose(grad_rejected, beta * weight / 2, rtol=1e-5)
    np.testing.assert_allclose(metrics["reward_accuracy"], 0.5)
    np.testing.assert_allclose(metrics["reward_margin"], logits.mean(), rtol=1e-6)
    np.testing.assert_allclose(metrics["chosen_reward"], 0.1 * (0.5 + 0.0) / 2, rtol=1e-6)
    np.testing.assert_allclose(metrics["rejected_reward"], 0.1 * (-0.5 + 0.5) / 2, atol=1e-7)


def test_orpo_equals_a_numpy_reference():
    rng = np.random.default_rng(0)
    chosen = -rng.random(5) * 3 - 1e-3
    rejected = -rng.random(5) * 3 - 1e-3
    nll = rng.random(5)
    log_odds = lambda lp: lp - np.log(1 - np.exp(lp))  # noqa: E731
    expected = nll.mean() + 0.25 * minus_log_sigmoid(log_odds(chosen) - log_odds(rejected)).mean()
    loss, metrics = orpo_loss(jnp.asarray(chosen), jnp.asarray(rejected), jnp.asarray(nll), lam=0.25)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["log_odds_ratio"], (log_odds(chosen) - log_odds(rejected)).mean(), rtol=1e-4)
    np.testing.assert_allclose(metrics["accuracy"], np.mean(log_odds(chosen) > log_odds(rejected)))


def test_log1m_exp_is_accurate_and_has_finite_gradients_at_both_ends():
    x = np.array([-1e-6, -1e-3, -0.5, -np.log(2), -1.0, -20.0, -80.0])
    np.testing.assert_allclose(log1m_exp(jnp.asarray(x, jnp.float32)), np.log(-np.expm1(x)), rtol=1e-5, atol=1e-30)
    grads = jax.jit(jax.vmap(jax.grad(log1m_exp)))(jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(grads, -np.exp(x) / -np.expm1(x), rtol=1e-4)  # d/dx log(1 − eˣ) = −eˣ/(1 − eˣ)
