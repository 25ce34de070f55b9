"""Medusa decoding (Cai et al., 2024): the heads guess a tree of continuations, one pass verifies it.

Each step of one jitted `lax.while_loop`, for every row b side by side:

  1. the tree (research/decoding/medusa_tree.py): its root is the base model's next token x (already
     emitted, not yet in the cache), its other nodes the top-k tokens of the Medusa heads read at
     the position before x, laid out by `medusa_choices`;
  2. one forward pass of the decoder over the t tree tokens with tree attention: they fill the cache
     slots ℓ_b, ..., ℓ_b + t − 1 after the row's ℓ_b cached tokens, node n at position ℓ_b + depth(n),
     seeing the cache and its own ancestors; so the logits at node n are the base model's prediction
     after the path root → n;
  3. acceptance along each root-to-leaf path: node n (token y, parent m) is accepted when
        greedy:  y = argmax p_m                                     (p_m: the base model at m)
        typical: p_m(y) > min(ε, δ·exp(−H(p_m)))    ε = posterior_threshold, δ = posterior_alpha
     (p_m at the temperature; at temperature 0 typical is greedy) and so is its parent; the path
     with the most accepted nodes wins, ties to the larger Σ log p of its accepted tokens (under
     greedy acceptance tied paths hold the same tokens);
  4. the a accepted tokens are emitted, then the base model's next token at the end of the accepted
     path (argmax, or a sample at the temperature with typical acceptance): a + 1 tokens per pass;
     the heads read the same node to guess the next tree;
  5. the cache is compacted: the K/V entries of the accepted path's nodes (slots ℓ_b + node) move to
     the consecutive slots ℓ_b, ..., ℓ_b + a, and the row's length becomes ℓ_b + a + 1; rows accept
     different lengths.

With greedy acceptance every emitted token is the base model's argmax after the tokens before it, so
the output is greedy `generate`'s token for token, for a top-1 chain [(0,), (0, 0), ...] as for any
tree (up to float rounding: a tree pass sums attention in another order than a one-token step).
Typical acceptance is not a sample of the base model's distribution (the paper's trade-off).

Tokens are laid out as `generate` lays them out (research/decoding/sampling.py): row b's prompt,
its new tokens from its own prompt length on, `pad_id` after its first stop id and to the end.
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from research.decoding.medusa_tree import medusa_tree, normalised_choices
from research.decoding.sampling import (GREEDY_BELOW, checked_prompts, greedy_or_temperature, sample_token,
                                        stop_id_tuple, unrolled)
from research.models.layers import kv_cache_length
from research.models.llama import Llama, init_cache
from research.models.medusa import head_logits

ACCEPTANCE_RULES = ("greedy", "typical")


def node_acceptance(logits, tree_tokens, parents, *, acceptance: str, temperature: float, posterior_threshold: float,
                    posterior_alpha: float):
    """(accepted [b, t], log p [b, t]): whether node n's token passes the acceptance test under the base
    model's distribution at its parent, and that token's log-probability there (the root's are unused)."""
    parent_logits = logits[:, parents].astype(jnp.float32)
    if acceptance == "greedy" or temperature == 0.0:
        log_probs = jax.nn.log_softmax(parent_logits, axis=-1)
        token_log_prob = jnp.take_along_axis(log_probs, tree_tokens[..., None], axis=-1)[..., 0]
        return tree_tokens == jnp.argmax(parent_logits, axis=-1), token_log_prob
    log_probs = jax.nn.log_softmax(parent_logits / temperature, axis=-1)
    probs = jnp.exp(log_probs)
    entropy = -jnp.sum(jnp.where(probs > 0, probs * log_probs, 0.0), axis=-1)
    threshold = jnp.minimum(posterior_threshold, posterior_alpha * jnp.exp(-entropy))
    token_log_prob = jnp.take_along_axis(log_probs, tree_tokens[..., None], axis=-1)[..., 0]
    return jnp.exp(token_log_prob) > threshold, token_log_prob


def best_paths(accepted, token_log_prob, paths):
    """(path [b], accepted length a [b]) of the path with the most accepted nodes below the root, ties to
    the larger Σ log p over them. `paths [p, depth + 1]` node ids, −1 padded."""
    nodes = np.maximum(paths[:, 1:], 0)
    along = accepted[:, nodes] & (paths[:, 1:] >= 0)  # [b, p, depth]
    prefix = jnp.cumprod(along, axis=-1).astype(bool)
    lengths = jnp.sum(prefix, axis=-1)
    likelihood = jnp.sum(jnp.where(prefix, token_log_prob[:, nodes], 0.0), axis=-1)
    longest = lengths == jnp.max(lengths, axis=-1, keepdims=True)
    best = jnp.argmax(jnp.where(longest, likelihood, -jnp.inf), axis=-1)
    return best, jnp.take_along_axis(lengths, best[:, None], axis=-1)[:, 0]


def compact_cache(kv, start, path_nodes):
    """`kv [L, b, S, ...]` with the entries of slots start_b + path_nodes[b, j] moved to start_b + j
    (all gathered before any is written, so overlapping moves are exact)."""
    rows = jnp.arange(kv.shape[1])[:, None]
    source = start[:, None] + path_nodes
    target = start[:, None] + jnp.arange(path_nodes.shape[1])
    return kv.at[:, rows, target].set(kv[:, rows, source])


def emitted_tokens(path_tokens, accepted_length, next_token, remaining, stop_ids):
    """(tokens [b, depth + 1], count [b], stopped [b]) a step emits: the accepted candidates
    path_tokens[b, 1..a], then `next_token`; cut after the first stop id and at `remaining`."""
    j = jnp.arange(path_tokens.shape[1])
    candidates = jnp.concatenate([path_tokens[:, 1:], next_token[:, None]], axis=1)
    tokens = jnp.where(j < accepted_length[:, None], candidates, next_token[:, None])
    count = jnp.minimum(accepted_length + 1, remaining)
    if not stop_ids:
        return tokens, count, jnp.zeros_like(count, bool)
    is_stop = jnp.isin(tokens, jnp.array(stop_ids, jnp.int32)) & (j < count[:, None])
    first_stop = jnp.argmax(is_stop, axis=-1)
    stopped = jnp.any(is_stop, axis=-1)
    return tokens, jnp.where(stopped, first_stop + 1, count), stopped


def head_candidates(config, params, hidden, tree):
    """Candidate tokens `[b, 1 + depth·top_k]`-indexable: the top-k of each of the first `depth` heads
    at hidden states `[b, d]`, flattened head by head (after a slot for the root)."""
    logits = head_logits(config, params, hidden[:, None])[: tree.depth, :, 0]  # [depth, b, V]
    top = jax.lax.top_k(logits, tree.top_k)[1].astype(jnp.int32)  # [depth, b, top_k]
    return top.transpose(1, 0, 2).reshape(hidden.shape[0], -1)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "choices", "acceptance", "temperature",
                                             "posterior_threshold", "posterior_alpha", "stop_ids", "pad_id"))
