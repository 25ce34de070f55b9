"""research/decoding/structured/schema_language.py (with number_language, formats, pattern): on
small cases the DFA's language equals the schema's (every string it accepts up to a length
parses and validates; every valid document up to that length in the layout is accepted), and
bad schemas raise errors naming the keyword and path."""

import datetime
import itertools
import json
import re
import uuid

import jsonschema
import numpy as np
import pytest

from research.decoding.structured.dfa import compile_regex
from research.decoding.structured.schema_language import SchemaError, schema_language

FORMATS = jsonschema.FormatChecker()


def automaton(schema, whitespace=0):
    return compile_regex(schema_language(schema, whitespace=whitespace))


def is_valid(text: bytes, schema) -> bool:
    """Whether `text` is one JSON document (strict: no NaN/Infinity) that validates."""
    try:
        value = json.loads(text.decode("utf-8"), parse_constant=lambda name: 1 / 0)
    except (UnicodeDecodeError, ValueError, ZeroDivisionError):
        return False
    return jsonschema.Draft202012Validator(schema, format_checker=FORMATS).is_valid(value)


def accepted_up_to(dfa, length: int) -> list[bytes]:
    """Every string of at most `length` bytes the DFA accepts."""
    found, frontier = [], [(0, b"")]
    for _ in range(length + 1):
        found += [text for state, text in frontier if dfa.accepting[state]]
        frontier = [(int(dfa.transitions[state, byte]), text + bytes([byte])) for state, text in frontier
                    for byte in np.flatnonzero(dfa.transitions[state] >= 0)]
    return found


def random_documents(dfa, count: int, seed: int = 0, stop: float = 0.2) -> list[bytes]:
    """`count` random walks from the start that stop in accepting states."""
    rng, documents = np.random.default_rng(seed), []
    while len(documents) < count:
        state, text = 0, b""
        while not (dfa.accepting[state] and (rng.random() < stop or not (dfa.transitions[state] >= 0).any())):
            byte = rng.choice(np.flatnonzero(dfa.transitions[state] >= 0))
            state, text = int(dfa.transitions[state, byte]), text + bytes([byte])
        documents.append(text)
    return documents


def assert_language_equals_schema(schema, alphabet: bytes, length: int, whitespace=0, walks=100):
    """Over all strings of `alphabet` up to `length` bytes: accepted ⇔ valid; and `walks` random
    accepted strings over any bytes validate."""
    dfa = automaton(schema, whitespace)
    for size in range(length + 1):
        for letters in itertools.product(alphabet, repeat=size):
            text = bytes(letters)
            assert dfa.accepts(text) == is_valid(text, schema), text
    assert all(is_valid(text, schema) for text in random_documents(dfa, walks))


def test_integer_bounds_are_exact():
    schema = {"type": "integer", "minimum": -12, "maximum": 105}
    dfa = automaton(schema)
    for value in range(-300, 300):
        assert dfa.accepts(str(value).encode()) == (-12 <= value <= 105)
    assert not dfa.accepts(b"-0") and not dfa.accepts(b"007")
    assert_language_equals_schema({"type": "integer", "exclusiveMinimum": 7}, b"-0189", 3)


def test_number_bounds_are_exact():
    assert_language_equals_schema({"type": "number", "minimum": -2, "maximum": 3}, b"-0135.", 4)
    assert_language_equals_schema({"type": "number"}, b"-01.e+", 4)


def test_strings_with_lengths_escapes_and_multibyte_characters():
    alphabet = b'"\\an' + "é".encode()
    assert_language_equals_schema({"type": "string", "minLength": 1, "maxLength": 2}, alphabet, 6)


def test_pattern_is_searched_in_the_decoded_string():
    assert_language_equals_schema({"type": "string", "pattern": "^[ab]c?$"}, b'"abc\\', 5)
    assert_language_equals_schema({"type": "string", "pattern": "b{2}"}, b'"ab', 6, walks=0)


def test_objects_keep_declared_order_and_optional_members():
    schema = {"type": "object", "properties": {"a": {"type": "boolean"}, "b": {"type": "null"},
                                               "c": {"enum": [1, "x"]}}, "required": ["b"],
              "additionalProperties": False}
    dfa = automaton(schema)
    documents = sorted(accepted_up_to(dfa, 40))
    expected = []
    for a, c in itertools.product([None, True, False], [None, 1, "x"]):
        value = {**({} if a is None else {"a": a}), "b": None, **({} if c is None else {"c": c})}
        expected.append(json.dumps(value, separators=(",", ":")).encode())
    assert documents == sorted(expected)


