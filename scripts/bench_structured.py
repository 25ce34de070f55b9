"""Constrained decoding cost: index build time and per-token overhead of ours against outlines-core
and llguidance, on the same vocabulary and schemas, in one run; and which schema keywords each accepts.

    python -m scripts.bench_structured [--vocab 4096] [--repeats 3] [--out experiments/results/structured_bench.md]

Vocabulary: the SentencePiece BPE of the `pydoc_topics` corpus (`--vocab` ids; byte fallback).
Build: seconds from the schema to a ready index (ours: `constraint_from_language`, the on-disk
cache bypassed; outlines-core: regex from its json_schema module + `Index`; llguidance:
`LLMatcher` from `grammar_from_json_schema`, whose masks are computed lazily, so its build is cheap
and its cost moves to the per-token step). Per token: walking one valid document token by token,
the time to get the allowed set and advance (ours: the jitted mask-and-advance step of `generate`
on a [1, V] logit row; outlines-core: `get_allowed_tokens` + `get_next_state`; llguidance:
`compute_bitmask` + `consume_token`). outlines-core and llguidance are bench dependencies only.
"""

import argparse
import functools
import json
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from research.data import corpus
from research.data.tokenizer import corpus_sentencepiece
from research.decoding.sampling import constrained_token, device_constraint, sample_token
from research.decoding.structured.constraint import constraint_from_language
from research.decoding.structured.schema_language import schema_language
from research.decoding.structured.vocabulary import token_bytes
from scripts.hardware import describe_hardware

BENCH_SCHEMAS = {
    "flat record": ({"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                                      "city": {"type": "string"}},
                     "required": ["name", "age", "city"], "additionalProperties": False},
                    {"name": "Ada Lovelace", "age": 36, "city": "London"}),
    "enums + bounds": ({"type": "object", "properties": {"level": {"enum": ["low", "mid", "high"]},
                                                         "score": {"type": "integer", "minimum": 0, "maximum": 100},
                                                         "ok": {"type": "boolean"}},
                        "required": ["level", "score", "ok"], "additionalProperties": False},
                       {"level": "mid", "score": 42, "ok": True}),
    "nested + array + formats": ({"type": "object", "properties": {
        "id": {"type": "string", "format": "uuid"}, "when": {"type": "string", "format": "date"},
        "people": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string", "maxLength": 20}, "email": {"type": "string", "format": "email"}},
            "required": ["name", "email"], "additionalProperties": False}, "maxItems": 4}},
        "required": ["id", "when", "people"], "additionalProperties": False},
        {"id": "123e4567-e89b-12d3-a456-426614174000", "when": "2024-02-29",
         "people": [{"name": "Bob", "email": "bob@example.org"}]}),
}

# One small schema per keyword: which libraries build a constraint for it.
KEYWORD_PROBES = {
    "properties/required": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
    "additionalProperties: false": {"type": "object", "properties": {"a": {"type": "integer"}},
                                    "additionalProperties": False},
    "additionalProperties: schema": {"type": "object", "additionalProperties": {"type": "integer"}},
    "enum": {"enum": ["a", 1, None]},
    "const": {"const": "x"},
    "pattern": {"type": "string", "pattern": "^[a-z]+[0-9]{2}$"},
    "minLength/maxLength": {"type": "string", "minLength": 2, "maxLength": 5},
    "format: date": {"type": "string", "format": "date"},
    "format: date-time": {"type": "string", "format": "date-time"},
    "format: email": {"type": "string", "format": "email"},
    "format: uuid": {"type": "string", "format": "uuid"},
    "integer minimum/maximum": {"type": "integer", "minimum": -5, "maximum": 120},
    "number minimum/maximum": {"type": "number", "minimum": 0, "maximum": 10},
    "exclusiveMinimum (integer)": {"type": "integer", "exclusiveMinimum": 0},
    "multipleOf": {"type": "integer", "multipleOf": 3},
    "items/minItems/maxItems": {"type": "array", "items": {"type": "boolean"}, "minItems": 1, "maxItems": 3},
    "prefixItems": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}]},
    "uniqueItems": {"type": "array", "items": {"type": "integer"}, "uniqueItems": True},
    "anyOf": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
    "oneOf": {"oneOf": [{"type": "integer"}, {"type": "string"}]},
    "allOf": {"allOf": [{"type": "integer"}, {"minimum": 0}]},
    "$defs/$ref": {"$defs": {"p": {"type": "integer"}}, "type": "array", "items": {"$ref": "#/$defs/p"}},
    "recursive $ref": {"$defs": {"n": {"type": "object", "properties": {"next": {"$ref": "#/$defs/n"}}}},
                       "$ref": "#/$defs/n"},
    "type list": {"type": ["string", "null"]},
    "empty schema (any value)": {},
}


