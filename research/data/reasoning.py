"""A "think, then answer" chat template and its parser (Seed-Thinking-v1.5 style).

The model writes its reasoning between `<think>` and `</think>`, then its answer, then
ends its turn with `<|end|>` (the reserved tokens of research/data/tokenizer.py). A
conversation renders as one string, turn after turn, with nothing between the tags and
the content:

    <|system|>{system content}<|end|>\\n        (any number of turns, in order;
    <|user|>{user content}<|end|>\\n             an earlier assistant turn shows only
    <|assistant|>{earlier answer}<|end|>\\n      its answer, not its reasoning)
    <|user|>{user content}<|end|>\\n             (the last turn is the user's)
    <|assistant|><think>                       <- `format_prompt` ends here
    {reasoning}</think>{answer}<|end|>         <- `format_example` adds this line

The prompt ends with the `<think>` id, so the model starts by thinking, and the
prompt/completion boundary is a token boundary with every tokenizer. Generation stops
at the end-of-turn token: pass `stop_ids(tokenizer)` as `generate(..., eos_id=...)`.

`parse_response` splits a response into its thinking and its answer, tolerating the
ways a sampled response goes wrong (see its docstring); `parse_completion` does the
same from the token ids `generate` produced after a `format_prompt` prompt.
"""

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from research.data.tokenizer import ASSISTANT, END_OF_TURN, END_THINK, RESERVED_TOKENS, SYSTEM, THINK, USER

ROLE_TAGS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}

Messages = str | Sequence[Mapping[str, str]]


@dataclasses.dataclass(frozen=True)
class ReasoningResponse:
    """A response split at its `</think>`: `well_formed` is True when the response had
    the template's layout, `[<think>] thinking </think> answer [<|end|>]`, with no other
    reserved tag in the thinking or the answer."""

    thinking: str
    answer: str
    well_formed: bool


def _check_free_of_tags(text: str, what: str) -> None:
    """ValueError if `text` contains a reserved tag: it would break the template's layout."""
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a string, got {type(text).__name__}")
    tags = [tag for tag in RESERVED_TOKENS if tag in text]
    if tags:
        raise ValueError(f"{what} contains the reserved tag {tags[0]!r}")


def _as_messages(messages: Messages) -> list[Mapping[str, str]]:
    """`messages` as a list of {"role", "content"}; a string is one user message."""
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    return list(messages)


def format_prompt(messages: Messages) -> str:
    """The conversation `messages` ({"role": "system" | "user" | "assistant", "content": str}
    each, the last one the user's; or one string, a single user message), rendered and
    followed by the opened assistant turn `<|assistant|><think>`.

    ValueError naming the message that is not such a mapping, has an unknown role or
    content with a reserved tag, or is last but not the user's.
    """
    messages = _as_messages(messages)
    if not messages:
        raise ValueError("a prompt needs at least one message")
    turns = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(f"message {index} must be a mapping with 'role' and 'content', got {message!r}")
        role = message.get("role")
        if role not in ROLE_TAGS:
            raise ValueError(f"message {index} has role {role!r}; known roles: {sorted(ROLE_TAGS)}")
        content = message.get("content")
        _check_free_of_tags(content, f"message {index}'s content")
        turns.append(f"{ROLE_TAGS[role]}{content}{END_OF_TURN}\n")
    if messages[-1]["role"] != "user":
        raise ValueError(f"the last message must be the user's, got role {messages[-1]['role']!r}")
    return "".join(turns) + ASSISTANT + THINK


def format_example(messages: Messages, reasoning: str, answer: str) -> str:
    """The full training text: `format_prompt(messages)`, then `reasoning</think>answer<|end|>`.

    ValueError if `reasoning` or `answer` contains a reserved tag (or as `format_prompt`).
    """
    _check_free_of_tags(reasoning, "reasoning")
    _check_free_of_tags(answer, "answer")
    return f"{format_prompt(messages)}{reasoning}{END_THINK}{answer}{END_OF_TURN}"


def _has_tag(text: str) -> bool:
    return any(tag in text for tag in RESERVED_TOKENS)


def parse_response(text: str) -> ReasoningResponse:
    """Splits an assistant response into its thinking and its answer, both stripped of
    surrounding whitespace. Everything from the first `<|end|>` on is ignored, and so is
    one `<think>` at the very start. Then:

    - with a `</think>`: the thinking is the text before the LAST `</think>`, the
      answer the text after it, so a response that closes, reopens and closes its
      thinking again answers with what follows its final `</think>`. A missing opening
      `<think>` is fine (the prompt opened it). Any other tag left in the thinking or
      the answer (repeated tags) makes the response not well formed.
    - without a `</think>` but with a `<think>` (opened, then ran out of tokens while
      thinking): all of it is thinking, the answer is "", not well formed.
    - with no think tag at all: all of it is the answer, not well formed.

    To parse what a model wrote after `format_prompt`'s prompt, which already opened
    `<think>`, pass `THINK + completion` (as `parse_completion` does): a completion that
    ran out of tokens while thinking then counts as unclosed thinking, not as an answer.
    """
    body = text.split(END_OF_TURN, 1)[0].strip()
    opened = body.startswith(THINK)
    body = body[len(THINK):] if opened else body
    closed = END_THINK in body
    if closed:
        thinking, _, answer = body.rpartition(END_THINK)
    elif opened or THINK in body:
        thinking, answer = body, ""
    else:
        thinking, answer = "", body
    thinking, answer = thinking.strip(), answer.strip()
    return ReasoningResponse(thinking, answer, closed and not _has_tag(thinking) and not _has_tag(answer))


def stop_ids(tokenizer) -> tuple[int, int]:
    """The ids that end an assistant turn, for `generate(..., eos_id=stop_ids(tokenizer))`:
    end-of-turn, and eos in case the model ends the document instead."""
    return tokenizer.end_of_turn_id, tokenizer.eos_id


def parse_completion(tokenizer, ids: Sequence[int]) -> ReasoningResponse:
    """Parses the token ids a model generated after a `format_prompt` prompt (which opened
    `<think>`): cut after the first of `stop_ids(tokenizer)`, decoded, then `parse_response`."""
    ids = np.asarray(ids)
    stops = np.flatnonzero(np.isin(ids, stop_ids(tokenizer)))
    end = stops[0] + 1 if stops.size else ids.size
    return parse_response(THINK + tokenizer.decode(ids[:end]))