def test_arrays_respect_min_and_max_items_and_whitespace_is_bounded():
    schema = {"type": "array", "items": {"type": "boolean"}, "minItems": 1, "maxItems": 2}
    documents = accepted_up_to(automaton(schema), 20)
    expected = [json.dumps(list(values), separators=(",", ":")).encode() for n in (1, 2)
                for values in itertools.product([True, False], repeat=n)]
    assert sorted(documents) == sorted(expected)
    spaced = automaton(schema, whitespace=2)
    assert spaced.accepts(b"[ \ntrue\n, false  ]") and not spaced.accepts(b"[   true]")
    assert all(is_valid(text, schema) for text in random_documents(spaced, 200))


def test_formats_accept_exactly_valid_dates_and_valid_values():
    date = automaton({"type": "string", "format": "date"})
    day = datetime.date(1999, 12, 1)
    while day.year < 2002:
        assert date.accepts(f'"{day.isoformat()}"'.encode())
        day += datetime.timedelta(days=1)
    for text in ("2023-02-29", "2000-02-30", "1900-02-29", "0000-01-01", "2021-13-01", "2021-04-31"):
        assert not date.accepts(f'"{text}"'.encode()), text
    assert date.accepts(b'"2000-02-29"') and date.accepts(b'"2024-02-29"')
    for text in random_documents(date, 300):
        datetime.date.fromisoformat(json.loads(text))
    for text in random_documents(automaton({"type": "string", "format": "date-time"}), 100):
        datetime.datetime.fromisoformat(json.loads(text))
    for text in random_documents(automaton({"type": "string", "format": "uuid"}), 50):
        uuid.UUID(json.loads(text))
    for text in random_documents(automaton({"type": "string", "format": "email"}), 50):
        assert re.fullmatch(r"[^@]+@[^@]+\.[a-zA-Z]{2,}", json.loads(text))


def test_combinations_refs_and_nesting_validate():
    schema = {
        "$defs": {"point": {"type": "object", "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 9},
                                                             "y": {"type": "number", "maximum": 0}},
                            "required": ["x", "y"]}},
        "type": "object",
        "properties": {"kind": {"oneOf": [{"const": "a"}, {"type": "integer"}]},
                       "points": {"type": "array", "items": {"$ref": "#/$defs/point"}, "maxItems": 3},
                       "label": {"anyOf": [{"type": "string", "maxLength": 4}, {"type": "null"}]},
                       "id": {"type": ["string", "null"], "format": "uuid"}},
        "required": ["kind", "points"],
    }
    dfa = automaton(schema, whitespace=1)
    documents = random_documents(dfa, 300, stop=0.5)
    assert all(is_valid(text, schema) for text in documents)
    assert any(b'"label"' in d for d in documents) and any(b'"id":' in d or b'"id" :' in d for d in documents)


@pytest.mark.parametrize("schema, message", [
    ({"type": "object", "properties": {"a": {"type": "string", "uniqueItems": True}}},
     r"unsupported keyword 'uniqueItems' at \$\.properties\.a"),
    ({"type": "array", "items": {"type": "integer", "multipleOf": 3}}, r"'multipleOf' at \$\.items"),
    ({"$defs": {"n": {"type": "object", "properties": {"next": {"$ref": "#/$defs/n"}}}}, "$ref": "#/$defs/n"},
     r"recursive \$ref '#/\$defs/n' at \$\.\$ref\(#/\$defs/n\)\.properties\.next"),
    ({"type": "string", "pattern": "(?=a)b"}, r"pattern at \$: lookaround"),
    ({"type": "string", "pattern": "(a)\\1"}, r"pattern at \$: backreferences"),
    ({"type": "strin"}, r"type at \$ must be one of"),
    ({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["b"]}, r"required at \$ names \['b'\]"),
    ({"type": "number", "minimum": 0.5}, r"minimum 0\.5 at \$ is not expressible"),
    ({"oneOf": [{"type": "integer"}, {"type": "integer", "maximum": 3}]}, r"oneOf at \$: branches 0 and 1"),
    ({"type": "array"}, r"array at \$ needs 'items'"),
    ({"type": "string", "format": "ipv4"}, r"format 'ipv4' at \$ is not supported"),
    ({"$ref": "#/$defs/missing"}, r"points to nothing"),
    ({}, r"schema at \$ needs a 'type'"),
    ([1], r"schema at \$ must be an object"),
])
def test_bad_schemas_raise_errors_naming_the_keyword_and_path(schema, message):
    with pytest.raises(SchemaError, match=message):
        schema_language(schema)
