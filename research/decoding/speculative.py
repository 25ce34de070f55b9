"""Speculative sampling: a small draft model proposes, the target verifies, the output is the target's.

Each round, for every row at once (Leviathan et al., 2023; Chen et al., 2023):
  1. the draft samples γ = `num_draft_tokens` tokens x_1..x_γ one call at a time, x_i ~ q_i;
  2. the target scores the newest emitted token and x_1..x_γ in ONE call at positions L..L+γ,
     giving p_1..p_{γ+1};
  3. `verify_proposals` (research/decoding/speculative_verify.py) accepts a prefix x_1..x_a and
     draws one more token (the residual norm(max(0, p_{a+1} − q_{a+1})), or the bonus from p_{γ+1}
     when a = γ): the row emits a + 1 tokens, each distributed exactly as the target's p.
p and q are the distributions actually sampled (temperature, top-k, top-p), so the output has the
distribution of `generate` with the target alone and those settings; at temperature 0 it is the
target's greedy decoding token for token.

Rows advance by different amounts. The KV caches are rolled back per row by their lengths alone:
a decode call writes its keys at `cache["lengths"]` onwards and a query sees only entries at
positions ≤ its own (research/models/layers.py `cached_attention`), so entries past a row's
length are invisible and overwritten later. Invariant at the start of a round, with L_b the
position of row b's newest token: the target's cache holds positions < L_b, the draft's < L_b − 1;
the draft's first call of a round takes the two tokens at L_b − 1 and L_b (the one at L_b − 1 is
missing from its cache after a round that accepted all γ proposals). The prefill of both models
emits the first new token from the target, so L_b − 1 is always a real position.

The whole decode is one jitted program: the prefills, then a `lax.while_loop` of rounds until every
row has `max_new_tokens` tokens or has emitted a stop id; finished rows stop changing. Buffers hold
γ + 1 positions beyond prompt + `max_new_tokens` so no write of a round is ever clipped.
"""

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from research.decoding.sampling import checked_int, checked_sampling, pad_prompts, stop_id_tuple, unrolled
from research.decoding.speculative_verify import overlap, sample_from, token_probabilities, verify_proposals
from research.models.layers import kv_cache_length
from research.models.llama import init_cache


@dataclasses.dataclass(frozen=True)
class SpeculativeStats:
    """What one `speculative_generate` call measured (Python numbers).

    A row-round is one round in which a row still decoded. Per row-round the target call yields
    a + 1 tokens (a accepted proposals), counted before cuts at a stop id or `max_new_tokens`.
    """

    num_draft_tokens: int  # γ
    target_calls: int  # the prefill and one per round
    draft_calls: int  # the prefill and γ per round
    row_rounds: int
    proposals_tested: int  # proposals right after an accepted prefix (those whose test decided the round)
    acceptance_rate: float  # accepted proposals / (γ · row_rounds)
    alpha: float  # mean of β = Σ min(p, q) over the tested proposals' positions
    tokens_per_target_call: float  # mean of a + 1 over row-rounds
    accepted_at_position: tuple[int, ...]  # [i]: row-rounds in which proposal i + 1 was accepted
    accepted_per_row: tuple[int, ...]
    rounds_per_row: tuple[int, ...]


def ratio(numerator, denominator) -> float:
    """numerator / denominator as a float; NaN when nothing was counted."""
    return float(numerator) / float(denominator) if denominator else math.nan


def propose(draft, params, cache, before, newest, position, rng, *, num_draft_tokens, probabilities):
    """(proposals `[batch, γ]`, their q `[batch, γ, V]`, the draft's cache) after the tokens `before`
    and `newest` at `position − 1` and `position`: one call on those two tokens, then γ − 1 calls on
    one token each."""

    def draw(logits, index):
        q = probabilities(logits[:, -1])
        return q, sample_from(jax.random.fold_in(rng, index), q)

    logits, cache = draft.apply({"params": params}, jnp.stack([before, newest], axis=1),
                                cache={**cache, "lengths": position - 1}, decode=True)
    q, token = draw(logits, 0)

    def step(carry, index):
        cache, token = carry
        logits, cache = draft.apply({"params": params}, token[:, None], cache=cache, decode=True)
        q, token = draw(logits, index)
        return (cache, token), (token, q)

    (cache, _), (tokens, qs) = jax.lax.scan(step, (cache, token), jnp.arange(1, num_draft_tokens))
    proposals = jnp.concatenate([token[:, None], tokens.T], axis=1)
    q = jnp.concatenate([q[:, None], qs.transpose(1, 0, 2)], axis=1)
    return proposals, q, cache


def round_tokens(proposals, accepted, next_token, pad_id: int):
    """`[batch, γ + 1]`: the accepted proposals, the next token, then `pad_id`."""
    slots = jnp.arange(proposals.shape[1] + 1)
    padded = jnp.concatenate([proposals, jnp.full_like(proposals[:, :1], pad_id)], axis=1)
    return jnp.where(slots < accepted[:, None], padded, jnp.where(slots == accepted[:, None], next_token[:, None],
                                                                  pad_id))


