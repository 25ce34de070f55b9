"""The rollout engine: responses sampled from the policy with the KV-cache decoder, and what every
policy-gradient trainer (PPO, GRPO, Kimi k1.5, rejection sampling) needs to learn from them.

One jitted program per batch of prompts `[B, P]` (right-padded, row b of length ℓ_b):

    tokens          `generate`'s layout `[B, T]`, T = P + N: row b is its prompt, its response from
                    ℓ_b on, then `pad_id` (research/decoding/sampling.py)
    response_mask   1 on the response's tokens, from ℓ_b up to and including its first stop id
                    (or all N when it never stops); 0 on the prompt and on padding
    log_probs       log π(x_t | x_<t) of every response token under the policy that sampled it,
                    from one teacher-forced pass over `tokens` with logits / T (the distribution
                    the trainer differentiates; top-k / top-p only shape what is sampled);
                    0 where `response_mask` is 0
    ref_log_probs   the same under the frozen reference parameters (None: not computed)
    truncated       rows that never emitted a stop id (they ran out of tokens)

Position t of every `[B, T]` array describes token t, so a loss at t compares x_t with logits[t − 1].
The arrays are laid out as the mesh lays out the parameters and the prompts: the same code runs on
one CPU and on a pod.
"""

import flax.struct
import jax
import jax.numpy as jnp

from research.decoding.sampling import generate_padded
from research.rl.log_probs import token_log_probs


@flax.struct.dataclass
class Rollout:
    """Sampled responses and their log-probabilities (see the module docstring)."""

    tokens: jax.Array
    response_mask: jax.Array
    log_probs: jax.Array
    ref_log_probs: jax.Array | None
    truncated: jax.Array

    @property
    def response_lengths(self):
        """Tokens in each row's response, its stop id included: `[B]` int32."""
        return jnp.sum(self.response_mask, axis=1, dtype=jnp.int32)


def response_mask_of(tokens, prompt_lengths, max_new_tokens: int, stop_ids: tuple[int, ...]):
    """(mask `[B, T]` of each row's response up to and including its first stop id, truncated `[B]`)."""
    positions = jnp.arange(tokens.shape[1])[None, :]
    start = prompt_lengths[:, None]
    generated = (positions >= start) & (positions < start + max_new_tokens)
    stops = generated & jnp.isin(tokens, jnp.array(stop_ids, jnp.int32)) if stop_ids else jnp.zeros_like(generated)
    stops_before = jnp.cumsum(stops, axis=1) - stops
    return generated & (stops_before == 0), ~jnp.any(stops, axis=1)


def policy_log_probs(model, params, tokens, *, temperature: float = 1.0):
    """log softmax(logits[t − 1] / T)[x_t] for t ≥ 1 (0 at t = 0): `[B, T]` float32, one forward pass."""
    logits = model.apply({"params": params}, tokens[:, :-1]).astype(jnp.float32)
    if temperature > 0:
        logits = logits / temperature
    return jnp.pad(token_log_probs(logits, tokens[:, 1:]), ((0, 0), (1, 0)))


def rollout(model, params, prompts, prompt_lengths, rng, *, max_new_tokens: int, temperature: float = 1.0,
            top_k: int | None = None, top_p: float | None = None, stop_ids: tuple[int, ...] = (), pad_id: int = 0,
            reference_params=None) -> Rollout:
    """Responses to `prompts [B, P]` (row b's first `prompt_lengths[b]` tokens) sampled from `model` with
    `params`, and their log-probabilities under `params` and `reference_params`. Traceable: call it
    inside jit (a trainer's batch source) with the arguments after `rng` static."""
    tokens = generate_padded(model, params, prompts, prompt_lengths, rng, max_new_tokens=max_new_tokens,
                             temperature=temperature, top_k=top_k, top_p=top_p, stop_ids=stop_ids, pad_id=pad_id)
    mask, truncated = response_mask_of(tokens, prompt_lengths, max_new_tokens, stop_ids)

    def log_probs_under(weights):
        return jnp.where(mask, policy_log_probs(model, weights, tokens, temperature=temperature), 0.0)

    reference = None if reference_params is None else log_probs_under(jax.lax.stop_gradient(reference_params))
    return Rollout(tokens=tokens, response_mask=mask, log_probs=log_probs_under(params), ref_log_probs=reference,
                   truncated=truncated)