def medusa_generate_padded(model, params, tokens, lengths, rng, *, max_new_tokens, choices, acceptance, temperature,
                           posterior_threshold, posterior_alpha, stop_ids, pad_id):
    """The jitted core of `medusa_generate` on right-padded prompts `tokens [B, P]` of `lengths [B]`:
    (tokens, accepted tokens summed over active row-steps, active row-steps, tree passes)."""
    config = model.config
    tree = medusa_tree(choices, num_heads=config.medusa.num_heads, max_top_k=config.vocab_size)
    batch, prompt_len = tokens.shape
    rows = jnp.arange(batch)
    decoder, decoder_params = unrolled(Llama(config), params["backbone"])
    run = functools.partial(decoder.apply, {"params": decoder_params}, decode=True, return_hidden=True)
    choose = functools.partial(sample_token, temperature=temperature if acceptance == "typical" else 0.0,
                               top_k=None, top_p=None)
    accept = functools.partial(node_acceptance, parents=tree.parents, acceptance=acceptance, temperature=temperature,
                               posterior_threshold=posterior_threshold, posterior_alpha=posterior_alpha)

    cache_len = kv_cache_length(prompt_len + max_new_tokens + tree.num_nodes, config.attention_impl)
    (logits, hidden), cache = run(tokens, cache=init_cache(config, batch, cache_len))
    cache = {**cache, "lengths": lengths}
    root = choose(logits[rows, lengths - 1], jax.random.fold_in(rng, 0))
    candidates = head_candidates(config, params, hidden[rows, lengths - 1], tree)
    output = jnp.concatenate([tokens, jnp.full((batch, max_new_tokens), pad_id, jnp.int32)], axis=1)
    output = output.at[rows, lengths].set(root)
    generated = jnp.ones((batch,), jnp.int32)
    done = (generated >= max_new_tokens) | jnp.isin(root, jnp.array(stop_ids, jnp.int32))

    def keep_going(carry):
        return ~jnp.all(carry[6])

    def step(carry):
        i, output, cache, root, candidates, generated, done, accepted_sum, active_steps = carry
        start = cache["lengths"]
        tree_tokens = jnp.concatenate([root[:, None], candidates], axis=1)[:, tree.candidate_index]
        positions = start[:, None] + tree.depths
        (logits, hidden), new_cache = run(tree_tokens, positions=positions, cache=cache,
                                          tree_mask=tree.attention_mask)
        best, accepted_length = best_paths(*accept(logits, tree_tokens), tree.paths)
        path_nodes = jnp.asarray(tree.paths)[best]
        last_node = path_nodes[rows, accepted_length]
        next_token = choose(logits[rows, last_node], jax.random.fold_in(rng, i))
        new_tokens, count, stopped = emitted_tokens(tree_tokens[rows[:, None], jnp.maximum(path_nodes, 0)],
                                                    accepted_length, next_token, max_new_tokens - generated,
                                                    stop_ids)
        count = jnp.where(done, 0, count)
        j = jnp.arange(new_tokens.shape[1])
        slots = jnp.where(j < count[:, None], (lengths + generated)[:, None] + j, output.shape[1])
        output = output.at[rows[:, None], slots].set(new_tokens, mode="drop")
        kv = {name: compact_cache(new_cache[name], start, jnp.maximum(path_nodes, 0)) for name in ("k", "v")}
        cache = {**kv, "lengths": jnp.where(done, start, start + accepted_length + 1)}
        candidates = jnp.where(done[:, None], candidates,
                               head_candidates(config, params, hidden[rows, last_node], tree))
        active = ~done
        generated = generated + count
        done = done | stopped | (generated >= max_new_tokens)
        return (i + 1, output, cache, jnp.where(active, next_token, root), candidates, generated, done,
                accepted_sum + jnp.sum(jnp.where(active, accepted_length + 1, 0)), active_steps + jnp.sum(active))

    zero = jnp.int32(0)
    carry = (jnp.int32(1), output, cache, root, candidates, generated, done, zero, zero)
    carry = jax.lax.while_loop(keep_going, step, carry)
    return carry[1], carry[7], carry[8], carry[0] - 1


