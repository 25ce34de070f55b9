"""Multi-turn rollouts with the `python` tool: the model writes a turn, a call in it runs in the sandbox,
the tool's output is appended as a turn of its own, and the model goes on, until it answers.

Each row starts from its prompt (research/rl/tool_calls.py `tools_prompt_ids`) and repeats

    model turn    sampled until a stop id, at most `turn_tokens` and the room left in `max_length`
    tool turn     if the turn's answer is a call and fewer than `max_tool_turns` calls ran: the call's
                  output (or the error a bad call gets) as `tool_turn(output)`, tokens masked out

and ends at a final answer, at a call past the limit (the call then is the answer, worth nothing),
or when the tokens reach `max_length` (truncated; a tool turn that does not fit leaves no room for
the model and is cut). The calls of all rows of one turn run together (`run_tools`, by default in
the sandbox), so a turn costs one batched decode and one parallel sandbox round.

The result is the rollout engine's `Rollout` (research/rl/rollout.py) over the whole transcript:
`response_mask` is 1 exactly on the model's own tokens of every turn (the loss never sees the tool's
output or the prompt), `log_probs` come from one teacher-forced pass over the transcript, and
`truncated` marks rows that ran out of room; each row's `Episode` keeps its last model turn, whose
answer is what the verifier judges (the reward is on the final answer alone).
"""

import dataclasses
import functools
import itertools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from research.data.reasoning import parse_completion, stop_ids
from research.decoding.sampling import generate_padded, greedy_or_temperature
from research.decoding.structured.tools import ToolCall
from research.rl.rollout import Rollout, policy_log_probs
from research.rl.tool_calls import requested_call, run_python, tool_turn

# (sequences, room for each) -> each sequence's next model turn: at most its room, cut after a stop id
TurnSampler = Callable[[Sequence[Sequence[int]], Sequence[int]], Sequence[Sequence[int]]]


@dataclasses.dataclass(frozen=True)
class Episode:
    """One row's transcript: `tokens` (prompt, model turns, tool turns), `model_mask` (True on the
    model's tokens), the `prompt_length`, the `tool_calls` answered, the `final_turn`'s token ids and
    whether the row was `truncated`."""

    tokens: tuple[int, ...]
    model_mask: tuple[bool, ...]
    prompt_length: int
    tool_calls: int
    final_turn: tuple[int, ...]
    truncated: bool


def play(sample_turns: TurnSampler, tokenizer, prompts: Sequence[Sequence[int]], *, max_length: int,
         max_tool_turns: int, run_tools: Callable[[Sequence[str]], Sequence[str]] = run_python) -> list[Episode]:
    """Every prompt's episode (module docstring); `sample_turns` writes the model's turns, `run_tools`
    maps programs to outputs. ValueError for a prompt with no room left in `max_length` or a negative
    `max_tool_turns`."""
    if max_tool_turns < 0:
        raise ValueError(f"max_tool_turns must be >= 0, got {max_tool_turns}")
    for index, prompt in enumerate(prompts):
        if len(prompt) >= max_length:
            raise ValueError(f"prompt {index} has {len(prompt)} tokens, no room for a response in "
                             f"max_length {max_length}")
    stops = set(stop_ids(tokenizer))
    tokens, masks = [list(prompt) for prompt in prompts], [[False] * len(prompt) for prompt in prompts]
    calls, final, truncated = [0] * len(prompts), [()] * len(prompts), [False] * len(prompts)
    active = list(range(len(prompts)))
    while active:
        turns = sample_turns([tokens[row] for row in active], [max_length - len(tokens[row]) for row in active])
        requests = []
        for row, turn in zip(active, turns):
            turn = tuple(turn)[:max_length - len(tokens[row])]
            tokens[row] += turn
            masks[row] += [True] * len(turn)
            final[row] = turn
            if not turn or turn[-1] not in stops:
                truncated[row] = True
                continue
            request = requested_call(parse_completion(tokenizer, turn).answer)
            if request is not None and calls[row] < max_tool_turns:
                requests.append((row, request))
        programs = [request.arguments["code"] for _, request in requests if isinstance(request, ToolCall)]
        outputs = iter(run_tools(programs) if programs else ())
        active = []
        for row, request in requests:
            output = next(outputs) if isinstance(request, ToolCall) else request
            calls[row] += 1
            turn = tokenizer.encode(tool_turn(output))
            room = max_length - len(tokens[row])
            tokens[row] += turn[:room]
            masks[row] += [False] * min(len(turn), room)
            if len(turn) >= room:
                truncated[row] = True
            else:
                active.append(row)
    return [Episode(tuple(tokens[row]), tuple(masks[row]), len(prompts[row]), calls[row], final[row], truncated[row])
            for row in range(len(prompts))]


