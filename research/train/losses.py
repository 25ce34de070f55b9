"""Token-level losses, computed in float32."""

import jax
import jax.numpy as jnp


def token_nll(logits, targets):
    """−log softmax(logits)[target] per position: logsumexp(z) − z_target, shape `targets.shape`."""
    logits = logits.astype(jnp.float32)
    target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return jax.nn.logsumexp(logits, axis=-1) - target_logits


def weighted_nll_sum(logits, targets, weights):
    """(Σ w·nll, Σ w): the numerator and denominator of the mean next-token loss."""
    weights = weights.astype(jnp.float32)
    return jnp.sum(token_nll(logits, targets) * weights), jnp.sum(weights)
