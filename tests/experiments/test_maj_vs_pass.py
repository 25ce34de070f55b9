"""experiments/maj_vs_pass.py --quick, and the pass@k / maj@k estimators of experiments/rl_runs.py."""

import numpy as np
import pytest

from experiments.rl_runs import maj_at_k, pass_at_k
from tests.experiments.quick import run_quick


def test_curves_before_and_after_rl_on_both_splits(tmp_path):
    report, outcome = run_quick("maj_vs_pass", tmp_path)
    assert {(row["policy"], row["split"]) for row in outcome.rows} == {
        (p, s) for p in ("sft", "rl") for s in ("train", "held_out")}
    for policy in ("sft", "rl"):
        passes = [row["pass@k"] for row in outcome.rows if row["policy"] == policy and row["split"] == "train"]
        assert passes == sorted(passes)  # pass@k never falls with k


def test_pass_at_k_is_the_unbiased_estimator():
    correct = np.array([[True, False, False, False], [False] * 4, [True] * 4])
    assert pass_at_k(correct, 1) == pytest.approx((1 / 4 + 0 + 1) / 3)
    assert pass_at_k(correct, 2) == pytest.approx((1 - 3 / 6 + 0 + 1) / 3)  # 1 − C(3,2)/C(4,2) for the first
    assert pass_at_k(correct, 4) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="k must be in 1..4"):
        pass_at_k(correct, 5)


def test_maj_at_k_votes_for_the_most_frequent_answer():
    answers = np.array([["7", "7", "9"], ["1", "2", "2"]])
    correct = np.array([[True, True, False], [True, False, False]])
    assert maj_at_k(answers, correct, 3) == 0.5  # "7" wins and is right, "2" wins and is wrong
    assert maj_at_k(answers, correct, 1) == pytest.approx(np.mean([2 / 3, 1 / 3]), abs=0.15)