def medusa_generate(model, params, prompts: Sequence[Sequence[int]] | np.ndarray | jax.Array, *, max_new_tokens: int,
                    medusa_choices, acceptance: str = "greedy", temperature: float = 0.0,
                    posterior_threshold: float = 0.09, posterior_alpha: float = 0.3, rng=None,
                    eos_id: int | Sequence[int] | None = None, pad_id: int = 0):
    """Continues each prompt by `max_new_tokens` tokens with Medusa decoding (module docstring).

    `model` is a `MedusaLM` (research/models/medusa.py) and `params` its {"backbone", "medusa"}
    parameters; prompts, `eos_id`, `pad_id` and the result `[batch, prompt_len + max_new_tokens]`
    are `generate`'s. `medusa_choices` is the tree (research/decoding/medusa_tree.py). `acceptance`
    "greedy" (temperature 0) or "typical" (ε = `posterior_threshold`, δ = `posterior_alpha`;
    temperature > 0 samples the base model's tokens and needs `rng`).

    Returns (tokens, stats) with stats {"mean_accepted_length": tokens a tree pass emits, averaged
    over the passes of the rows still decoding (1.0 is plain decoding), "forward_passes": the
    prefill plus the tree passes}. Raises ValueError naming the argument for bad prompts, trees,
    acceptance rules or numbers.
    """
    config = model.config
    if "medusa" not in config:
        raise ValueError("model must be a MedusaLM (research/models/medusa.py): its config has no medusa section")
    if acceptance not in ACCEPTANCE_RULES:
        raise ValueError(f"acceptance must be one of {ACCEPTANCE_RULES}, got {acceptance!r}")
    tokens, lengths, pad_id, max_new_tokens = checked_prompts(prompts, pad_id, max_new_tokens, config)
    temperature = greedy_or_temperature(temperature)
    if acceptance == "greedy" and temperature > 0:
        raise ValueError(f"acceptance='greedy' follows the base model's argmax: temperature must be below "
                         f"{GREEDY_BELOW}, got {temperature} (acceptance='typical' samples)")
    if temperature > 0 and rng is None:
        raise ValueError(f"sampling (temperature >= GREEDY_BELOW = {GREEDY_BELOW}) needs an rng key")
    if not 0 < posterior_threshold <= 1:
        raise ValueError(f"posterior_threshold (ε) must be in (0, 1], got {posterior_threshold!r}")
    if not 0 < posterior_alpha <= 1:
        raise ValueError(f"posterior_alpha (δ) must be in (0, 1], got {posterior_alpha!r}")
    choices = normalised_choices(medusa_choices)
    medusa_tree(choices, num_heads=config.medusa.num_heads, max_top_k=config.vocab_size)  # ValueError if bad
    output, accepted_sum, active_steps, tree_passes = medusa_generate_padded(
        model, params, jnp.asarray(tokens), jnp.asarray(lengths), jax.random.key(0) if rng is None else rng,
        max_new_tokens=max_new_tokens, choices=choices, acceptance=acceptance, temperature=temperature,
        posterior_threshold=float(posterior_threshold), posterior_alpha=float(posterior_alpha),
        stop_ids=stop_id_tuple(eos_id, config.vocab_size), pad_id=pad_id)
    accepted_sum, active_steps, tree_passes = (int(x) for x in jax.device_get((accepted_sum, active_steps, tree_passes)))
    return output, {"mean_accepted_length": accepted_sum / max(active_steps, 1), "forward_passes": 1 + tree_passes}
