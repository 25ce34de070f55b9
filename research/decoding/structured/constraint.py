"""The constraint `generate(..., constraint=...)` applies: token-level tables of a JSON Schema's
automaton over a tokenizer's vocabulary, cached on disk.

    schema ──schema_language──▶ regular expression ──compile_regex──▶ byte DFA
           ──token_transitions──▶ next_state [S, V] ──distance_to_accept──▶ distance [S]

Moves into states that cannot finish are removed (set to −1) and only the states reachable
through whole tokens are kept, start first. The tables are cached as
`<cache_dir>/<key>.npz`, key = sha256(canonical schema JSON, vocabulary fingerprint,
whitespace, CODE_VERSION).
"""

import hashlib
import json
import os
import tempfile
from typing import NamedTuple

import numpy as np

from research.data import corpus
from research.decoding.structured.budget import UNREACHABLE, distance_to_accept
from research.decoding.structured.dfa import compile_regex
from research.decoding.structured.schema_language import DEFAULT_WHITESPACE, schema_language
from research.decoding.structured.token_index import reachable_states, restrict, token_transitions
from research.decoding.structured.vocabulary import fingerprint, token_bytes

CODE_VERSION = "1"  # bump when the tables for a (schema, tokenizer) pair change meaning


class TokenConstraint(NamedTuple):
    """The arrays `generate` masks with; state 0 is the start.

    next_state [num_states, vocab] int32: the state after each token, −1 where not allowed;
    distance [num_states] int32: fewest tokens to an accepting state;
    accepting [num_states] bool: where a document is complete (stop ids allowed).
    """

    next_state: np.ndarray
    distance: np.ndarray
    accepting: np.ndarray

    @property
    def min_new_tokens(self) -> int:
        """Tokens in the shortest complete document."""
        return int(self.distance[0])


def constraint_from_language(language, vocabulary: list[bytes | None]) -> TokenConstraint:
    """The token tables of a regular language (regex.py node) over `vocabulary` (token bytes);
    ValueError if no document of the language can be spelled with these tokens."""
    dfa = compile_regex(language)
    next_state = token_transitions(dfa, vocabulary)
    distance = distance_to_accept(next_state, dfa.accepting)
    if distance[0] == UNREACHABLE:
        used = set(np.flatnonzero((dfa.transitions >= 0).any(axis=0)).tolist())
        spelled = {byte for token in vocabulary if token for byte in token}
        missing = sorted(used - spelled)
        detail = (f"bytes {[bytes([b]) for b in missing[:8]]} that the schema uses appear in no token" if missing
                  else "its tokens cannot spell any document of the schema")
        raise ValueError(f"the tokenizer cannot write this schema's documents: {detail}")
    finishable = np.where(next_state >= 0, distance[np.maximum(next_state, 0)] != UNREACHABLE, False)
    next_state = np.where(finishable, next_state, -1).astype(np.int32)
    keep = reachable_states(next_state)
    next_state, accepting = restrict(next_state, dfa.accepting, keep)
    return TokenConstraint(next_state, distance[keep].astype(np.int32), accepting)


def cache_key(schema, vocabulary_fingerprint: str, whitespace: int) -> str:
    canonical = json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    text = "\n".join([canonical, vocabulary_fingerprint, str(whitespace), CODE_VERSION])
    return hashlib.sha256(text.encode()).hexdigest()


def default_cache_dir() -> str:
    return os.path.join(corpus.default_data_dir(), "structured_index")


def json_schema_constraint(schema, tokenizer, *, whitespace: int = DEFAULT_WHITESPACE,
                           cache_dir: str | None = None) -> TokenConstraint:
    """The constraint for documents of `schema` written with `tokenizer`'s tokens, with at most
    `whitespace` bytes of whitespace between JSON tokens; read from `cache_dir` (None:
    <data dir>/structured_index) when built before. ValueError (SchemaError) naming the keyword
    and path of an unsupported or invalid schema, or the bytes the tokenizer lacks."""
    language = schema_language(schema, whitespace=whitespace)
    vocabulary = token_bytes(tokenizer)
    path = os.path.join(cache_dir or default_cache_dir(), cache_key(schema, fingerprint(vocabulary), whitespace) + ".npz")
    if os.path.exists(path):
        with np.load(path) as stored:
            return TokenConstraint(*(stored[name] for name in TokenConstraint._fields))
    constraint = constraint_from_language(language, vocabulary)
    _save_atomically(path, constraint)
    return constraint


def _save_atomically(path: str, constraint: TokenConstraint) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    descriptor, tmp_path = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(descriptor, "wb") as tmp_file:
            np.savez(tmp_file, **constraint._asdict())
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
