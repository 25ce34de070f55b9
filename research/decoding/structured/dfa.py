"""Regular expression (regex.py) → Thompson NFA → DFA by subset construction → minimal DFA.

Our own implementation rather than a library such as interegular: the constraint walks
tokens byte by byte, so the automaton must read bytes (UTF-8 included), keep bounded repeats
exact, and hand back numpy tables; interegular works on Unicode characters.

The 256 bytes are first split into classes that no ByteSet of the expression tells apart,
so the subset construction steps over classes rather than bytes. States without a path to
an accepting state are dropped, the rest minimised by Moore's partition refinement (two
states are merged while no byte leads them to different blocks) and numbered in
breadth-first order from the start, so the start state is 0 and the tables depend only on
the language.
"""

import collections
import dataclasses

import numpy as np

from research.decoding.structured.regex import Alt, ByteSet, Repeat, Seq

DEAD = -1


@dataclasses.dataclass(frozen=True)
class Dfa:
    """`transitions [num_states, 256]` int32 (DEAD where no move), `accepting [num_states]`
    bool; state 0 is the start. Every state reaches an accepting state."""

    transitions: np.ndarray
    accepting: np.ndarray

    @property
    def num_states(self) -> int:
        return self.transitions.shape[0]

    def accepts(self, data: bytes) -> bool:
        state = 0
        for byte in data:
            state = self.transitions[state, byte]
            if state == DEAD:
                return False
        return bool(self.accepting[state])


class _Nfa:
    """States are ints; `moves[s]` lists (byte mask, target), `empty[s]` the ε-targets."""

    def __init__(self):
        self.moves, self.empty = [], []

    def new_state(self) -> int:
        self.moves.append([])
        self.empty.append([])
        return len(self.moves) - 1

    def build(self, node, start: int, end: int) -> None:
        """Adds the states and edges of `node` between `start` and `end`."""
        if isinstance(node, ByteSet):
            self.moves[start].append((node.mask, end))
        elif isinstance(node, Seq):
            current = start
            for index, part in enumerate(node.parts):
                following = end if index == len(node.parts) - 1 else self.new_state()
                self.build(part, current, following)
                current = following
            if not node.parts:
                self.empty[start].append(end)
        elif isinstance(node, Alt):
            for option in node.options:
                inner = self.new_state()
                self.empty[start].append(inner)
                self.build(option, inner, end)
        elif isinstance(node, Repeat):
            self._build_repeat(node, start, end)
        else:
            raise TypeError(f"not a regular-expression node: {node!r}")

    def _build_repeat(self, node: Repeat, start: int, end: int) -> None:
        current = start
        for _ in range(node.low):
            following = self.new_state()
            self.build(node.node, current, following)
            current = following
        if node.high is None:
            loop = self.new_state()
            self.empty[current].append(loop)
            self.empty[loop].append(end)
            body_end = self.new_state()
            self.build(node.node, loop, body_end)
            self.empty[body_end].append(loop)
            return
        for _ in range(node.high - node.low):
            self.empty[current].append(end)
            following = self.new_state()
            self.build(node.node, current, following)
            current = following
        self.empty[current].append(end)


def byte_classes(masks) -> np.ndarray:
    """[256] class id per byte: two bytes share a class iff every mask holds both or neither."""
    signatures = collections.defaultdict(list)
    for byte in range(256):
        signatures[tuple((mask >> byte) & 1 for mask in masks)].append(byte)
    classes = np.zeros(256, np.int32)
    for class_id, members in enumerate(sorted(signatures.values())):
        classes[members] = class_id
    return classes


def compile_regex(node) -> Dfa:
    """The minimal DFA of `node`'s language; ValueError if the language is empty."""
    nfa = _Nfa()
    start, end = nfa.new_state(), nfa.new_state()
    nfa.build(node, start, end)
    masks = sorted({mask for moves in nfa.moves for mask, _ in moves})
    classes = byte_classes(masks)
    num_classes = int(classes.max()) + 1
    representative = [int(np.flatnonzero(classes == c)[0]) for c in range(num_classes)]
    class_moves = [[(frozenset(c for c in range(num_classes) if (mask >> representative[c]) & 1), target)
                    for mask, target in moves] for moves in nfa.moves]
    closure = _closures(nfa.empty)

    first = closure[start]
    index = {first: 0}
    queue, rows, accepting = [first], [], []
    while queue:
        current = queue.pop(0)
        row = np.full(num_classes, DEAD, np.int32)
        targets = collections.defaultdict(set)
        for state in current:
            for class_set, target in class_moves[state]:
                for class_id in class_set:
                    targets[class_id] |= closure[target]
        for class_id, target_set in targets.items():
            key = frozenset(target_set)
            if key not in index:
                index[key] = len(index)
                queue.append(key)
            row[class_id] = index[key]
        rows.append(row)
        accepting.append(end in current)
    table = np.stack(rows)[:, classes]
    return minimise(table, np.array(accepting))


