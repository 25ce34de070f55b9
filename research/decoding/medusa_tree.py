"""Medusa's candidate tree: which top-k tokens of which heads one forward pass verifies together.

`medusa_choices` lists the tree's nodes below the root in the Medusa repository's format: the
choice (i_1, ..., i_d) is the node at depth d whose token is the rank-i_d candidate (0 = most
likely) of head d − 1 (which predicts d tokens past the root), and whose parent is (i_1, ..., i_{d−1}).
The root (depth 0) is the base model's next token. E.g. [(0,), (1,), (0, 0)] verifies the two
best guesses for the first token after the root and, below the best one, the best guess for the
second: three candidate continuations [a], [b], [a, c] in one pass.

Nodes are numbered root first, then the choices by depth and rank, so a parent comes before its
children and node n's cache slot is the tree's first slot + n. The buffers (numpy, built once):

    attention_mask [t, t]   node i sees node j iff j is i or an ancestor of i (tree attention)
    depths [t]              0 for the root; positions = cache length + depth
    parents [t]             node n's parent (the root is its own)
    candidate_index [t]     where node n's token is in [root, head 0's top-k, head 1's top-k, ...]:
                            0 for the root, 1 + (d − 1)·top_k + i_d otherwise
    paths [p, depth + 1]    the root-to-leaf node lists (a leaf: no choice extends it), −1 padded
"""

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class MedusaTree:
    """The tree's buffers (module docstring); `top_k` candidates are taken from each of the first `depth` heads."""

    attention_mask: np.ndarray
    depths: np.ndarray
    parents: np.ndarray
    candidate_index: np.ndarray
    paths: np.ndarray
    top_k: int
    depth: int

    @property
    def num_nodes(self) -> int:
        return len(self.depths)


def normalised_choices(medusa_choices) -> tuple[tuple[int, ...], ...]:
    """`medusa_choices` as a tuple of int tuples; ValueError naming a bad or repeated entry."""
    if isinstance(medusa_choices, (str, bytes)) or not isinstance(medusa_choices, Sequence) or not medusa_choices:
        raise ValueError(f"medusa_choices must be a non-empty list of tuples of ranks, got {medusa_choices!r}")
    choices = []
    for choice in medusa_choices:
        if (isinstance(choice, (str, bytes)) or not isinstance(choice, Sequence) or not choice
                or not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) and i >= 0 for i in choice)):
            raise ValueError(f"medusa_choices entry {choice!r} is not a non-empty tuple of ranks (ints >= 0)")
        choices.append(tuple(int(i) for i in choice))
    repeated = sorted({c for c in choices if choices.count(c) > 1})
    if repeated:
        raise ValueError(f"medusa_choices lists {repeated[0]} more than once")
    return tuple(choices)


def check_choices(choices, num_heads: int, max_top_k: int) -> None:
    """ValueError unless every choice fits the heads and the rank bound and its prefixes are choices too."""
    present = set(choices)
    for choice in choices:
        if len(choice) > num_heads:
            raise ValueError(f"medusa_choices entry {choice} has depth {len(choice)}, but the model has "
                             f"{num_heads} Medusa heads")
        if max(choice) >= max_top_k:
            raise ValueError(f"medusa_choices entry {choice} asks for rank {max(choice)}, beyond the top-{max_top_k} "
                             "candidates a head may offer")
        missing = [choice[:j] for j in range(1, len(choice)) if choice[:j] not in present]
        if missing:
            raise ValueError(f"medusa_choices is not prefix-closed: {choice} needs its prefix {missing[0]}")


def medusa_tree(medusa_choices, *, num_heads: int, max_top_k: int) -> MedusaTree:
    """The tree of `medusa_choices` for a model with `num_heads` heads, ranks below `max_top_k`."""
    choices = sorted(normalised_choices(medusa_choices), key=lambda c: (len(c), c))
    check_choices(choices, num_heads, max_top_k)
    node_of = {(): 0, **{choice: n + 1 for n, choice in enumerate(choices)}}
    nodes = [()] + choices
    top_k = 1 + max(c[-1] for c in choices)
    depth = max(len(c) for c in choices)
    attention_mask = np.zeros((len(nodes), len(nodes)), bool)
    for n, node in enumerate(nodes):
        attention_mask[n, [node_of[node[:j]] for j in range(len(node) + 1)]] = True
    depths = np.array([len(node) for node in nodes], np.int32)
    parents = np.array([node_of[node[:-1]] for node in nodes], np.int32)
    candidate_index = np.array([0] + [1 + (len(c) - 1) * top_k + c[-1] for c in choices], np.int32)
    leaves = [c for c in choices if not any(len(o) > len(c) and o[:len(c)] == c for o in choices)]
    paths = np.full((len(leaves), depth + 1), -1, np.int32)
    for p, leaf in enumerate(leaves):
        paths[p, : len(leaf) + 1] = [node_of[leaf[:j]] for j in range(len(leaf) + 1)]
    return MedusaTree(attention_mask, depths, parents, candidate_index, paths, top_k, depth)
