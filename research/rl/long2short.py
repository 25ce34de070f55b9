"""long2short by shortest rejection sampling (Kimi k1.5): of K responses to a prompt sampled from
the long-chain-of-thought policy, the shortest correct one becomes a fine-tuning example, the others none.

With lengths ℓ[p, k] and correctness c[p, k] of the K responses to prompt p, the kept response is

    k*(p) = argmax_k s[p, k],   s[p, k] = −ℓ[p, k] if c[p, k] else −∞    (the first on equal lengths)

and a prompt without a correct response keeps none. Fine-tuning on the kept responses is the policy
gradient with the 0/1 weight w[p, k] = [k = k*(p)] as the advantage: at the sampling policy (ratio 1)
∇ Σ w·log π is the SFT gradient on the kept responses, so the GRPO trainer runs long2short when
its batch source hands out these weights in place of group advantages (`rl.long2short`,
research/train/rollout_batches.py; configs/rlvr.py:tiny_long2short starts from the k1.5 run). There the
K = group_size samples of each step come from the current policy, the k1.5 policy at the first step:
a short run stays close to sampling the long-CoT policy alone, as the paper does.
"""

import numpy as np

from research.rl.rejection_sampling import best_of


def shortest_correct(lengths, correct) -> np.ndarray:
    """k*(p) for lengths and correctness `[prompts, K]`: `[prompts]` indices, −1 where none is correct."""
    lengths, correct = np.asarray(lengths, np.float64), np.asarray(correct, bool)
    if lengths.shape != correct.shape or lengths.ndim != 2:
        raise ValueError(f"lengths and correct must both be [prompts, K], got {lengths.shape} and {correct.shape}")
    chosen = best_of(np.where(correct, -lengths, -np.inf))
    return np.where(correct.any(axis=1), chosen, -1)


def shortest_correct_weights(lengths, correct, group_size: int) -> np.ndarray:
    """w: 1 on the shortest correct response of each group, 0 elsewhere, for responses `[P·G]` ordered
    group by group (as GRPO's batches)."""
    lengths, correct = np.asarray(lengths), np.asarray(correct)
    if group_size < 1 or lengths.size % group_size:
        raise ValueError(f"group_size {group_size} does not divide the {lengths.size} responses")
    chosen = shortest_correct(lengths.reshape(-1, group_size), correct.reshape(-1, group_size))
    weights = np.zeros((chosen.size, group_size), np.float32)
    kept = chosen >= 0
    weights[np.flatnonzero(kept), chosen[kept]] = 1.0
    return weights.reshape(-1)
