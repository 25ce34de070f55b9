"""Per-token estimators of KL(π_θ ‖ π_ref) from the log-probabilities of tokens sampled from π_θ.

With ρ = log π_θ(y) − log π_ref(y) for y ~ π_θ (Schulman, "Approximating KL divergence", 2020):

    k1 = ρ                          unbiased; negative for some samples, high variance
    k2 = ½·ρ²                       biased (exact to second order in ρ), ≥ 0, low variance
    k3 = e^{−ρ} − 1 + ρ             unbiased (E[π_ref/π_θ] = 1) and ≥ 0 (eˣ ≥ 1 + x); GRPO's penalty

k3 is computed as expm1(−ρ) + ρ, and for |ρ| < SERIES_BELOW as its Taylor series ρ²·(1/2 − ρ/6 + ρ²/24 − ρ³/120):
there the first-order terms cancel, and float32 would round ≈ ρ²/2 to 0. As a loss term its gradient is not that
of the KL (trl #4967): E[∇k3] = E[(1 − e^{−ρ})∇ρ] is the gradient of KL(π_ref ‖ π_θ), the reverse
direction; k1 folded into the reward (`research.rl.rewards.kl_penalised_rewards`) keeps the
gradient of KL(π_θ ‖ π_ref).
"""

import jax.numpy as jnp

KL_ESTIMATORS = ("k1", "k2", "k3")
SERIES_BELOW = 0.1  # k3's relative error: series ≤ ρ⁴/360 ≈ 3e-7 below, expm1(−ρ) + ρ a few 1e-6 above


def kl_estimate(log_probs, ref_log_probs, *, estimator: str = "k3"):
    """The `estimator` ("k1", "k2" or "k3", a static name) of KL(π_θ‖π_ref) per token, float32 of
    the inputs' shape: log_probs = log π_θ(y), ref_log_probs = log π_ref(y), y sampled from π_θ."""
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"estimator={estimator!r} is not one of {KL_ESTIMATORS}")
    log_ratio = log_probs.astype(jnp.float32) - ref_log_probs.astype(jnp.float32)
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio * log_ratio
    series = log_ratio * log_ratio * (0.5 - log_ratio * (1 / 6 - log_ratio * (1 / 24 - log_ratio / 120)))
    return jnp.where(jnp.abs(log_ratio) < SERIES_BELOW, series, jnp.expm1(-log_ratio) + log_ratio)
