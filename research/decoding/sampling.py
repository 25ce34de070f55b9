"""Autoregressive generation with a KV cache: greedy, temperature, top-k and top-p sampling.

One jitted program: a prefill of the (right-padded) prompts, then a `lax.while_loop`
that appends one token per row per iteration until `max_new_tokens` or until every row
has emitted a stop id (`eos_id`: one id or several, e.g. EOS and a chat template's
end-of-turn). Row b's new tokens follow its own prompt (length ℓ_b): they are written at
ℓ_b, ℓ_b+1, ..., so rows of different lengths decode side by side; after its first stop
id a row emits `pad_id`.

Sampling from logits z at temperature T: p ∝ exp(z/T) restricted to the k largest (top-k)
and to the smallest set of most likely tokens whose mass reaches p (top-p, nucleus);
T = 0 is argmax. T < GREEDY_BELOW counts as T = 0: there the runner-up's probability
relative to the argmax, exp(−Δz/T), is below e⁻¹⁰ unless the two largest logits are within
10·T = 1e-5 of each other, while for tiny T z/T overflows float32 (or T underflows to 0) and
the sample would be garbage rather than the argmax.

With a `constraint` (research/decoding/structured: arrays `next_state [S, V]`, `distance [S]`,
`accepting [S]`, start state 0) each row carries a state s, starting at 0 when generation
starts (the prompt does not advance it). With n tokens left, token t is allowed iff
next_state[s, t] ≥ 0 and distance[next_state[s, t]] ≤ n − 1, a stop id iff accepting[s];
the rest get logit −inf before filtering and sampling, and a row with one allowed token takes
it without sampling. So every row ends in an accepting state (a complete document).
"""

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from research.config import unfrozen
from research.models.layers import kv_cache_length
from research.models.llama import init_cache, per_layer_cache, unstack_layers

GREEDY_BELOW = 1e-6  # temperatures below this decode greedily (argmax), as temperature 0


