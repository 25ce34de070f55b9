"""`generate_json`: prompts in, parsed JSON values out, with the schema enforced token by token
(constrained) or only described in the prompt (prompt-only, prompt_only.py)."""

import json
from collections.abc import Sequence

import numpy as np

from research.decoding.sampling import generate
from research.decoding.structured.constraint import json_schema_constraint
from research.decoding.structured.prompt_only import first_json_value, schema_prompt
from research.decoding.structured.schema_language import DEFAULT_WHITESPACE


def completions(tokens, prompt_lengths: Sequence[int], tokenizer, stop_ids: Sequence[int]) -> list[str]:
    """The text each row of `generate`'s output adds after its prompt, up to its first stop id."""
    texts = []
    for row, length in zip(np.asarray(tokens).tolist(), prompt_lengths):
        new = row[length:]
        stops = [i for i, token in enumerate(new) if token in stop_ids]
        texts.append(tokenizer.decode(new[: stops[0]] if stops else new))
    return texts


def constrained_texts(model, params, tokenizer, constraint, prompt_ids: list[list[int]], *, max_new_tokens: int,
                      temperature: float, rng, stop_ids: Sequence[int]) -> list[str]:
    """The documents `constraint` lets the model write after each prompt (token ids), as text."""
    tokens = generate(model, params, prompt_ids, max_new_tokens=max_new_tokens, temperature=temperature, rng=rng,
                      eos_id=tuple(stop_ids), constraint=constraint)
    return completions(tokens, [len(p) for p in prompt_ids], tokenizer, stop_ids)


def generate_json(model, params, tokenizer, schema, prompts: Sequence[str], *, max_new_tokens: int,
                  temperature: float = 0.0, rng=None, constrained: bool = True,
                  examples: Sequence[tuple[str, object]] = (), whitespace: int = DEFAULT_WHITESPACE,
                  cache_dir: str | None = None) -> list:
    """One JSON value per prompt (each prompt a string, encoded after BOS).

    constrained=True: the model writes under `json_schema_constraint(schema, tokenizer)`, so
    every value parses and satisfies `schema` (ValueError before decoding if the schema is
    unsupported or its shortest document does not fit in `max_new_tokens`).
    constrained=False: the prompt-only baseline: each prompt is preceded by the schema and
    `examples`, the model writes freely, and the first JSON value of its text is returned
    (None where there is none; it may violate the schema).
    """
    if constrained:
        constraint = json_schema_constraint(schema, tokenizer, whitespace=whitespace, cache_dir=cache_dir)
        prompt_ids = [[tokenizer.bos_id] + tokenizer.encode(p) for p in prompts]
        texts = constrained_texts(model, params, tokenizer, constraint, prompt_ids, max_new_tokens=max_new_tokens,
                                  temperature=temperature, rng=rng, stop_ids=(tokenizer.eos_id,))
        return [json.loads(text) for text in texts]
    prompt_ids = [[tokenizer.bos_id] + tokenizer.encode(schema_prompt(schema, p, examples)) for p in prompts]
    tokens = generate(model, params, prompt_ids, max_new_tokens=max_new_tokens, temperature=temperature, rng=rng,
                      eos_id=tokenizer.eos_id)
    texts = completions(tokens, [len(p) for p in prompt_ids], tokenizer, (tokenizer.eos_id,))
    return [first_json_value(text) for text in texts]
