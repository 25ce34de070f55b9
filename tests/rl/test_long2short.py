"""research/rl/long2short.py: the shortest correct response is kept, wrong ones never."""

import numpy as np
import pytest

from research.rl.long2short import shortest_correct, shortest_correct_weights


def test_the_shortest_correct_response_is_picked_and_wrong_ones_never():
    lengths = [[30, 12, 50, 9], [5, 6, 7, 8], [40, 40, 20, 40], [3, 1, 2, 4]]
    correct = [[True, True, False, False], [False, False, False, False], [True, True, False, True],
               [False, False, False, True]]
    np.testing.assert_array_equal(shortest_correct(lengths, correct), [1, -1, 0, 3])


def test_weights_mark_one_response_per_group_with_a_correct_one():
    lengths = np.array([7, 3, 9, 2, 4, 4, 1, 8])
    correct = np.array([1, 1, 0, 0, 1, 1, 0, 0], bool)
    weights = shortest_correct_weights(lengths, correct, group_size=4)
    np.testing.assert_array_equal(weights, [0, 1, 0, 0, 1, 0, 0, 0])
    assert not weights[~correct].any()
    with pytest.raises(ValueError, match="group_size 3"):
        shortest_correct_weights(lengths, correct, group_size=3)
    with pytest.raises(ValueError, match=r"\[prompts, K\]"):
        shortest_correct([1, 2], [True, False])
