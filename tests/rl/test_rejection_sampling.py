"""research/rl/rejection_sampling.py: best of K, and the reward gain of more samples."""

import numpy as np
import pytest

from research.rl.rejection_sampling import best_of, reward_gain


def test_best_of_picks_the_highest_score_and_the_first_on_ties():
    np.testing.assert_array_equal(best_of([[0.1, 0.9, 0.3], [2.0, 2.0, 1.0]]), [1, 0])


def test_reward_gain_against_a_hand_computed_table():
    scores = [[1.0, 3.0, 2.0, 0.0], [0.0, 0.0, 4.0, 2.0]]
    table = reward_gain(scores)
    assert sorted(table) == [1, 2, 4]
    assert table[1] == {"max": 0.5, "median": 0.5, "gain": 0.0}
    assert table[2] == {"max": 1.5, "median": 1.0, "gain": 0.5}  # max (3, 0), median (2, 0)
    assert table[4] == {"max": 3.5, "median": 1.25, "gain": 2.25}  # max (3, 4), median (1.5, 1)


def test_the_best_of_more_samples_never_scores_less():
    table = reward_gain(np.random.default_rng(0).normal(size=(50, 16)))
    maxima = [table[n]["max"] for n in sorted(table)]
    assert maxima == sorted(maxima) and table[16]["gain"] > 1.0


def test_bad_shapes_and_counts_are_named():
    with pytest.raises(ValueError, match=r"scores must be \[prompts, K\]"):
        reward_gain([1.0, 2.0])
    with pytest.raises(ValueError, match="n = 5 is outside 1..K = 4"):
        reward_gain(np.zeros((2, 4)), ns=[5])
