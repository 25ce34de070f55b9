"""research/rl/prompt_sampling.py: curriculum and prioritized sampling of the RL batch's problems."""

import numpy as np
import pytest

from research.rl.prompt_sampling import (curriculum_probabilities, draw_problems, normalised_difficulty,
                                         prioritized_probabilities, sampling_probabilities, success_rates,
                                         updated_counts)


def test_difficulty_is_the_levels_rank_within_its_suite():
    h = normalised_difficulty([1, 3, 2, 4, 4], [(1, 2, 3), (1, 2, 3), (1, 2, 3), (3, 4), (4,)])
    np.testing.assert_allclose(h, [0.0, 1.0, 0.5, 1.0, 0.0])
    with pytest.raises(ValueError, match="problem 0: difficulty 7"):
        normalised_difficulty([7], [(1, 2)])


def test_curriculum_unlocks_harder_levels_as_training_goes_on():
    h = np.array([0.0, 0.5, 1.0, 0.0])
    np.testing.assert_allclose(curriculum_probabilities(h, 0.0), [0.5, 0, 0, 0.5])
    np.testing.assert_allclose(curriculum_probabilities(h, 0.6), [1 / 3, 1 / 3, 0, 1 / 3])
    np.testing.assert_allclose(curriculum_probabilities(h, 1.0), [0.25] * 4)
    np.testing.assert_allclose(curriculum_probabilities([0.5, 1.0], 0.0), [1, 0])  # the easiest level is there
    at = lambda step: sampling_probabilities("curriculum", difficulty=h, attempts=None, successes=None, step=step,
                                             curriculum_steps=10)
    assert np.count_nonzero(at(0)) < np.count_nonzero(at(5)) < np.count_nonzero(at(10)) == np.count_nonzero(at(99))


def test_prioritized_probabilities_are_one_minus_the_success_rate_normalised():
    attempts, successes = np.array([4, 8, 0, 2]), np.array([1, 8, 0, 1])
    s = np.array([0.25, 1.0, 0.0, 0.5])
    np.testing.assert_allclose(success_rates(attempts, successes), s)
    np.testing.assert_allclose(prioritized_probabilities(attempts, successes), (1 - s) / (1 - s).sum())
    np.testing.assert_allclose(prioritized_probabilities([2, 2], [2, 2]), [0.5, 0.5])  # all solved: uniform


def test_a_solved_problem_is_sampled_less_once_its_successes_are_counted():
    attempts, successes = np.zeros(4), np.zeros(4)
    attempts, successes = updated_counts(attempts, successes, [2, 0, 2], [[1, 1], [0, 0], [1, 0]])
    np.testing.assert_array_equal(attempts, [2, 0, 4, 0])
    np.testing.assert_array_equal(successes, [0, 0, 3, 0])
    probabilities = prioritized_probabilities(attempts, successes)
    draws = np.concatenate([draw_problems(probabilities, 1, seed=0, step=step) for step in range(400)])
    frequency = np.bincount(draws, minlength=4) / draws.size
    assert frequency[2] < 0.5 * frequency[[0, 1, 3]].min()
    np.testing.assert_allclose(frequency, probabilities, atol=0.06)


def test_draws_are_distinct_while_they_can_be_and_fixed_by_seed_step_and_draw():
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.0])
    first = draw_problems(p, 4, seed=3, step=7, draw=1)
    assert sorted(first) == [0, 1, 2, 3]
    np.testing.assert_array_equal(first, draw_problems(p, 4, seed=3, step=7, draw=1))
    assert not np.array_equal(draw_problems(p, 3, seed=3, step=7), draw_problems(p, 3, seed=3, step=8)) or \
        not np.array_equal(draw_problems(p, 3, seed=3, step=7), draw_problems(p, 3, seed=4, step=7))
    assert 4 not in draw_problems(p, 6, seed=0, step=0)  # more than the problems with P > 0: repeats


def test_bad_switches_are_named():
    with pytest.raises(ValueError, match="sampling 'hardest'"):
        sampling_probabilities("hardest", difficulty=[0.0], attempts=[0], successes=[0], step=0, curriculum_steps=1)
    with pytest.raises(ValueError, match="curriculum_steps"):
        sampling_probabilities("curriculum", difficulty=[0.0], attempts=[0], successes=[0], step=0, curriculum_steps=0)