def is_int(value) -> bool:
    """A Python or numpy integer, not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def checked_int(name: str, value, low: int, high: int | None = None) -> int:
    """`value` as an int in [low, high) (high None: no upper bound); ValueError naming `name` otherwise."""
    bounds = f"in [{low}, {high})" if high is not None else f">= {low}"
    if not is_int(value) or value < low or (high is not None and value >= high):
        raise ValueError(f"{name} must be an int {bounds}, got {value!r}")
    return int(value)


def greedy_or_temperature(temperature) -> float:
    """`temperature` as a float, 0.0 below GREEDY_BELOW; ValueError unless a finite real number >= 0."""
    value = np.asarray(temperature)
    if value.ndim or value.dtype.kind not in "iuf" or not math.isfinite(value) or value < 0:
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    return 0.0 if value < GREEDY_BELOW else float(value)


def token_row(row, index: int) -> list[int]:
    """Prompt `index` as a list of ints; ValueError unless it is a sequence of integer token ids."""
    if isinstance(row, (np.ndarray, jax.Array)):
        ids = np.asarray(row)
        if ids.ndim != 1 or ids.dtype.kind not in "iu":
            raise ValueError(f"prompt {index} must be a 1-d array of integer token ids, got {ids.dtype} "
                             f"shape {ids.shape}")
        return ids.tolist()
    if isinstance(row, (str, bytes)) or not isinstance(row, Sequence):
        raise ValueError(f"prompt {index} must be a list of token ids, got {row!r}; prompts is a list of "
                         "token lists (or an int array [batch, prompt_len])")
    bad = [t for t in row if not is_int(t)]
    if bad:
        raise ValueError(f"prompt {index} has token id {bad[0]!r}, which is not an int")
    return [int(t) for t in row]


def pad_prompts(prompts, pad_id: int, vocab_size: int):
    """(tokens `[batch, max_len]` right-padded, lengths `[batch]`) from an array or token lists."""
    if isinstance(prompts, (np.ndarray, jax.Array)):
        array = np.asarray(prompts)
        if array.ndim != 2 or array.dtype.kind not in "iu":
            raise ValueError(f"prompts must be an int array [batch, prompt_len], got {array.dtype} "
                             f"shape {array.shape}")
        rows = array.tolist()
    else:
        rows = [token_row(row, index) for index, row in enumerate(prompts)]
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("every prompt needs at least one token")
    for index, row in enumerate(rows):
        bad = [t for t in row if not 0 <= t < vocab_size]
        if bad:
            raise ValueError(f"prompt {index} has token id {bad[0]} outside the vocabulary [0, {vocab_size})")
    lengths = np.array([len(r) for r in rows], np.int32)
    tokens = np.full((len(rows), lengths.max()), pad_id, np.int32)
    for index, row in enumerate(rows):
        tokens[index, : len(row)] = row
    return tokens, lengths


def stop_id_tuple(eos_id, vocab_size: int) -> tuple[int, ...]:
    """`eos_id` (None, one id, or a sequence of ids) as a sorted tuple of distinct ids, a
    hashable static argument; ValueError naming an id that is not an integer in [0, vocab_size)."""
    ids = np.asarray([] if eos_id is None else eos_id)
    if ids.ndim > 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise ValueError(f"eos_id must be an int or a sequence of ints, got {eos_id!r}")
    outside = [i for i in ids.ravel().tolist() if not 0 <= i < vocab_size]
    if outside:
        raise ValueError(f"eos_id {outside[0]} is outside the vocabulary [0, {vocab_size})")
    return tuple(sorted(set(ids.ravel().tolist())))


def checked_prompts(prompts, pad_id, max_new_tokens, config):
    """(tokens `[B, P]` right-padded, lengths `[B]`, pad_id, max_new_tokens) checked against the model
    `config`: ids in its vocabulary, max_new_tokens a positive int, and room for the prompt and the new
    tokens in `max_seq_len`; ValueError naming the argument otherwise."""
    pad_id = checked_int("pad_id", pad_id, 0, config.vocab_size)
    tokens, lengths = pad_prompts(prompts, pad_id, config.vocab_size)
    max_new_tokens = checked_int("max_new_tokens", max_new_tokens, 1)
    if tokens.shape[1] + max_new_tokens > config.max_seq_len:
        raise ValueError(f"prompt length {tokens.shape[1]} + max_new_tokens {max_new_tokens} exceeds "
                         f"model.max_seq_len {config.max_seq_len}")
    return tokens, lengths, pad_id, max_new_tokens


def checked_sampling(temperature, rng, top_k, top_p, vocab_size: int):
    """(temperature, top_k, rng) of a sampling request, checked: temperature as `greedy_or_temperature`,
    an rng key needed when sampling (a fixed key stands in when greedy), top_k an int in
    [1, vocab_size], top_p in (0, 1]; ValueError naming the argument otherwise."""
    temperature = greedy_or_temperature(temperature)
    if temperature > 0 and rng is None:
        raise ValueError(f"sampling (temperature >= GREEDY_BELOW = {GREEDY_BELOW}) needs an rng key")
    if top_k is not None:
        top_k = checked_int("top_k", top_k, 1, vocab_size + 1)
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    return temperature, top_k, jax.random.key(0) if rng is None else rng


def filter_logits(logits, *, temperature: float, top_k: int | None, top_p: float | None):
    """Logits scaled by 1/T with everything outside the top-k and the top-p nucleus set to −inf."""
    logits = logits.astype(jnp.float32) / temperature
    if top_k is not None:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p is not None:
        sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
        sorted_probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
        kept = mass_before < top_p  # the most likely token is always kept
        threshold = jnp.min(jnp.where(kept, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return logits


def first_argmax(logits):
    """`jnp.argmax` over the last axis as int32: min{v : z_v = max z}, the first NaN if there is one.

    Two plain reductions (a max, then a min over the indices that reach it), which vectorise,
    where `jnp.argmax`'s reduction over (value, index) pairs does not on a CPU."""
    vocab = logits.shape[-1]
    is_max = (logits == jnp.max(logits, axis=-1, keepdims=True)) | jnp.isnan(logits)
    return jnp.min(jnp.where(is_max, jnp.arange(vocab, dtype=jnp.int32), vocab), axis=-1)