def counted(counters: dict, active, accepted, overlaps) -> dict:
    """`counters` plus one round of the `active` rows: `accepted [batch]` proposals of each, and the
    overlaps β `[batch, γ]` at the positions whose proposal was tested (up to the first rejection)."""
    positions = jnp.arange(overlaps.shape[1])
    tested = active[:, None] & (positions <= accepted[:, None])
    return dict(
        accepted_per_row=counters["accepted_per_row"] + jnp.where(active, accepted, 0),
        rounds_per_row=counters["rounds_per_row"] + active,
        accepted_at_position=counters["accepted_at_position"]
        + jnp.sum(active[:, None] & (positions < accepted[:, None]), axis=0),
        overlap_sum=counters["overlap_sum"] + jnp.sum(jnp.where(tested, overlaps, 0.0)),
        proposals_tested=counters["proposals_tested"] + jnp.sum(tested))


def emitted_count(new_tokens, accepted, emitted_so_far, done, *, max_new_tokens, stop_ids):
    """(tokens of `new_tokens [batch, γ + 1]` a row keeps, whether it hit a stop id): the a + 1
    emitted, cut after the first stop id and at `max_new_tokens`; 0 for rows already done."""
    count = accepted + 1
    stopped = jnp.zeros_like(done)
    if stop_ids:
        slot = jnp.arange(new_tokens.shape[1])
        is_stop = jnp.isin(new_tokens, jnp.array(stop_ids, jnp.int32)) & (slot <= accepted[:, None])
        stopped = is_stop.any(axis=1)
        count = jnp.where(stopped, jnp.minimum(count, jnp.argmax(is_stop, axis=1) + 1), count)
    count = jnp.where(done, 0, jnp.minimum(count, max_new_tokens - emitted_so_far))
    return count, stopped


@functools.partial(jax.jit, static_argnames=("target", "draft", "max_new_tokens", "num_draft_tokens", "temperature",
                                             "top_k", "top_p", "stop_ids", "pad_id", "verify"))
def speculative_padded(target, target_params, draft, draft_params, tokens, lengths, rng, *, max_new_tokens,
                       num_draft_tokens, temperature, top_k, top_p, stop_ids, pad_id, verify):
    """The jitted core of `speculative_generate` on right-padded prompts `tokens [B, P]` of `lengths [B]`.

    `verify(rng, proposals, p, q) -> (accepted, next_token)` is the acceptance rule (static;
    `verify_proposals` is the exact one). Returns (tokens `[B, P + max_new_tokens]`, rounds, the
    per-row and per-position counters of `SpeculativeStats` as arrays).
    """
    batch, prompt_len = tokens.shape
    gamma = num_draft_tokens
    rows = jnp.arange(batch)
    slots = jnp.arange(gamma + 1)  # a round's new tokens: up to γ proposals and one more
    buffer_len = prompt_len + max_new_tokens + gamma + 1
    target, target_params = unrolled(target, target_params)
    draft, draft_params = unrolled(draft, draft_params)
    probabilities = functools.partial(token_probabilities, temperature=temperature, top_k=top_k, top_p=top_p)
    first_key, rounds_key = jax.random.split(rng)

    def prefill(model, params):
        cache = init_cache(model.config, batch, kv_cache_length(buffer_len, model.config.attention_impl))
        logits, cache = model.apply({"params": params}, tokens, cache=cache, decode=True)
        return logits[rows, lengths - 1], cache

    first_logits, target_cache = prefill(target, target_params)
    _, draft_cache = prefill(draft, draft_params)
    first = sample_from(first_key, probabilities(first_logits))
    output = jnp.concatenate([tokens, jnp.full((batch, buffer_len - prompt_len), pad_id, jnp.int32)], axis=1)
    output = output.at[rows, lengths].set(first)
    emitted = jnp.ones((batch,), jnp.int32)
    done = jnp.isin(first, jnp.array(stop_ids, jnp.int32)) | (max_new_tokens == 1)
    counters = dict(accepted_per_row=jnp.zeros((batch,), jnp.int32), rounds_per_row=jnp.zeros((batch,), jnp.int32),
                    accepted_at_position=jnp.zeros((gamma,), jnp.int32), overlap_sum=jnp.float32(0),
                    proposals_tested=jnp.int32(0))

    def keep_going(carry):
        done = carry[5]
        return ~jnp.all(done)

    def one_round(carry):
        round_index, output, target_cache, draft_cache, emitted, done, counters = carry
        draft_key, verify_key = jax.random.split(jax.random.fold_in(rounds_key, round_index))
        position = lengths + emitted - 1  # of each row's newest token, in neither cache yet
        newest = output[rows, position]
        proposals, q, draft_cache = propose(draft, draft_params, draft_cache, output[rows, position - 1], newest,
                                            position, draft_key, num_draft_tokens=gamma, probabilities=probabilities)
        logits, target_cache = target.apply({"params": target_params},
                                            jnp.concatenate([newest[:, None], proposals], axis=1),
                                            cache={**target_cache, "lengths": position}, decode=True)
        p = probabilities(logits)
        accepted, next_token = verify(verify_key, proposals, p, q)
        new_tokens = round_tokens(proposals, accepted, next_token, pad_id)
        count, stopped = emitted_count(new_tokens, accepted, emitted, done, max_new_tokens=max_new_tokens,
                                       stop_ids=stop_ids)
        output = output.at[rows[:, None], (lengths + emitted)[:, None] + slots].set(
            jnp.where(slots < count[:, None], new_tokens, pad_id))
        counters = counted(counters, ~done, accepted, overlap(p[:, :gamma], q))
        emitted = emitted + count
        done = done | stopped | (emitted >= max_new_tokens)
        return round_index + 1, output, target_cache, draft_cache, emitted, done, counters

    carry = (jnp.int32(0), output, target_cache, draft_cache, emitted, done, counters)
    rounds, output, _, _, _, _, counters = jax.lax.while_loop(keep_going, one_round, carry)
    return output[:, : prompt_len + max_new_tokens], rounds, counters


