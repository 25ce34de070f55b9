"""Losses on preference pairs (a chosen and a rejected response to one prompt), shapes `[pairs]`.

    ranking (reward model, LLaMA 2):  −log σ(r_c − r_r − m)
    DPO (Rafailov et al., 2023):      −log σ(β·[(log π(y_c) − log π_ref(y_c)) − (log π(y_r) − log π_ref(y_r))])
    ORPO (Hong et al., 2024):         NLL(y_c) − λ·log σ(log odds(y_c) − log odds(y_r)),
                                      odds(y) = p/(1 − p), p = exp((1/|y|)·log π(y))

Every −log σ(z) is computed as softplus(−z), finite for any z. Sequence log-probabilities are sums
over the response tokens (`research.rl.log_probs.sequence_log_probs`; length-normalised for ORPO).
"""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

# LLaMA 2's preference strengths, index 0 to 3, and the margin m(r) of each (Touvron et al., 2023,
# §3.2.2 and Table 27): a larger margin for a clearer preference.
LLAMA2_STRENGTHS = ("significantly better", "better", "slightly better", "negligibly better / unsure")
LLAMA2_MARGINS = {"small": (1.0, 2 / 3, 1 / 3, 0.0), "large": (3.0, 2.0, 1.0, 0.0)}


def margin_for(strength_index, table: Sequence[float]):
    """m(r) of each pair: `table[strength_index]` (e.g. LLAMA2_MARGINS["small"]) for an int index or
    array of indices into LLAMA2_STRENGTHS; float32. Under jit an out-of-range index is clamped."""
    return jnp.asarray(table, jnp.float32)[jnp.asarray(strength_index)]


def ranking_loss(chosen_rewards, rejected_rewards, margin=None):
    """The reward model's binary ranking loss, mean over pairs of −log σ(r_c − r_r − m): `margin` None
    (InstructGPT, m = 0), a scalar or one per pair (`margin_for`)."""
    difference = chosen_rewards.astype(jnp.float32) - rejected_rewards.astype(jnp.float32)
    if margin is not None:
        difference = difference - margin
    return jnp.mean(-jax.nn.log_sigmoid(difference))


def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, *, beta: float):
    """DPO's loss, mean over pairs of −log σ(β·[(π_c − ref_c) − (π_r − ref_r)]) from sequence log-probs
    `[pairs]`, and metrics of the implicit rewards β·(log π − log π_ref): "chosen_reward",
    "rejected_reward" (means), "reward_margin" (mean of their difference) and "reward_accuracy" (the
    share of pairs where the chosen one's is larger)."""
    chosen_reward = beta * (policy_chosen_logps.astype(jnp.float32) - ref_chosen_logps)
    rejected_reward = beta * (policy_rejected_logps.astype(jnp.float32) - ref_rejected_logps)
    margin = chosen_reward - rejected_reward
    metrics = {
        "chosen_reward": jnp.mean(chosen_reward),
        "rejected_reward": jnp.mean(rejected_reward),
        "reward_margin": jnp.mean(margin),
        "reward_accuracy": jnp.mean(margin > 0),
    }
    return jnp.mean(-jax.nn.log_sigmoid(margin)), metrics


def log1m_exp(x):
    """log(1 − eˣ) for x < 0, accurate everywhere (Mächler, 2012): log(−expm1(x)) near 0, where
    1 − eˣ is tiny, and log1p(−eˣ) below −log 2, where eˣ is. Each branch sees only inputs of its own
    range, so neither makes a NaN gradient for the other."""
    near_zero = x > -math.log(2.0)
    upper = jnp.where(near_zero, x, -1.0)
    lower = jnp.where(near_zero, -1.0, x)
    return jnp.where(near_zero, jnp.log(-jnp.expm1(upper)), jnp.log1p(-jnp.exp(lower)))


def orpo_loss(chosen_logps_mean, rejected_logps_mean, chosen_nll, *, lam: float):
    """ORPO's loss: mean(chosen_nll) + λ·mean over pairs of −log σ(log odds_c − log odds_r), with
    log odds = log p − log(1 − p) and log p the length-normalised log-probability `[pairs]` (< 0) of the
    response, log(1 − p) = `log1m_exp(log p)`. chosen_nll: the SFT loss on the chosen responses
    (a scalar or `[pairs]`). Metrics: "nll", "log_odds_ratio" (mean) and "accuracy" (the share of pairs
    whose chosen response has the larger odds)."""
    chosen, rejected = chosen_logps_mean.astype(jnp.float32), rejected_logps_mean.astype(jnp.float32)
    log_odds_ratio = (chosen - log1m_exp(chosen)) - (rejected - log1m_exp(rejected))
    nll = jnp.mean(chosen_nll)
    metrics = {"nll": nll, "log_odds_ratio": jnp.mean(log_odds_ratio), "accuracy": jnp.mean(log_odds_ratio > 0)}
    return nll + lam * jnp.mean(-jax.nn.log_sigmoid(log_odds_ratio)), metrics