def sample_token(logits, rng, *, temperature: float, top_k: int | None, top_p: float | None):
    """One token per row from logits `[batch, vocab]`."""
    if temperature == 0.0:
        return first_argmax(logits)
    filtered = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    return jax.random.categorical(rng, filtered, axis=-1).astype(jnp.int32)


def unrolled(model, params):
    """The model with its layers unrolled and the parameters to match (no weight slicing per step)."""
    if not model.config.scan_layers:
        return model, params
    config = unfrozen(model.config)
    config.scan_layers = False
    return model.clone(config=ml_collections.FrozenConfigDict(config)), unstack_layers(params)


def constrained_token(logits, rng, constraint, state, tokens_left, *, stop_ids, sample):
    """(token [B], next state [B]) under `constraint` from DFA states `state [B]` with
    `tokens_left` tokens (this one included) to finish the document."""
    next_states = constraint.next_state[state]
    finishable = constraint.distance[jnp.maximum(next_states, 0)] <= tokens_left - 1
    allowed = (next_states >= 0) & finishable
    stops = jnp.array(stop_ids, jnp.int32)
    allowed = allowed.at[:, stops].set(constraint.accepting[state][:, None])
    sampled = sample(jnp.where(allowed, logits, -jnp.inf), rng)
    token = jnp.where(allowed.sum(axis=-1) == 1, jnp.argmax(allowed, axis=-1).astype(jnp.int32), sampled)
    moved = jnp.take_along_axis(next_states, token[:, None], axis=1)[:, 0]
    return token, jnp.where(jnp.isin(token, stops), state, moved)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "temperature", "top_k", "top_p",
                                             "stop_ids", "pad_id"))
def generate_padded(model, params, tokens, lengths, rng, constraint=None, *, max_new_tokens, temperature, top_k,
                    top_p, stop_ids, pad_id):
    """The jitted core of `generate` on right-padded prompts `tokens [B, P]` of `lengths [B]`;
    a row stops after emitting any id in the tuple `stop_ids`. `constraint` (or None) holds
    device arrays whose `next_state` has the model's vocabulary as its width."""
    batch, prompt_len = tokens.shape
    rows = jnp.arange(batch)
    model, params = unrolled(model, params)
    cache = per_layer_cache(
        init_cache(model.config, batch, kv_cache_length(prompt_len + max_new_tokens, model.config.attention_impl)))
    logits, cache = model.apply({"params": params}, tokens, cache=cache, decode=True)
    cache = {**cache, "lengths": lengths}
    next_logits = logits[rows, lengths - 1]
    output = jnp.concatenate([tokens, jnp.full((batch, max_new_tokens), pad_id, jnp.int32)], axis=1)
    sample = functools.partial(sample_token, temperature=temperature, top_k=top_k, top_p=top_p)

    def keep_going(carry):
        i, _, _, _, done, _ = carry
        return (i < max_new_tokens) & ~jnp.all(done)

    def step(carry):
        i, output, cache, next_logits, done, state = carry
        step_rng = jax.random.fold_in(rng, i)
        if constraint is None:
            token = sample(next_logits, step_rng)
        else:
            token, moved = constrained_token(next_logits, step_rng, constraint, state, max_new_tokens - i,
                                             stop_ids=stop_ids, sample=sample)
            state = jnp.where(done, state, moved)
        token = jnp.where(done, pad_id, token)
        output = output.at[rows, lengths + i].set(token)
        if stop_ids:
            done = done | jnp.isin(token, jnp.array(stop_ids, jnp.int32))
        logits, cache = model.apply({"params": params}, token[:, None], cache=cache, decode=True)
        return i + 1, output, cache, logits[:, 0], done, state

    carry = (jnp.int32(0), output, cache, next_logits, jnp.zeros((batch,), bool), jnp.zeros((batch,), jnp.int32))
    return jax.lax.while_loop(keep_going, step, carry)[1]


