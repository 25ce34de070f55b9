"""`generate(..., constraint=...)` and `generate_json`: a random untrained model at temperature 1
writes only schema-valid documents (unbounded strings and arrays included), whitespace cannot
loop, a budget too small fails before decoding, the tables are cached on disk, and a tokenizer
without the needed bytes is refused."""

import json
import re

import jax
import jsonschema
import numpy as np
import pytest

from research.decoding.sampling import generate
from research.decoding.structured import generate_json, json_schema_constraint
from research.decoding.structured.constraint import constraint_from_language
from research.decoding.structured.schema_language import schema_language
from research.decoding.structured.vocabulary import token_bytes

SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0},
                                      "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}}},
     "required": ["name", "age", "tags"], "additionalProperties": False},
    {"type": "array", "items": {"anyOf": [{"type": "number"}, {"type": "boolean"}, {"type": "null"}]},
     "minItems": 2},
    {"type": "object", "properties": {"when": {"type": "string", "format": "date"},
                                      "id": {"type": "string", "format": "uuid"},
                                      "mood": {"enum": ["happy", "sad", 3]}}, "required": ["when", "mood"]},
]
PROMPTS = ["Extract: Ada, 36", "x", "{", "Name: Bob, age 7, city: Paris"]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_random_model_at_temperature_one_writes_only_valid_documents(random_model, byte_tokenizer, schema, tmp_path):
    model, params = random_model
    values = generate_json(model, params, byte_tokenizer, schema, PROMPTS, max_new_tokens=48, temperature=1.0,
                           rng=jax.random.key(3), cache_dir=str(tmp_path))
    assert len(values) == len(PROMPTS)
    for value in values:
        jsonschema.validate(value, schema, format_checker=jsonschema.FormatChecker())


def test_whitespace_cannot_loop_and_greedy_decoding_is_valid_too(random_model, byte_tokenizer, tmp_path):
    model, params = random_model
    schema = {"type": "array", "items": {"type": "boolean"}}
    constraint = json_schema_constraint(schema, byte_tokenizer, whitespace=1, cache_dir=str(tmp_path))
    prompt = [byte_tokenizer.bos_id] + byte_tokenizer.encode("  \n  ")
    for temperature, rng in ((1.0, jax.random.key(5)), (0.0, None)):
        tokens = np.asarray(generate(model, params, [prompt] * 4, max_new_tokens=40, temperature=temperature,
                                     rng=rng, eos_id=byte_tokenizer.eos_id, constraint=constraint))
        for row in tokens[:, len(prompt):].tolist():
            text = byte_tokenizer.decode(row[: row.index(byte_tokenizer.eos_id)] if byte_tokenizer.eos_id in row
                                         else row)
            assert not re.search(r"\s\s", text), text
            jsonschema.validate(json.loads(text), schema)


def test_the_budget_is_checked_before_decoding_and_always_met(random_model, byte_tokenizer, tmp_path):
    model, params = random_model
    schema = {"type": "object", "properties": {"word": {"type": "string", "minLength": 5}}, "required": ["word"]}
    shortest = len('{"word":"12345"}')
    assert json_schema_constraint(schema, byte_tokenizer, cache_dir=str(tmp_path)).min_new_tokens == shortest
    with pytest.raises(ValueError, match=f"max_new_tokens {shortest - 1} is too small.*takes {shortest} tokens"):
        generate_json(model, params, byte_tokenizer, schema, ["a"], max_new_tokens=shortest - 1,
                      cache_dir=str(tmp_path))
    values = generate_json(model, params, byte_tokenizer, schema, PROMPTS, max_new_tokens=shortest, temperature=1.0,
                           rng=jax.random.key(0), cache_dir=str(tmp_path))
    assert all(len(v["word"]) == 5 for v in values)  # exactly the budget: only the shortest documents fit


def test_tables_are_cached_by_schema_and_tokenizer(byte_tokenizer, tmp_path):
    schema = {"type": "string", "maxLength": 4}
    first = json_schema_constraint(schema, byte_tokenizer, cache_dir=str(tmp_path))
    assert len(list(tmp_path.glob("*.npz"))) == 1
    again = json_schema_constraint(schema, byte_tokenizer, cache_dir=str(tmp_path))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    json_schema_constraint(schema, byte_tokenizer, whitespace=0, cache_dir=str(tmp_path))
    json_schema_constraint({"type": "string", "maxLength": 5}, byte_tokenizer, cache_dir=str(tmp_path))
    assert len(list(tmp_path.glob("*.npz"))) == 3


def test_a_vocabulary_without_the_needed_bytes_is_refused(byte_tokenizer):
    vocabulary = [b if b != b'"' else None for b in token_bytes(byte_tokenizer)]
    with pytest.raises(ValueError, match=r"bytes \[b'\"'\] that the schema uses appear in no token"):
        constraint_from_language(schema_language({"type": "string"}), vocabulary)


def test_a_constraint_needs_a_stop_id(random_model, byte_tokenizer, tmp_path):
    model, params = random_model
    constraint = json_schema_constraint({"type": "boolean"}, byte_tokenizer, cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="a constraint needs eos_id"):
        generate(model, params, [[1, 5]], max_new_tokens=8, constraint=constraint)
