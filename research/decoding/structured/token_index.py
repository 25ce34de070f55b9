"""The token-level index: for every DFA state s and token t, the state after reading t's bytes
from s (−1 if some byte has no move), built by walking all tokens at once in numpy.

With T the DFA's byte transitions plus a dead sink row and B [V, L] the tokens' bytes padded
to the longest, the walk is L gathers: states ← T[states, B[:, j]] for tokens longer than j,
over a [states, V] array (in blocks of states to bound memory). Tokens that spell nothing
(special ids) get −1 everywhere. Afterwards only the states reachable from the start through
whole tokens are kept, renumbered with the start first.
"""

import collections

import numpy as np

from research.decoding.structured.dfa import DEAD, Dfa

BLOCK_ELEMENTS = 1 << 24  # states × tokens walked at once


def padded_token_bytes(vocabulary: list[bytes | None]) -> tuple[np.ndarray, np.ndarray]:
    """(bytes [V, L] uint8 zero-padded, lengths [V] with 0 for tokens that spell nothing)."""
    lengths = np.array([len(b) if b else 0 for b in vocabulary], np.int64)
    table = np.zeros((len(vocabulary), max(int(lengths.max()), 1)), np.uint8)
    for index, spelled in enumerate(vocabulary):
        if spelled:
            table[index, : len(spelled)] = np.frombuffer(spelled, np.uint8)
    return table, lengths


def token_transitions(dfa: Dfa, vocabulary: list[bytes | None]) -> np.ndarray:
    """[num_states, V] int32: the state after token t from state s, or −1."""
    table, lengths = padded_token_bytes(vocabulary)
    sink = dfa.num_states
    byte_moves = np.concatenate([np.where(dfa.transitions == DEAD, sink, dfa.transitions),
                                 np.full((1, 256), sink, np.int32)]).astype(np.int32)
    result = np.empty((dfa.num_states, len(vocabulary)), np.int32)
    block = max(1, BLOCK_ELEMENTS // max(len(vocabulary), 1))
    for first in range(0, dfa.num_states, block):
        states = np.repeat(np.arange(first, min(first + block, dfa.num_states), dtype=np.int32)[:, None],
                           len(vocabulary), axis=1)
        for position in range(table.shape[1]):
            longer = lengths > position
            states[:, longer] = byte_moves[states[:, longer], table[longer, position]]
        states[:, lengths == 0] = sink
        result[first:first + len(states)] = np.where(states == sink, DEAD, states)
    return result


def reachable_states(next_state: np.ndarray) -> np.ndarray:
    """State ids reachable from state 0 through whole tokens, in breadth-first order (0 first)."""
    order, seen = [0], {0}
    queue = collections.deque([0])
    while queue:
        targets = np.unique(next_state[queue.popleft()])
        for target in targets[targets >= 0].tolist():
            if target not in seen:
                seen.add(target)
                order.append(target)
                queue.append(target)
    return np.array(order, np.int64)


def restrict(next_state: np.ndarray, accepting: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The index on the states `keep` (renumbered 0..len−1 in that order); moves to others become −1."""
    renumber = np.full(next_state.shape[0] + 1, DEAD, np.int32)
    renumber[keep] = np.arange(len(keep), dtype=np.int32)
    return renumber[next_state[keep]], accepting[keep]
