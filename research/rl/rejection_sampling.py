"""Rejection sampling (LLaMA-2 §3.2.3): K responses per prompt, the best by the reward model kept for
fine-tuning, and the reward gained by taking the best of more samples (its Figure 7 in shape).

With scores s[p, k] of the K responses to prompt p (in the order sampled), for n ≤ K:

    max@n    = mean_p max_{k < n} s[p, k]        the reward of the best of the first n samples
    median@n = mean_p median_{k < n} s[p, k]     a typical sample's reward
    gain@n   = max@n − median@n                  what rejection sampling buys over one sample
"""

import numpy as np


def best_of(scores) -> np.ndarray:
    """Index of the best-scored response of each prompt: scores `[prompts, K]` → `[prompts]`
    (the first one on ties)."""
    return np.argmax(np.asarray(scores), axis=1)


def reward_gain(scores, ns=None) -> dict[int, dict[str, float]]:
    """{n: {"max", "median", "gain"}} of scores `[prompts, K]` for each n in `ns` (default 1, 2, 4, ..., K)."""
    scores = np.asarray(scores, np.float64)
    if scores.ndim != 2 or scores.shape[1] < 1:
        raise ValueError(f"scores must be [prompts, K] with K >= 1, got shape {scores.shape}")
    k = scores.shape[1]
    ns = ns or sorted({*(2**i for i in range(int(np.log2(k)) + 1)), k})
    table = {}
    for n in ns:
        if not 1 <= n <= k:
            raise ValueError(f"n = {n} is outside 1..K = {k}")
        best, median = scores[:, :n].max(axis=1).mean(), np.median(scores[:, :n], axis=1).mean()
        table[n] = {"max": float(best), "median": float(median), "gain": float(best - median)}
    return table
