"""research/decoding/speculative_theory.py: Leviathan et al.'s Table 1 values and hand-computed speedups."""

import pytest

from research.decoding.speculative_theory import expected_speedup, expected_tokens_per_target_call


@pytest.mark.parametrize("alpha, gamma, table_1", [(0.8, 5, 3.69), (0.9, 10, 6.86)])
def test_tokens_per_target_call_reproduces_table_1(alpha, gamma, table_1):
    """Table 1 lists the improvement in target calls, the speedup at c = 0 (PAPERS.md)."""
    assert round(expected_tokens_per_target_call(alpha, gamma), 2) == table_1
    assert expected_speedup(alpha, gamma, cost_ratio=0.0) == expected_tokens_per_target_call(alpha, gamma)


def test_the_limits_and_a_value_computed_by_hand():
    assert expected_tokens_per_target_call(0.0, 7) == 1.0  # every proposal rejected: the correction only
    assert expected_tokens_per_target_call(1.0, 7) == 8.0  # every proposal accepted, plus the bonus token
    assert expected_tokens_per_target_call(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)
    # (1 − 0.8⁶) / (0.2 · (5 · 0.05 + 1)) = 0.737856 / 0.25
    assert expected_speedup(0.8, 5, cost_ratio=0.05) == pytest.approx(2.951424)
    assert expected_speedup(0.0, 3, cost_ratio=0.1) == pytest.approx(1 / 1.3)  # a draft that never helps costs


@pytest.mark.parametrize("call, message", [
    (lambda: expected_tokens_per_target_call(1.2, 3), "alpha must be a number in"),
    (lambda: expected_tokens_per_target_call(0.5, -1), "num_draft_tokens must be an int >= 0"),
    (lambda: expected_speedup(0.5, 3, cost_ratio=-0.1), "cost_ratio must be a finite number >= 0"),
])
def test_bad_arguments_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()