def stats_of(rounds, counters, num_draft_tokens: int) -> SpeculativeStats:
    """`SpeculativeStats` from the counters `speculative_padded` returns."""
    counters = jax.tree.map(np.asarray, counters)
    rounds, row_rounds = int(rounds), int(counters["rounds_per_row"].sum())
    accepted = int(counters["accepted_per_row"].sum())
    return SpeculativeStats(
        num_draft_tokens=num_draft_tokens, target_calls=rounds + 1, draft_calls=rounds * num_draft_tokens + 1,
        row_rounds=row_rounds, proposals_tested=int(counters["proposals_tested"]),
        acceptance_rate=ratio(accepted, num_draft_tokens * row_rounds),
        alpha=ratio(counters["overlap_sum"], counters["proposals_tested"]),
        tokens_per_target_call=ratio(accepted + row_rounds, row_rounds),
        accepted_at_position=tuple(counters["accepted_at_position"].tolist()),
        accepted_per_row=tuple(counters["accepted_per_row"].tolist()),
        rounds_per_row=tuple(counters["rounds_per_row"].tolist()))


def check_context(name: str, config, needed: int, prompt_len: int, max_new_tokens: int, gamma: int) -> None:
    """ValueError unless `config.max_seq_len` holds `needed` = prompt + new tokens + γ + 1 positions."""
    if needed > config.max_seq_len:
        raise ValueError(f"prompt length {prompt_len} + max_new_tokens {max_new_tokens} + num_draft_tokens "
                         f"{gamma} + 1 = {needed} exceeds the {name}'s model.max_seq_len {config.max_seq_len}")


def speculative_generate(target, target_params, draft, draft_params,
                         prompts: Sequence[Sequence[int]] | np.ndarray | jax.Array, *, max_new_tokens: int,
                         num_draft_tokens: int, temperature: float = 0.0, top_k: int | None = None,
                         top_p: float | None = None, rng=None, eos_id: int | Sequence[int] | None = None,
                         pad_id: int = 0):
    """`generate`'s output from the target, decoded with `num_draft_tokens` (γ) proposals of `draft`
    per target call; returns (tokens `[batch, prompt_len + max_new_tokens]`, `SpeculativeStats`).

    Arguments and the token layout are `generate`'s (research/decoding/sampling.py). Raises
    ValueError, before anything compiles, for what `generate` refuses, for a draft whose vocabulary
    differs from the target's, a γ that is not an int >= 1, and prompts that leave either model's
    `max_seq_len` no room for max_new_tokens + γ + 1 positions.
    """
    config, draft_config = target.config, draft.config
    if draft_config.vocab_size != config.vocab_size:
        raise ValueError(f"the draft's vocab_size {draft_config.vocab_size} differs from the target's "
                         f"{config.vocab_size}; speculative decoding needs one vocabulary")
    gamma = checked_int("num_draft_tokens", num_draft_tokens, 1)
    pad_id = checked_int("pad_id", pad_id, 0, config.vocab_size)
    tokens, lengths = pad_prompts(prompts, pad_id, config.vocab_size)
    max_new_tokens = checked_int("max_new_tokens", max_new_tokens, 1)
    needed = tokens.shape[1] + max_new_tokens + gamma + 1
    check_context("target", config, needed, tokens.shape[1], max_new_tokens, gamma)
    check_context("draft", draft_config, needed, tokens.shape[1], max_new_tokens, gamma)
    temperature, top_k, rng = checked_sampling(temperature, rng, top_k, top_p, config.vocab_size)
    stop_ids = stop_id_tuple(eos_id, config.vocab_size)
    output, rounds, counters = speculative_padded(
        target, target_params, draft, draft_params, jnp.asarray(tokens), jnp.asarray(lengths), rng,
        max_new_tokens=max_new_tokens, num_draft_tokens=gamma, temperature=temperature, top_k=top_k, top_p=top_p,
        stop_ids=stop_ids, pad_id=pad_id, verify=verify_proposals)
    return output, stats_of(rounds, counters, gamma)
