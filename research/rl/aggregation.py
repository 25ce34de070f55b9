"""How per-token losses `[batch, time]` over the response tokens (mask 1) become one number.

    "seq_mean_token_mean"       (1/B)·Σ_i (1/|y_i|)·Σ_t ℓ_it        GRPO (DeepSeekMath)
    "token_mean"                Σ_i Σ_t ℓ_it / Σ_i |y_i|             DAPO: every token weighs the same
    "seq_mean_token_sum_norm"   (1/B)·Σ_i Σ_t ℓ_it / C               Dr. GRPO: C a constant, e.g. the
                                                                      maximum response length

The sums run over the tokens with mask 1. Under "seq_mean_token_mean" a long response's tokens
each weigh less than a short one's, so long wrong answers are punished less (trl #2995, DAPO);
"token_mean" removes that; "seq_mean_token_sum_norm" also keeps the weight of a token from
depending on the batch. A row without response tokens adds 0 (and under the sequence means
still counts among the B rows).
"""

import jax.numpy as jnp

from research.rl.advantages import masked_mean, masked_sum_and_count

AGGREGATIONS = ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm")


def aggregate(per_token, mask, mode: str, *, constant_normaliser: float | None = None):
    """The scalar loss of `per_token [batch, time]` under `mode` (static, one of AGGREGATIONS);
    `constant_normaliser` is C of "seq_mean_token_sum_norm" (required there, unused otherwise)."""
    if mode not in AGGREGATIONS:
        raise ValueError(f"aggregation mode={mode!r} is not one of {AGGREGATIONS}")
    if mode == "token_mean":
        return masked_mean(per_token, mask)
    if mode == "seq_mean_token_mean":
        return jnp.mean(masked_mean(per_token, mask, axis=-1))
    if constant_normaliser is None or constant_normaliser <= 0:
        raise ValueError("aggregation 'seq_mean_token_sum_norm' needs constant_normaliser > 0 (e.g. the maximum "
                         f"response length), got {constant_normaliser!r}")
    per_sequence, _ = masked_sum_and_count(per_token, mask, axis=-1)
    return jnp.mean(per_sequence) / constant_normaliser