def device_constraint(constraint, vocab_size: int, max_new_tokens: int, stop_ids: tuple[int, ...]):
    """`constraint`'s arrays on the device, `next_state` widened with −1 to `vocab_size` and the
    states padded with unreachable ones to a power of two (fewer shapes to compile); ValueError
    if it has more token ids than the model, if there is no stop id to end a document with, or if
    the shortest document does not fit in `max_new_tokens`."""
    next_state = np.asarray(constraint.next_state)
    if next_state.shape[1] > vocab_size:
        raise ValueError(f"constraint covers {next_state.shape[1]} token ids, more than the model's vocab_size "
                         f"{vocab_size}")
    if not stop_ids:
        raise ValueError("a constraint needs eos_id: a stop id ends each row's document")
    shortest = int(np.asarray(constraint.distance)[0])
    if shortest > max_new_tokens:
        raise ValueError(f"max_new_tokens {max_new_tokens} is too small: the shortest document the constraint "
                         f"accepts takes {shortest} tokens")
    extra_states = (1 << max(next_state.shape[0] - 1, 1).bit_length()) - next_state.shape[0]
    widened = np.pad(next_state, ((0, extra_states), (0, vocab_size - next_state.shape[1])), constant_values=-1)
    distance = np.pad(np.asarray(constraint.distance), (0, extra_states))
    accepting = np.pad(np.asarray(constraint.accepting), (0, extra_states))
    return type(constraint)(jnp.asarray(widened), jnp.asarray(distance), jnp.asarray(accepting))


def generate(model, params, prompts: Sequence[Sequence[int]] | np.ndarray | jax.Array, *, max_new_tokens: int,
             temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None, rng=None,
             eos_id: int | Sequence[int] | None = None, pad_id: int = 0, constraint=None):
    """Continues each prompt by `max_new_tokens` tokens; returns `[batch, prompt_len + max_new_tokens]`.

    `prompts` is an int array `[batch, prompt_len]` or a list of token lists of different
    lengths (row b then holds its prompt, its new tokens, and `pad_id` to the end).
    `eos_id` is one stop id or several (e.g. `(tokenizer.eos_id, tokenizer.end_of_turn_id)`):
    a row keeps the first stop id it emits and is padded after it. `temperature` below
    GREEDY_BELOW decodes greedily. Raises ValueError naming the argument for token ids that
    are not ints in [0, vocab_size), a `max_new_tokens` that is not a positive int, or a
    temperature that is not a finite number >= 0.

    `constraint` (e.g. `research.decoding.structured.json_schema_constraint(schema, tokenizer)`)
    restricts each row's new tokens to a complete document of its language followed by a stop
    id (see the module docstring); it needs `eos_id`, and ValueError comes before decoding if
    its shortest document is longer than `max_new_tokens`.
    """
    config = model.config
    tokens, lengths, pad_id, max_new_tokens = checked_prompts(prompts, pad_id, max_new_tokens, config)
    temperature, top_k, rng = checked_sampling(temperature, rng, top_k, top_p, config.vocab_size)
    stop_ids = stop_id_tuple(eos_id, config.vocab_size)
    if constraint is not None:
        constraint = device_constraint(constraint, config.vocab_size, max_new_tokens, stop_ids)
    return generate_padded(model, params, jnp.asarray(tokens), jnp.asarray(lengths), rng, constraint,
                           max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                           top_p=top_p, stop_ids=stop_ids, pad_id=pad_id)
