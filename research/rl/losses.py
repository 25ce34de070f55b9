"""Policy and value losses of on-policy post-training: PPO / GRPO / DAPO / GSPO clipping, PPO-max value
clipping, and Kimi k1.5's squared surrogate. Each returns `(loss, metrics)`, metrics a dict of scalars.

Inputs are per-token `[batch, time]`: log_probs = log π_θ(y_t) (differentiated), old_log_probs =
log π_old(y_t) of the policy that sampled the batch (constants), mask 1 on response tokens. What sits
at mask-0 positions never reaches a loss, its gradient or a metric.

The preference losses (reward-model ranking, DPO, ORPO) live in research/rl/preference_losses.py;
`ranking_loss` is also importable from here, beside the losses of the RLHF loop it trains for.
"""

import jax.numpy as jnp

from research.rl.advantages import group_advantages, masked_mean
from research.rl.aggregation import aggregate
from research.rl.kl import kl_estimate
from research.rl.log_probs import sequence_log_probs
from research.rl.preference_losses import ranking_loss

__all__ = ["RATIO_LEVELS", "clipped_policy_loss", "clipped_value_loss", "kimi_surrogate_loss", "ranking_loss"]

RATIO_LEVELS = ("token", "sequence")


def clipped_policy_loss(log_probs, old_log_probs, advantages, mask, *, clip_low: float = 0.2,
                        clip_high: float = 0.2, aggregation: str = "token_mean", ratio_level: str = "token",
                        constant_normaliser: float | None = None):
    """The clipped surrogate (Schulman et al., 2017) with DAPO's decoupled range [1 − ε_low, 1 + ε_high]:

        ℓ_t = −min(ρ_t·A_t, clip(ρ_t, 1 − ε_low, 1 + ε_high)·A_t)

    aggregated over the response tokens by `aggregation` (research/rl/aggregation.py). The ratio ρ is

        "token":    ρ_t = π_θ(y_t) / π_old(y_t)                                (PPO, GRPO, DAPO)
        "sequence": ρ_t = s = exp((1/|y|)·Σ_t (log π_θ(y_t) − log π_old(y_t)))  (GSPO, Zheng et al. 2025),
                    the same for every token of the row; with "seq_mean_token_mean" this is GSPO's
                    (1/B)·Σ_i −min(s_i·A_i, clip(s_i)·A_i).

    Where the clip binds (ρ > 1 + ε_high with A > 0, or ρ < 1 − ε_low with A < 0) the token's gradient
    is 0. advantages: `[batch, time]`, or `[batch]` for one advantage per response (GRPO).
    Metrics: "clip_fraction", the share of response tokens where the clip binds, and "approx_kl",
    the k3 estimate of KL(π_old ‖ π_θ) over them (the samples come from π_old).
    """
    if ratio_level not in RATIO_LEVELS:
        raise ValueError(f"ratio_level={ratio_level!r} is not one of {RATIO_LEVELS}")
    mask = mask.astype(bool)
    log_ratio = jnp.where(mask, log_probs.astype(jnp.float32) - old_log_probs.astype(jnp.float32), 0.0)
    if ratio_level == "sequence":
        log_ratio = jnp.broadcast_to(masked_mean(log_ratio, mask, axis=-1)[:, None], log_ratio.shape)
    ratio = jnp.exp(log_ratio)
    if advantages.ndim == 1:
        advantages = advantages[:, None]
    advantages = jnp.broadcast_to(advantages.astype(jnp.float32), ratio.shape)
    unclipped = ratio * advantages
    clipped = jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high) * advantages
    loss = aggregate(-jnp.minimum(unclipped, clipped), mask, aggregation, constant_normaliser=constant_normaliser)
    metrics = {
        "clip_fraction": masked_mean(clipped < unclipped, mask),
        "approx_kl": masked_mean(kl_estimate(old_log_probs, log_probs, estimator="k3"), mask),
    }
    return loss, metrics


def clipped_value_loss(values, old_values, returns, mask, *, clip: float | None = 0.2,
                       aggregation: str = "token_mean", constant_normaliser: float | None = None):
    """The critic's loss, per token ½·max((V − R)², (V_old + clip(V − V_old, −ε, ε) − R)²) (PPO-max value
    clipping: the value may not move further than ε from the one that computed the advantages, unless
    that brings it closer to the return), or ½·(V − R)² with `clip=None`; aggregated by `aggregation`.
    values, old_values, returns, mask: `[batch, time]`. Metric "clip_fraction": the share of response
    tokens where the clipped term is the larger (those get no gradient); 0 unclipped.
    """
    real = mask.astype(bool)  # everything zeroed off the mask, so no NaN there can reach the gradient
    values, old_values, returns = (jnp.where(real, x.astype(jnp.float32), 0.0) for x in (values, old_values, returns))
    squared_error = jnp.square(values - returns)
    if clip is None:
        per_token, clip_binds = squared_error, jnp.zeros(values.shape, bool)
    else:
        clipped_values = old_values + jnp.clip(values - old_values, -clip, clip)
        clipped_error = jnp.square(clipped_values - returns)
        per_token, clip_binds = jnp.maximum(squared_error, clipped_error), clipped_error > squared_error
    loss = aggregate(0.5 * per_token, mask, aggregation, constant_normaliser=constant_normaliser)
    return loss, {"clip_fraction": masked_mean(clip_binds, mask)}


def kimi_surrogate_loss(log_probs, old_log_probs, rewards, mask, *, tau: float, group_size: int):
    """Kimi k1.5's online mirror descent step (Kimi Team, 2025, §2.3) as a squared loss:

        L = (1/k)·Σ_j (r_j − r̄ − τ·ℓ_j)²,    ℓ_j = log π_θ(y_j)/π_old(y_j) = Σ_t m_jt·(log π_θ(y_jt) − log π_old(y_jt))

    over the k = `group_size` samples y_j of each prompt (rewards `[num_prompts · k]` ordered group by
    group, r̄ the mean of the group's rewards, which stands in for τ·log Z), then the mean over prompts.
    With ∇ℓ_j = ∇log π_θ(y_j) and ℓ_j·∇ℓ_j = ½∇ℓ_j²:

        ∇L = (1/k)·Σ_j 2(r_j − r̄ − τℓ_j)·(−τ∇ℓ_j)
           = −2τ·(1/k)·Σ_j [(r_j − r̄)·∇log π_θ(y_j) − (τ/2)·∇(log π_θ(y_j)/π_old(y_j))²],

    the paper's update direction scaled by −2τ: descending L ascends the paper's gradient. Metric
    "log_ratio": the mean ℓ_j, 0 at π_θ = π_old.
    """
    log_ratio = sequence_log_probs(log_probs.astype(jnp.float32) - old_log_probs.astype(jnp.float32), mask)
    residual = group_advantages(rewards, group_size, scale_by_std=False) - tau * log_ratio
    return jnp.mean(jnp.square(residual)), {"log_ratio": jnp.mean(log_ratio)}
