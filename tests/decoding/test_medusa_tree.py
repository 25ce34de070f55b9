"""research/decoding/medusa_tree.py: the buffers of a known tree, and choices that make no tree."""

import numpy as np
import pytest

from research.decoding.medusa_tree import medusa_tree

# root; depth 1: ranks 0 and 1 of head 0; depth 2: ranks 0, 1 of head 1 under (0,), rank 0 under (1,)
CHOICES = [(1,), (0, 1), (0,), (1, 0), (0, 0)]


def test_buffers_of_a_known_tree():
    tree = medusa_tree(CHOICES, num_heads=3, max_top_k=10)
    # nodes: 0 root, 1 (0,), 2 (1,), 3 (0, 0), 4 (0, 1), 5 (1, 0)
    assert tree.depths.tolist() == [0, 1, 1, 2, 2, 2]
    assert tree.parents.tolist() == [0, 0, 0, 1, 1, 2]
    assert (tree.top_k, tree.depth, tree.num_nodes) == (2, 2, 6)
    # [root, head 0 rank 0, head 0 rank 1, head 1 rank 0, head 1 rank 1]
    assert tree.candidate_index.tolist() == [0, 1, 2, 3, 4, 3]
    expected_mask = np.array([
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 0, 1, 0, 0, 0],
        [1, 1, 0, 1, 0, 0],
        [1, 1, 0, 0, 1, 0],
        [1, 0, 1, 0, 0, 1],
    ], bool)
    np.testing.assert_array_equal(tree.attention_mask, expected_mask)
    assert tree.paths.tolist() == [[0, 1, 3], [0, 1, 4], [0, 2, 5]]


def test_paths_of_different_depths_are_padded():
    tree = medusa_tree([(0,), (1,), (0, 0)], num_heads=2, max_top_k=5)
    assert tree.paths.tolist() == [[0, 2, -1], [0, 1, 3]]  # leaves in node order


def test_a_chain_is_one_path_through_every_head():
    tree = medusa_tree([(0,), (0, 0), (0, 0, 0)], num_heads=3, max_top_k=5)
    assert tree.paths.tolist() == [[0, 1, 2, 3]]
    np.testing.assert_array_equal(tree.attention_mask, np.tril(np.ones((4, 4), bool)))
    assert tree.candidate_index.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("choices, message", [
    ([(0,), (1, 0)], r"not prefix-closed: \(1, 0\) needs its prefix \(1,\)"),
    ([(0,), (0, 0), (0, 1, 0)], r"\(0, 1, 0\) needs its prefix \(0, 1\)"),
    ([(0,), (0, 0), (0, 0, 0), (0, 0, 0, 0)], r"depth 4, but the model has 3 Medusa heads"),
    ([(0,), (7,)], r"rank 7, beyond the top-5"),
    ([(0,), (0,)], r"lists \(0,\) more than once"),
    ([(0,), ()], r"entry \(\) is not a non-empty tuple"),
    ([(0,), (-1,)], r"entry \(-1,\) is not"),
    ([], r"non-empty list"),
    ("0", r"non-empty list"),
])
def test_choices_that_make_no_tree_are_named(choices, message):
    with pytest.raises(ValueError, match=message):
        medusa_tree(choices, num_heads=3, max_top_k=5)
