"""research/decoding/structured/token_index.py, budget.py and vocabulary.py: the vectorised index
equals a brute-force walk; distances equal a breadth-first search; token bytes of both tokenizers."""

import collections

import numpy as np

from research.data.tokenizer import SentencePieceTokenizer, train_sentencepiece
from research.decoding.structured.budget import UNREACHABLE, distance_to_accept
from research.decoding.structured.dfa import compile_regex
from research.decoding.structured.schema_language import schema_language
from research.decoding.structured.token_index import token_transitions
from research.decoding.structured.vocabulary import token_bytes

SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "maximum": 30},
                                           "s": {"type": "string", "maxLength": 3}}, "required": ["ok"]}
VOCABULARY = [None, b"{", b"}", b'"', b'{"', b'ok', b'":', b"true", b"tr", b"ue", b"false", b",", b'"n', b'":1',
              b"0", b"12", b"3", b'"s":"', "é".encode(), "é".encode()[:1], "é".encode()[1:], b" ", b"\n", b' "',
              b'e"}', b"", b"-", b'"}', b"x"]


def brute_force_index(dfa, vocabulary):
    table = np.full((dfa.num_states, len(vocabulary)), -1)
    for state in range(dfa.num_states):
        for token, spelled in enumerate(vocabulary):
            current = state
            for byte in spelled or b"":
                current = dfa.transitions[current, byte]
                if current < 0:
                    break
            if spelled and current >= 0:
                table[state, token] = current
    return table


def breadth_first_distance(next_state, accepting):
    distance = []
    for start in range(len(accepting)):
        seen, queue, found = {start}, collections.deque([(start, 0)]), UNREACHABLE
        while queue:
            state, steps = queue.popleft()
            if accepting[state]:
                found = steps
                break
            for target in set(next_state[state].tolist()) - {-1} - seen:
                seen.add(target)
                queue.append((target, steps + 1))
        distance.append(found)
    return np.array(distance)


def test_token_index_equals_a_brute_force_walk_with_multibyte_and_spanning_tokens():
    dfa = compile_regex(schema_language(SCHEMA, whitespace=1))
    index = token_transitions(dfa, VOCABULARY)
    np.testing.assert_array_equal(index, brute_force_index(dfa, VOCABULARY))
    assert (index[:, [0, 25]] == -1).all()  # tokens that spell nothing are never allowed
    assert (index[0, VOCABULARY.index(b'{"')] >= 0) and (index[0, VOCABULARY.index(b"}")] == -1)


def test_distance_to_accept_equals_breadth_first_search():
    dfa = compile_regex(schema_language(SCHEMA, whitespace=1))
    index = token_transitions(dfa, VOCABULARY)
    np.testing.assert_array_equal(distance_to_accept(index, dfa.accepting), breadth_first_distance(index, dfa.accepting))


def test_sentencepiece_pieces_spell_their_text_and_specials_spell_nothing():
    texts = ['{"name": "Ada", "age": 36}', '{"name": "Émile", "city": "Zürich"}'] * 20
    tokenizer = SentencePieceTokenizer(train_sentencepiece(texts, vocab_size=300))
    vocabulary = token_bytes(tokenizer)
    for special in (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.unk_id, tokenizer.think_id):
        assert vocabulary[special] is None
    text = '{"name": "Ada Émile\\n", "x": [1]}'
    ids = tokenizer.encode(text)
    assert b"".join(vocabulary[i] for i in ids) == text.encode()
    assert sorted(v[0] for v in vocabulary if v is not None and len(v) == 1 and v[0] >= 0x80) == list(range(0x80, 0x100))
