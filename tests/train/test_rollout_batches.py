"""research/train/rollout_batches.py's shared pieces: the prompts that fit, their padding and the verifier reward
(VerifiableRollouts through the loop: tests/train/test_grpo.py)."""

import ml_collections
import numpy as np
import pytest

from research.train.rollout_batches import ProblemStream, fitting_prompts, padded_prompts, verifier_rewards


def test_fitting_prompts_keeps_the_streams_order_and_skips_what_is_too_long():
    def prompt_ids(problem):
        return [7] * len(problem.prompt)

    every = ProblemStream(("arithmetic", "countdown"), "train", 0).take(12)
    limit = int(np.median([len(problem.prompt) for problem in every]))
    stream = ProblemStream(("arithmetic", "countdown"), "train", 0)
    kept, skipped = fitting_prompts(stream, prompt_ids, 4, limit)
    fits = [problem for problem in every if len(problem.prompt) <= limit][:4]
    assert [problem.id for problem, _ in kept] == [problem.id for problem in fits]
    assert all(len(ids) <= limit for _, ids in kept)
    assert stream.taken == 4 + skipped and skipped == every.index(fits[-1]) + 1 - 4


def test_padded_prompts_right_pads_each_row_and_counts_its_tokens():
    padded, lengths = padded_prompts([[5, 6, 7], [8]], 4, pad_id=0)
    np.testing.assert_array_equal(padded, [[5, 6, 7, 0], [8, 0, 0, 0]])
    np.testing.assert_array_equal(lengths, [3, 1])
    assert padded.dtype == lengths.dtype == np.int32


@pytest.mark.parametrize("overlong", [False, True])
def test_verifier_rewards_add_the_format_weight_and_the_soft_overlong_punishment(overlong):
    config = ml_collections.ConfigDict(dict(format_weight=0.5, soft_overlong=dict(enabled=overlong, max_length=8,
                                                                                  cache_length=4)))
    score, well_formed, lengths = np.array([1.0, 0.0, 1.0]), np.array([1.0, 1.0, 0.0]), np.array([2.0, 7.0, 9.0])
    # lengths up to 8 − 4 = 4 go unpunished, 7 loses (7 − 4)/4, 9 (past 8) loses 1
    punishment = np.array([0.0, -0.75, -1.0]) if overlong else np.zeros(3)
    rewards = verifier_rewards(score, well_formed, lengths, config)
    np.testing.assert_allclose(rewards, score + 0.5 * well_formed + punishment)
    assert rewards.dtype == np.float32
