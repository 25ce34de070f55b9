"""Reward shaping as pure functions: DAPO's length penalties, Kimi k1.5's length reward, LLaMA 2's
safety-gated, logit-whitened reward with the KL penalty folded in, and reward clipping.

Shapes: one reward or length per response `[batch]`; per-token arrays `[batch, time]` with `mask`
1 on the response tokens. Lengths count response tokens. Groups (Kimi) are `group_size`
consecutive responses to one prompt, as in `research.rl.advantages.group_advantages`.
"""

import jax
import jax.numpy as jnp

from research.rl.advantages import masked_whiten


def soft_overlong_punishment(lengths, *, max_length: int, cache_length: int):
    """DAPO's length-aware penalty (Yu et al., 2025), float32 `[batch]`:

        R_len(y) = 0                                   |y| ≤ L_max − L_cache
                   ((L_max − L_cache) − |y|) / L_cache  L_max − L_cache < |y| ≤ L_max
                   −1                                  L_max < |y|

    a penalty that grows linearly from 0 to −1 over the last `cache_length` tokens before
    `max_length` (DAPO: 20480 and 4096), added to the task reward."""
    if not 0 < cache_length <= max_length:
        raise ValueError(f"soft_overlong_punishment needs 0 < cache_length <= max_length, got "
                         f"cache_length={cache_length}, max_length={max_length}")
    lengths = lengths.astype(jnp.float32)
    expected = max_length - cache_length
    ramp = (expected - lengths) / cache_length
    return jnp.where(lengths <= expected, 0.0, jnp.where(lengths <= max_length, ramp, -1.0))


def overlong_filter_mask(mask, truncated):
    """DAPO's overlong filtering: the loss mask `[batch, time]` with the rows of truncated responses
    (`truncated [batch]` bool: cut at the length limit before they ended) zeroed, so an unfinished
    answer is neither rewarded nor punished."""
    return mask * jnp.logical_not(truncated)[:, None].astype(mask.dtype)


def kimi_length_reward(lengths, correct, group_size: int):
    """Kimi k1.5's length reward (Kimi Team, 2025, §2.3) among the `group_size` responses to one
    prompt: λ = 0.5 − (len − min_len) / (max_len − min_len), from +0.5 for the shortest to −0.5 for the
    longest; a correct response gets λ, a wrong one min(0, λ) (never rewarded for being short); 0 for
    the whole group when all its lengths are equal. lengths `[num_prompts · group_size]`, correct the
    same shape bool; float32. Scale it by `length_reward_weight` and add it to the task reward."""
    if group_size < 1 or lengths.ndim != 1 or lengths.shape[0] % group_size:
        raise ValueError(f"kimi_length_reward needs lengths of shape [num_prompts * group_size] with "
                         f"group_size >= 1: got shape {lengths.shape} and group_size={group_size}")
    groups = lengths.astype(jnp.float32).reshape(-1, group_size)
    shortest = jnp.min(groups, axis=1, keepdims=True)
    spread = jnp.max(groups, axis=1, keepdims=True) - shortest
    lam = jnp.where(spread > 0, 0.5 - (groups - shortest) / jnp.where(spread > 0, spread, 1.0), 0.0)
    lam = lam.reshape(lengths.shape)
    return jnp.where(correct, lam, jnp.minimum(lam, 0.0))


def length_reward_weight(step, *, warmup_steps: int, weight: float):
    """The weight of the Kimi length reward at `step`: 0 during the first `warmup_steps` steps (plain
    policy optimisation, since the penalty slows early training down), then the constant `weight`."""
    return jnp.where(jnp.asarray(step) >= warmup_steps, weight, 0.0).astype(jnp.float32)


def llama2_gated_reward(safety_scores, helpfulness_scores, unsafe_prompt, *, safety_threshold: float = 0.15):
    """LLaMA 2's combined reward (Touvron et al., 2023, §3.2.3): the safety model's score R_s where the
    prompt is known to be unsafe or R_s < `safety_threshold` (the response may be unsafe), the
    helpfulness model's score R_h elsewhere. Scores `[batch]` in (0, 1); unsafe_prompt `[batch]` bool."""
    use_safety = jnp.logical_or(unsafe_prompt, safety_scores < safety_threshold)
    return jnp.where(use_safety, safety_scores, helpfulness_scores).astype(jnp.float32)


def logit_whiten(scores, *, eps: float = 1e-6):
    """LLaMA 2's WHITEN(LOGIT(R_c)): the sigmoid of the reward models' heads undone, logit(s) =
    log(s / (1 − s)) with s clipped to [eps, 1 − eps], then whitened over the batch to mean 0 and
    variance 1, so the reward is on the scale of the KL penalty it is balanced against. `[batch]`."""
    logits = jax.scipy.special.logit(jnp.clip(scores.astype(jnp.float32), eps, 1.0 - eps))
    return masked_whiten(logits, jnp.ones(logits.shape, bool))


def kl_penalised_rewards(final_rewards, kl, mask, *, beta: float):
    """Per-token rewards of the RLHF convention (InstructGPT, LLaMA 2's R = R̃_c − β·KL): every response
    token gets −β·KL_t (`kl [batch, time]`, a per-token estimate such as k1, research/rl/kl.py), and the
    last response token of each row also gets the sequence's reward `final_rewards [batch]`; 0 off the
    mask. GAE (research/rl/advantages.py) then credits the final reward back through the response."""
    real = mask.astype(bool)
    positions = jnp.arange(mask.shape[1])
    last = jnp.max(jnp.where(real, positions, -1), axis=1, keepdims=True)
    penalty = jnp.where(real, -beta * kl.astype(jnp.float32), 0.0)
    return penalty + jnp.where(positions == last, final_rewards.astype(jnp.float32)[:, None], 0.0)


def clip_reward(rewards, limit: float):
    """Rewards clipped to [−limit, limit] (PPO-max: reward_clip 10, after normalisation)."""
    return jnp.clip(rewards, -limit, limit)
