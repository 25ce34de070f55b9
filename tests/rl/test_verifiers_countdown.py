"""research/rl/verifiers/countdown.py: exact, eval-free scoring of countdown expressions."""

import builtins

import pytest

from research.rl.verifiers.countdown import MAX_DEPTH, countdown_score

NUMBERS, TARGET = [3, 5, 2, 4], 12


@pytest.mark.parametrize("expression", [
    "(3+5)*2-4",
    "(3 + 5) × 2 − 4",
    "((3 + 5) * 2) - 4 = 12",
    "3 * 4",
    "4 * (5 - 2)",
    " ( 5 + 4 + 3 ) ",
])
def test_expressions_reaching_the_target_are_correct(expression):
    verdict = countdown_score(expression, NUMBERS, TARGET)
    assert (verdict.correct, verdict.score, verdict.reason) == (True, 1.0, "correct")


def test_division_is_exact_rational_arithmetic():
    assert countdown_score("7 / 2 * 2", [7, 2, 2], 7).correct
    assert countdown_score("5 ÷ 2 × 2", [5, 2, 2], 5).correct
    assert countdown_score("7 / 2", [7, 2], 3).reason == "wrong value"  # no floor division


@pytest.mark.parametrize("expression, reason", [
    ("3 + 5 + 2 + 4", "wrong value"),
    ("(3 + 5) * 2 - 4 - 4", "number not available"),  # 4 used twice
    ("6 * 2", "number not available"),
    ("-3 + 15", "number not available"),
    ("5 / (3 - 3)", "number not available"),
    ("3 5", "unparseable"),
    ("(3 + 5", "unparseable"),
    ("3 +", "unparseable"),
    ("-3 + 5", "unparseable"),  # unary minus is not allowed
    ("", "unparseable"),
    ("abs(3)", "unparseable"),
    ("3 ** 4", "unparseable"),
    ("9" * 5000, "unparseable"),
    ("(" * (MAX_DEPTH + 1) + "3" + ")" * (MAX_DEPTH + 1), "unparseable"),
])
def test_wrong_answers_score_zero_with_their_reason(expression, reason):
    verdict = countdown_score(expression, NUMBERS, TARGET)
    assert (verdict.correct, verdict.score, verdict.reason) == (False, 0.0, reason)


def test_division_by_zero_is_a_reason_not_an_error():
    assert countdown_score("5 / (3 - 3)", [5, 3, 3], 1).reason == "division by zero"


def test_malicious_strings_are_rejected_without_running(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the verifier must not evaluate code")

    for name in ("eval", "exec", "compile", "__import__"):
        monkeypatch.setattr(builtins, name, forbidden)
    for expression in ("__import__('os').system('x')", "3 + __import__('os').getpid()",
                       "(lambda: 3)()", "[3][0] * 4", "3 if 1 else 4"):
        verdict = countdown_score(expression, NUMBERS, TARGET)
        assert (verdict.score, verdict.reason) == (0.0, "unparseable"), expression


def test_not_a_string_is_unparseable():
    assert countdown_score(None, NUMBERS, TARGET).reason == "unparseable"


@pytest.mark.parametrize("numbers, target, field", [
    ("3524", 12, "numbers"), ([3, 5.0], 12, "numbers"), ([3, 5], "12", "target"), ([3, True], 12, "numbers"),
])
def test_a_malformed_task_raises_naming_the_field(numbers, target, field):
    with pytest.raises(ValueError, match=field):
        countdown_score("3 * 4", numbers, target)
