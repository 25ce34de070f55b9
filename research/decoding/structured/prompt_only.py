"""The prompt-only baseline (Kor style): the schema is described in the prompt, with worked
examples, the model writes freely, and the first JSON value in its text is parsed afterwards.
Nothing guarantees that a value is there or that it satisfies the schema."""

import json
from collections.abc import Sequence

INSTRUCTION = "Answer with one JSON document that follows this JSON Schema:"


def schema_prompt(schema, prompt: str, examples: Sequence[tuple[str, object]] = ()) -> str:
    """`prompt` preceded by the schema (compact JSON) and `examples` ((prompt, value) pairs)
    written as the model should answer them."""
    lines = [INSTRUCTION, json.dumps(schema, separators=(",", ":"), ensure_ascii=False)]
    for example_prompt, value in examples:
        lines += [example_prompt + json.dumps(value, separators=(",", ":"), ensure_ascii=False)]
    return "\n".join(lines + [prompt])


def first_json_value(text: str):
    """The first JSON object or array in `text` (decoded from the first "{" or "[" at which a
    whole value parses), or None if there is none."""
    decoder = json.JSONDecoder()
    for start, char in enumerate(text):
        if char in "{[":
            try:
                return decoder.raw_decode(text, start)[0]
            except json.JSONDecodeError:
                continue
    return None
