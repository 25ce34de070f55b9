"""Log-probabilities of sampled tokens, their sums over a response, and the policy's entropy.

Alignment is the caller's: `logits[b, t]` is the distribution that `tokens[b, t]` was drawn
from (for a decoder, the logits of position t − 1 of the prompt + response). All results are
float32, however the logits were computed.
"""

import jax
import jax.numpy as jnp

from research.rl.advantages import masked_sum_and_count


def token_log_probs(logits, tokens):
    """log π(tokens[b, t]) = z_token − logsumexp(z) per position: logits `[..., vocab]`, tokens
    `[...]` int, result `tokens.shape` float32 (log_softmax subtracts the maximum first, so large
    logits do not overflow)."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(log_probs, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]


def entropy(logits):
    """H(π) = −Σ_v π_v log π_v per position: logits `[..., vocab]`, result `[...]` float32."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)


def sequence_log_probs(token_logps, mask, *, average: bool = False):
    """log π(y) = Σ_t m_t·log π(y_t) over the response tokens of each row: token_logps, mask
    `[batch, time]`, result `[batch]`. With `average`, the length-normalised (1/|y|)·Σ_t m_t·log π(y_t)
    (ORPO, SimPO); 0 for a row without response tokens."""
    total, count = masked_sum_and_count(token_logps, mask, axis=-1)
    return total / jnp.maximum(count, 1.0) if average else total