@functools.cache
def vocabulary_of(tokenizer) -> list:
    return token_bytes(tokenizer)


def our_build(schema, tokenizer):
    return constraint_from_language(schema_language(schema), vocabulary_of(tokenizer))


def outlines_build(schema, tokenizer):
    from outlines_core import Index, Vocabulary
    from outlines_core.json_schema import build_regex_from_schema
    mapping = {}
    for token_id, spelled in enumerate(vocabulary_of(tokenizer)):
        if spelled is not None and token_id != tokenizer.eos_id:
            mapping.setdefault(spelled, []).append(token_id)
    return Index(build_regex_from_schema(json.dumps(schema)), Vocabulary(tokenizer.eos_id, mapping))


class _TokenList:
    """The minimal tokenizer object llguidance's TokenizerWrapper reads: token bytes, special ids
    and an `encode` of text."""

    def __init__(self, vocabulary, eos_id, bos_id, encode):
        self.encode = encode
        self.tokens = [spelled if spelled is not None else f"<special_{i}>".encode()
                       for i, spelled in enumerate(vocabulary)]
        self.special_token_ids = [i for i, spelled in enumerate(vocabulary) if spelled is None]
        self.eos_token_id, self.bos_token_id = eos_id, bos_id

    def __call__(self, text):
        return self.encode(text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text)


@functools.cache
def llguidance_tokenizer(tokenizer):
    import llguidance
    wrapped = _TokenList(token_bytes(tokenizer), tokenizer.eos_id, tokenizer.bos_id, tokenizer.encode)
    return llguidance.LLTokenizer(llguidance.TokenizerWrapper(wrapped))


def llguidance_build(schema, tokenizer):
    import llguidance
    tokenizer = llguidance_tokenizer(tokenizer)
    matcher = llguidance.LLMatcher(tokenizer, llguidance.LLMatcher.grammar_from_json_schema(
        json.dumps(schema), defaults={"whitespace_flexible": False}), log_level=0)
    if matcher.is_error():
        raise ValueError(matcher.get_error())
    return matcher