def policy_turns(model, params, tokenizer, rng, *, batch_size: int, max_length: int, turn_tokens: int,
                 temperature: float = 1.0, top_p: float | None = None) -> TurnSampler:
    """A TurnSampler drawing from `model` with `params`: each call decodes one batch of fixed shape
    `[batch_size, max_length]` (the rows given, then copies of the first as filler) with the KV-cache
    decoder for `turn_tokens` tokens, with its own key folded from `rng`."""
    calls = itertools.count()
    stops, temperature = stop_ids(tokenizer), greedy_or_temperature(temperature)

    def sample(sequences, rooms):
        if len(sequences) > batch_size:
            raise ValueError(f"{len(sequences)} sequences exceed the sampler's batch_size {batch_size}")
        filled = list(sequences) + [sequences[0]] * (batch_size - len(sequences))
        buffer = np.full((batch_size, max_length), tokenizer.pad_id, np.int32)
        for row, sequence in enumerate(filled):
            buffer[row, :len(sequence)] = sequence
        lengths = np.asarray([len(sequence) for sequence in filled], np.int32)
        output = generate_padded(model, params, jnp.asarray(buffer), jnp.asarray(lengths),
                                 jax.random.fold_in(rng, next(calls)), max_new_tokens=turn_tokens,
                                 temperature=temperature, top_k=None, top_p=top_p, stop_ids=stops,
                                 pad_id=tokenizer.pad_id)
        output = np.asarray(multihost_utils.process_allgather(output, tiled=True))
        return [up_to_stop(output[row, lengths[row]:lengths[row] + min(room, turn_tokens)], stops)
                for row, room in enumerate(rooms)]

    return sample


def up_to_stop(turn, stops) -> list[int]:
    """A sampled turn up to and including its first stop id (all of it without one)."""
    ends = np.flatnonzero(np.isin(turn, stops))
    return np.asarray(turn[:ends[0] + 1 if ends.size else len(turn)]).tolist()


@functools.partial(jax.jit, static_argnums=0, static_argnames="temperature")
def masked_log_probs(model, params, tokens, mask, *, temperature: float):
    """`policy_log_probs` where `mask` is set, 0 elsewhere."""
    return jnp.where(mask, policy_log_probs(model, params, tokens, temperature=temperature), 0.0)


def episodes_rollout(model, params, episodes: Sequence[Episode], *, length: int, pad_id: int,
                     temperature: float = 1.0, reference_params=None) -> Rollout:
    """The episodes as one `Rollout` of width `length`: tokens right-padded with `pad_id`, the model's
    tokens as the response mask, their log-probabilities under `params` (and `reference_params`)."""
    tokens = np.full((len(episodes), length), pad_id, np.int32)
    mask = np.zeros((len(episodes), length), bool)
    for row, episode in enumerate(episodes):
        tokens[row, :len(episode.tokens)] = episode.tokens
        mask[row, :len(episode.model_mask)] = episode.model_mask
    tokens, mask = jnp.asarray(tokens), jnp.asarray(mask)
    reference = None if reference_params is None else masked_log_probs(
        model, jax.lax.stop_gradient(reference_params), tokens, mask, temperature=temperature)
    return Rollout(tokens=tokens, response_mask=mask,
                   log_probs=masked_log_probs(model, params, tokens, mask, temperature=temperature),
                   ref_log_probs=reference, truncated=jnp.asarray([e.truncated for e in episodes]))


def agentic_rollout(model, params, tokenizer, prompts: Sequence[Sequence[int]], rng, *, max_length: int,
                    turn_tokens: int, max_tool_turns: int, temperature: float = 1.0, top_p: float | None = None,
                    reference_params=None, run_tools=run_python) -> tuple[Rollout, list[Episode]]:
    """(the Rollout, each row's Episode) of `prompts` answered by `model` with the `python` tool."""
    sampler = policy_turns(model, params, tokenizer, rng, batch_size=len(prompts), max_length=max_length,
                           turn_tokens=turn_tokens, temperature=temperature, top_p=top_p)
    episodes = play(sampler, tokenizer, prompts, max_length=max_length, max_tool_turns=max_tool_turns,
                    run_tools=run_tools)
    rollout = episodes_rollout(model, params, episodes, length=max_length, pad_id=tokenizer.pad_id,
                               temperature=temperature, reference_params=reference_params)
    return rollout, episodes