def _closures(empty) -> list[frozenset]:
    """ε-closure of every NFA state."""
    result = []
    for state in range(len(empty)):
        seen, stack = {state}, [state]
        while stack:
            for target in empty[stack.pop()]:
                if target not in seen:
                    seen.add(target)
                    stack.append(target)
        result.append(frozenset(seen))
    return result


def live_states(transitions: np.ndarray, accepting: np.ndarray) -> np.ndarray:
    """[num_states] bool: the states with a path to an accepting state (backwards fixed point)."""
    live = accepting.copy()
    while True:
        safe = np.where(transitions >= 0, transitions, 0)
        grown = live | ((transitions >= 0) & live[safe]).any(axis=1)
        if (grown == live).all():
            return live
        live = grown


def minimise(transitions: np.ndarray, accepting: np.ndarray) -> Dfa:
    """The minimal DFA of the automaton (start 0): dead states dropped, equivalent states merged
    (Moore refinement), states renumbered breadth-first from the start."""
    live = live_states(transitions, accepting)
    if not live[0]:
        raise ValueError("the regular language is empty: no document can satisfy the schema")
    transitions = np.where((transitions >= 0) & live[np.maximum(transitions, 0)], transitions, DEAD)
    block = accepting.astype(np.int64)
    while True:
        target_block = np.where(transitions >= 0, block[np.maximum(transitions, 0)], -1)
        signature = np.concatenate([block[:, None], target_block], axis=1)
        _, refined = np.unique(signature[live], axis=0, return_inverse=True)
        new_block = np.full(len(block), -1, np.int64)
        new_block[live] = refined.ravel()
        if len(np.unique(new_block[live])) == len(np.unique(block[live])):
            break
        block = new_block
    return _renumbered(transitions, accepting, block)


def _renumbered(transitions, accepting, block) -> Dfa:
    """One state per block, numbered breadth-first from the start state's block over bytes 0..255."""
    order = {int(block[0]): 0}
    member = {int(b): int(np.flatnonzero(block == b)[0]) for b in np.unique(block[block >= 0])}
    queue = [int(block[0])]
    rows, final = [], []
    while queue:
        current = queue.pop(0)
        state = member[current]
        row = np.full(256, DEAD, np.int32)
        for byte in np.flatnonzero(transitions[state] >= 0):
            target = int(block[transitions[state, byte]])
            if target not in order:
                order[target] = len(order)
                queue.append(target)
            row[byte] = order[target]
        rows.append(row)
        final.append(bool(accepting[state]))
    return Dfa(np.stack(rows), np.array(final))


def shortest_accepted(dfa: Dfa) -> bytes:
    """One shortest byte string the DFA accepts (breadth-first search from the start)."""
    previous = {0: None}
    queue = collections.deque([0])
    while queue:
        state = queue.popleft()
        if dfa.accepting[state]:
            path = []
            while previous[state] is not None:
                state, byte = previous[state]
                path.append(byte)
            return bytes(reversed(path))
        for byte in np.flatnonzero(dfa.transitions[state] >= 0):
            target = int(dfa.transitions[state, byte])
            if target not in previous:
                previous[target] = (state, int(byte))
                queue.append(target)
    raise ValueError("the DFA accepts nothing")


def intersect(first: Dfa, second: Dfa) -> bool:
    """Whether the two languages share a string (breadth-first search over state pairs)."""
    seen, queue = {(0, 0)}, collections.deque([(0, 0)])
    while queue:
        a, b = queue.popleft()
        if first.accepting[a] and second.accepting[b]:
            return True
        both = (first.transitions[a] >= 0) & (second.transitions[b] >= 0)
        for byte in np.flatnonzero(both):
            pair = (int(first.transitions[a, byte]), int(second.transitions[b, byte]))
            if pair not in seen:
                seen.add(pair)
                queue.append(pair)
    return False
