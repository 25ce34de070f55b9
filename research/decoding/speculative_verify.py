"""The acceptance rule of speculative sampling (Leviathan et al., 2023; Chen et al., 2023).

The draft proposed x_1..x_γ, x_i ~ q_i, and the target scored them in one call: p_1..p_{γ+1}, p_i
its distribution for position i given the prefix and x_1..x_{i−1}. Both are the distributions
actually sampled, after temperature, top-k and top-p (`token_probabilities`). Left to right, x_i is
accepted with probability min(1, p_i(x_i)/q_i(x_i)); at the first rejection, position i is drawn
from the residual

    p'_i = norm(max(0, p_i − q_i)),

and when all γ are accepted a bonus token is drawn from p_{γ+1}. Each emitted token is then
distributed exactly as p: P(x) = q(x)·min(1, p(x)/q(x)) + (1 − Σ_y min(p(y), q(y)))·p'(x)
= min(p(x), q(x)) + max(0, p(x) − q(x)) = p(x).

At temperature 0 p and q are one-hot at the argmax: a proposal is accepted when the argmaxes agree,
and the residual of a rejection is one-hot at the target's argmax, so the output is the target's
greedy decoding.
"""

import jax
import jax.numpy as jnp

from research.decoding.sampling import filter_logits


def token_probabilities(logits, *, temperature: float, top_k: int | None, top_p: float | None):
    """The distribution sampling draws from, `[..., vocab]`: one-hot at the argmax for temperature 0,
    else softmax of the logits scaled by 1/T and cut to the top-k and the top-p nucleus."""
    if temperature == 0.0:
        return jax.nn.one_hot(jnp.argmax(logits, axis=-1), logits.shape[-1], dtype=jnp.float32)
    return jax.nn.softmax(filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p), axis=-1)


def sample_from(rng, probabilities):
    """One token id per row from probabilities `[..., vocab]` (ids of probability 0 never come out)."""
    return jax.random.categorical(rng, jnp.log(probabilities), axis=-1).astype(jnp.int32)


def overlap(p, q):
    """β = Σ_x min(p(x), q(x)) over the last axis: the probability that a proposal from q is accepted."""
    return jnp.minimum(p, q).sum(axis=-1)


def residual_distribution(p, q):
    """norm(max(0, p − q)) over the last axis; p itself where p ≤ q everywhere (p = q up to rounding:
    a rejection there has probability 0, and only rounding can reach it)."""
    residual = jnp.maximum(p - q, 0.0)
    total = residual.sum(axis=-1, keepdims=True)
    return jnp.where(total > 0, residual / jnp.where(total > 0, total, 1.0), p)


def verify_proposals(rng, proposals, p, q, *, correction=residual_distribution):
    """(accepted `[batch]`, next token `[batch]`) for `proposals [batch, γ]` drawn from `q [batch, γ, V]`
    and the target's `p [batch, γ + 1, V]`.

    `accepted` counts the leading proposals that pass u_i · q_i(x_i) < p_i(x_i), u_i ~ U[0, 1) (which
    is u_i < min(1, p_i/q_i)); the next token comes from `correction(p_a, q_a)` at position
    a = accepted, with q_{γ+1} = 0 so that the bonus position's residual is p_{γ+1} itself.
    """
    batch, gamma = proposals.shape
    accept_key, next_key = jax.random.split(rng)
    p_proposed = jnp.take_along_axis(p[:, :gamma], proposals[..., None], axis=-1)[..., 0]
    q_proposed = jnp.take_along_axis(q, proposals[..., None], axis=-1)[..., 0]
    passes = jax.random.uniform(accept_key, proposals.shape) * q_proposed < p_proposed
    accepted = jnp.cumprod(passes.astype(jnp.int32), axis=1).sum(axis=1)
    rows = jnp.arange(batch)
    q_with_bonus = jnp.concatenate([q, jnp.zeros_like(q[:, :1])], axis=1)
    next_token = sample_from(next_key, correction(p[rows, accepted], q_with_bonus[rows, accepted]))
    return accepted, next_token