def best_seconds(build, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        build()
        times.append(time.perf_counter() - start)
    return min(times)


def our_per_token(constraint, tokenizer, document_ids) -> float:
    """Median seconds of the jitted mask-and-advance step of `generate` along the document."""
    eos_id = tokenizer.eos_id
    tables = device_constraint(constraint, constraint.next_state.shape[1], len(document_ids) + 1, (eos_id,))
    step = jax.jit(functools.partial(constrained_token, stop_ids=(eos_id,), sample=functools.partial(
        sample_token, temperature=0.0, top_k=None, top_p=None)))
    logits = jnp.zeros((1, constraint.next_state.shape[1]))
    state = jnp.zeros((1,), jnp.int32)
    jax.block_until_ready(step(logits, None, tables, state, 64))
    times = []
    for position, token in enumerate(document_ids):
        forced = logits.at[0, token].set(1.0)
        start = time.perf_counter()
        chosen, state = jax.block_until_ready(step(forced, None, tables, state, len(document_ids) - position))
        times.append(time.perf_counter() - start)
        assert int(chosen[0]) == token, "the document's token was not allowed"
    return statistics.median(times)


def outlines_per_token(index, tokenizer, document_ids) -> float:
    state, times = index.get_initial_state(), []
    for token in document_ids:
        start = time.perf_counter()
        allowed = index.get_allowed_tokens(state)
        state = index.get_next_state(state, token)
        times.append(time.perf_counter() - start)
        assert token in allowed and state is not None
    return statistics.median(times)


def llguidance_per_token(matcher, tokenizer, document_ids) -> float:
    from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask
    mask, times = allocate_token_bitmask(1, tokenizer.vocab_size), []
    for token in document_ids:
        start = time.perf_counter()
        fill_next_token_bitmask(matcher, mask, 0)
        matcher.consume_token(token)
        times.append(time.perf_counter() - start)
        assert not matcher.is_error(), matcher.get_error()
    return statistics.median(times)


# library: (build(schema, tokenizer) -> index, per_token(index, tokenizer, document ids) -> seconds)
LIBRARIES = {"ours": (our_build, our_per_token), "outlines-core": (outlines_build, outlines_per_token),
             "llguidance": (llguidance_build, llguidance_per_token)}


def keyword_coverage(tokenizer, libraries=tuple(LIBRARIES)) -> dict:
    """{keyword: {library: True/False}}: whether each library builds a constraint for the probe."""
    table = {}
    for keyword, schema in KEYWORD_PROBES.items():
        table[keyword] = {}
        for name in libraries:
            try:
                LIBRARIES[name][0](schema, tokenizer)
                table[keyword][name] = True
            except Exception:  # each library signals an unsupported schema its own way
                table[keyword][name] = False
    return table


def measure(tokenizer, repeats: int, schemas=tuple(BENCH_SCHEMAS), libraries=tuple(LIBRARIES)) -> dict:
    """Per schema named in `schemas`: our state count, the document's tokens, and each library's
    build and per-token times."""
    rows = {}
    for name in schemas:
        schema, document = BENCH_SCHEMAS[name]
        ids = tokenizer.encode(json.dumps(document, separators=(",", ":")))
        row = {"states": our_build(schema, tokenizer).next_state.shape[0], "document_tokens": len(ids),
               "build": {}, "per_token": {}}
        for library in libraries:
            build, per_token = LIBRARIES[library]
            row["build"][library] = best_seconds(lambda: build(schema, tokenizer), repeats)
            row["per_token"][library] = per_token(build(schema, tokenizer), tokenizer, ids)
        rows[name] = row
    return rows


def write_report(path: Path, rows: dict, coverage: dict, vocab_size: int) -> None:
    libraries = tuple(LIBRARIES)
    lines = ["# Constrained decoding: index build and per-token overhead", "",
             f"Hardware: **{describe_hardware()}**. Vocabulary: SentencePiece BPE of pydoc_topics, {vocab_size} ids.",
             "", "| schema | our states | doc tokens | " + " | ".join(f"build {n} (s)" for n in libraries)
             + " | " + " | ".join(f"per token {n} (µs)" for n in libraries) + " |",
             "|---|---|---|" + "---|" * 6]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['states']} | {row['document_tokens']} | "
                     + " | ".join(f"{row['build'][n]:.3f}" for n in libraries) + " | "
                     + " | ".join(f"{row['per_token'][n] * 1e6:.0f}" for n in libraries) + " |")
    lines += ["", "Ratios (ours / theirs; below 1 means ours is faster):", "",
              "| schema | build / outlines-core | build / llguidance | per token / outlines-core | "
              "per token / llguidance |", "|---|---|---|---|---|"]
    for name, row in rows.items():
        build, token = row["build"], row["per_token"]
        lines.append(f"| {name} | {build['ours'] / build['outlines-core']:.2f} | {build['ours'] / build['llguidance']:.2f}"
                     f" | {token['ours'] / token['outlines-core']:.2f} | {token['ours'] / token['llguidance']:.2f} |")
    lines += ["", "## Keyword coverage (a constraint is built for the probe schema)", "",
              "| keyword | " + " | ".join(libraries) + " |", "|---|---|---|---|"]
    for keyword, accepted in coverage.items():
        lines.append(f"| {keyword} | " + " | ".join("yes" if accepted[n] else "no" for n in libraries) + " |")
    lines += ["", "xgrammar is left out: its wheels pull in PyTorch, which the bench environment does not carry. Ours per "
              "token includes one jitted-call dispatch on the CPU; inside `generate` the same work is fused into "
              "the decode step."]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main(argv=None, tokenizer=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("experiments/results/structured_bench.md"))
    args = parser.parse_args(argv)
    tokenizer = tokenizer or corpus_sentencepiece("pydoc_topics", args.vocab, corpus.default_data_dir())
    results = run(tokenizer, args.repeats)
    write_report(args.out, results["rows"], results["coverage"], tokenizer.vocab_size)
    print(args.out.read_text())
    return results


def run(tokenizer, repeats: int, schemas=tuple(BENCH_SCHEMAS), libraries=tuple(LIBRARIES)) -> dict:
    """{"rows": build and per-token times of `schemas`, "coverage": keyword coverage} for `tokenizer`."""
    return {"rows": measure(tokenizer, repeats, schemas, libraries), "coverage": keyword_coverage(tokenizer, libraries)}


if __name__ == "__main__":
    main()
