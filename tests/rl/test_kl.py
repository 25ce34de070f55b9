"""research/rl/kl.py: the three estimators' definitions, k3 ≥ 0, and (un)biasedness by exact enumeration."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.rl.kl import kl_estimate


def categoricals(seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(2, 6))
    probs = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
    return probs[0], probs[1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_k1_and_k3_are_unbiased_over_samples_from_the_policy(seed):
    policy, reference = categoricals(seed)
    exact_kl = np.sum(policy * np.log(policy / reference))
    log_p, log_ref = jnp.log(policy), jnp.log(reference)
    for estimator in ("k1", "k3"):
        expectation = np.sum(policy * np.asarray(kl_estimate(log_p, log_ref, estimator=estimator), np.float64))
        np.testing.assert_allclose(expectation, exact_kl, rtol=1e-4, err_msg=estimator)
    k2 = np.sum(policy * np.asarray(kl_estimate(log_p, log_ref, estimator="k2"), np.float64))
    assert k2 > 0 and abs(k2 - exact_kl) > 1e-5 * exact_kl  # biased, though close for nearby distributions


def test_estimators_match_their_formulas_and_k2_k3_are_never_negative():
    log_ratio = np.array([-30.0, -3.0, -0.3, -0.1, -1e-2, -1e-4, -1e-7, 0.0, 1e-4, 1e-2, 0.0999, 0.1, 2.0, 20.0],
                         np.float32)
    log_ref = np.zeros_like(log_ratio)
    run = jax.jit(kl_estimate, static_argnames="estimator")
    np.testing.assert_allclose(run(log_ratio, log_ref, estimator="k1"), log_ratio)
    np.testing.assert_allclose(run(log_ratio, log_ref, estimator="k2"), 0.5 * log_ratio**2)
    k3 = np.asarray(run(log_ratio, log_ref, estimator="k3"))
    exact = np.expm1(-log_ratio.astype(np.float64)) + log_ratio  # float64 keeps ρ²/2 down to |ρ| ~ 1e-7
    np.testing.assert_allclose(k3, exact, rtol=1e-5)
    assert np.all(k3 >= 0) and k3[log_ratio == 0] == 0
    assert np.all(k3[log_ratio != 0] > 0)  # down to ρ²/2 = 5e-15, which exp(−ρ) − 1 + ρ rounds to 0


def test_an_unknown_estimator_is_refused():
    with pytest.raises(ValueError, match="estimator='k4'"):
        kl_estimate(jnp.zeros(2), jnp.zeros(2), estimator="k4")
