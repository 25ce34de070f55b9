"""Advantages for policy-gradient post-training: GAE (PPO), group-relative (GRPO, Dr. GRPO), whitening.

Shapes: per-token arrays are `[batch, time]`, where `mask` is 1 on the real response tokens
(the actions) and 0 on prompt and padding positions. Every function is jit-friendly: the
switches are static Python arguments and nothing branches on array values.

GAE (Schulman et al., 2016), backwards in time over the response tokens of each row:

    δ_t = r_t + γ·V_{t+1} − V_t
    A_t = δ_t + γλ·A_{t+1}          (= Σ_k (γλ)^k δ_{t+k})
    R_t = A_t + V_t                 (the value target, "returns")

Each maximal run of 1s in a row's mask is one episode: after its last real token the next value
and the next advantage are 0 (the episode has ended, nothing is bootstrapped), so what sits in
the padding, however large, never reaches a real token.

Group-relative advantages (DeepSeekMath's GRPO): the G samples of one prompt are compared to each
other, Â_i = (r_i − mean(r)) / (std(r) + floor), or Â_i = r_i − mean(r) without the division
(Dr. GRPO, Liu et al. 2025: dividing by the std gives questions that are too easy or too hard,
where the std is small, more weight).
"""

import jax
import jax.numpy as jnp


def masked_sum_and_count(x, mask, axis=None):
    """(Σ m·x, Σ m) over `axis`, in float32; positions where the mask is 0 contribute nothing
    (also when x holds inf or NaN there)."""
    mask = mask.astype(bool)
    total = jnp.sum(jnp.where(mask, x.astype(jnp.float32), 0.0), axis=axis)
    return total, jnp.sum(mask, axis=axis, dtype=jnp.float32)


def masked_mean(x, mask, axis=None):
    """Σ m·x / Σ m over `axis` (None: all of it); 0 where the mask selects nothing."""
    total, count = masked_sum_and_count(x, mask, axis)
    return total / jnp.maximum(count, 1.0)


def masked_var(x, mask, axis=None, *, unbiased: bool = False):
    """The variance of the selected entries, Σ m·(x − μ)² / n (population), or / (n − 1) with
    `unbiased` (Bessel's correction); 0 where the mask selects nothing (or, unbiased, one entry)."""
    mean = masked_mean(x, mask, axis)
    centred = x - (mean if axis is None else jnp.expand_dims(mean, axis))
    squares, count = masked_sum_and_count(centred * centred, mask, axis)
    return squares / jnp.maximum(count - 1.0 if unbiased else count, 1.0)


def masked_whiten(x, mask, *, shift_mean: bool = True, eps: float = 1e-8):
    """(x − μ)/√(σ² + eps) with μ, σ² the mean and population variance of the selected entries of
    the whole array (PPO-max normalises advantages over the batch); with `shift_mean=False` the
    mean is added back, x ↦ (x − μ)/σ + μ, which rescales without moving the centre. 0 where the
    mask is 0."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * jax.lax.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return jnp.where(mask.astype(bool), whitened, 0.0)


def gae(rewards, values, mask, *, gamma: float, lam: float):
    """Generalised advantage estimates and returns, both `[batch, time]` float32 (see the module
    docstring): a `lax.scan` from the last position to the first, carrying the next real token's
    value and advantage, which are 0 past the end of an episode. Advantages and returns are 0
    where `mask` is 0. rewards, values, mask: `[batch, time]`."""
    if rewards.shape != values.shape or rewards.shape != mask.shape or rewards.ndim != 2:
        raise ValueError(f"gae needs rewards, values and mask of one shape [batch, time], got "
                         f"{rewards.shape}, {values.shape} and {mask.shape}")
    real = mask.astype(bool).T  # time-major, so the scan runs over time
    rewards = jnp.where(real, rewards.T.astype(jnp.float32), 0.0)
    values = jnp.where(real, values.T.astype(jnp.float32), 0.0)

    def step(carry, inputs):
        next_value, next_advantage = carry
        reward, value, is_real = inputs
        delta = reward + gamma * next_value - value
        advantage = jnp.where(is_real, delta + gamma * lam * next_advantage, 0.0)
        return (value, advantage), advantage

    zeros = jnp.zeros(rewards.shape[1], jnp.float32)
    _, advantages = jax.lax.scan(step, (zeros, zeros), (rewards, values, real), reverse=True)
    returns = jnp.where(real, advantages + values, 0.0)
    return advantages.T, returns.T


def group_advantages(rewards, group_size: int, *, scale_by_std: bool = True, std_floor: float = 1e-3):
    """GRPO's advantages of `rewards [num_prompts · group_size]`, ordered group by group (the
    samples of prompt p at p·G .. p·G + G − 1): (r − mean_group) / (std_group + std_floor), or
    r − mean_group with `scale_by_std=False` (Dr. GRPO). float32, the shape of `rewards`.

    std_group is the sample standard deviation (Bessel's correction, n − 1), as trl's, verl's and
    OpenRLHF's GRPO compute it (`torch.std`'s default). A group of one sample has advantage 0: it
    has nothing to be compared with. The floor (NeMo-RL uses 1e-3) keeps a group whose rewards are
    all but equal from being blown up to ±1/ε.
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if rewards.ndim != 1 or rewards.shape[0] % group_size:
        raise ValueError(f"group_advantages needs rewards of shape [num_prompts * group_size]: "
                         f"shape {rewards.shape} is not a multiple of group_size={group_size}")
    groups = rewards.astype(jnp.float32).reshape(-1, group_size)
    centred = groups - jnp.mean(groups, axis=1, keepdims=True)
    if scale_by_std:
        # ddof 0 for a group of one, whose centred reward 0 then stays 0 (the sample std is undefined)
        std = jnp.std(groups, axis=1, keepdims=True, ddof=1 if group_size > 1 else 0)
        centred = centred / (std + std_floor)
    return centred.reshape(rewards.shape)
