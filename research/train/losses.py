"""Token-level losses, computed in float32."""

import jax
import jax.numpy as jnp


def token_nll(logits, targets):
    """−log softmax(logits)[target] per position: logsumexp(z) − z_target, shape `targets.shape`.

    z_target is read as Σ_v z_v·[v = target] rather than gathered: its gradient is then an
    elementwise one-hot instead of a scatter, which XLA fuses on every backend.
    """
    logits = logits.astype(jnp.float32)
    one_hot = targets[..., None] == jnp.arange(logits.shape[-1], dtype=targets.dtype)
    target_logits = jnp.sum(jnp.where(one_hot, logits, 0.0), axis=-1)
    return jax.nn.logsumexp(logits, axis=-1) - target_logits


def weighted_nll_sum(logits, targets, weights):
    """(Σ w·nll, Σ w): the numerator and denominator of the mean next-token loss."""
    weights = weights.astype(jnp.float32)
    return jnp.sum(token_nll(logits, targets) * weights), jnp.sum(weights)
