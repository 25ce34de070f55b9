"""research/rl/verifiers/math_answers.py: answers equal by exact value, never by eval."""

import pytest

from research.rl.verifiers.math_answers import extract_final_answer, math_answers_equal, math_score, parse_math_answer


@pytest.mark.parametrize("predicted, reference", [
    ("12", "12"),
    ("1,000", "1000"),
    ("1,000,000", "1000000"),
    (r"1\,000", "1000"),
    ("3/4", "0.75"),
    (r"\frac{3}{4}", "0.75"),
    (r"\dfrac{3}{4}", "3/4"),
    (r"\tfrac34", "3/4"),
    ("6/8", "3/4"),
    ("-5", "-5"),
    ("\u22125", "-5"),
    (r"-\frac{1}{2}", "-0.5"),
    (r"\frac{-1}{2}", "-1/2"),
    ("+3", "3"),
    (".5", "1/2"),
    ("12.50", "25/2"),
    (r"so first \boxed{1}, finally \boxed{\dfrac{3}{4}}", "3/4"),
    (r"\boxed{\frac{1}{2}}", "0.5"),
    (r"\boxed 7.", "7"),
    (r"\fbox{7}", "7"),
    ("$12$", "12"),
    (r"\(12\)", "12"),
    (r"\$12", "12"),
    ("12 apples", "12"),
    ("12 cm", "12"),
    ("12.", "12"),
    (r"12\text{ cm}", "12"),
    (r"\boxed{\text{12 apples}}", "12"),
    ("50%", "50"),
    (r"50\%", "50"),
    (r"45^\circ", "45"),
    ("x = 5", "5"),
    (r"\left( 1, \frac{1}{2} \right)", "(1, 0.5)"),
    ("Alice", "alice"),
])
def test_equivalent_forms_are_equal_both_ways(predicted, reference):
    assert math_answers_equal(predicted, reference)
    assert math_answers_equal(reference, predicted)


@pytest.mark.parametrize("predicted, reference", [
    ("13", "12"),
    ("0.7", "3/4"),
    ("-3/4", "3/4"),
    ("0.5", "50%"),  # a percentage is read in its unit, "50%" is 50
    ("12 + 3", "15"),
    ("12+3", "12"),
    ("1,00", "100"),  # not a thousands separator
    ("(1, 2)", "[1, 2]"),
    ("(1, 2)", "(2, 1)"),
    (r"\boxed{12} and then \boxed{13}", "12"),
    (r"\boxed{12", "12"),
    ("1/0", "1"),
    ("", "12"),
    ("abc", "12"),
    ("9" * 5000, "9"),  # more digits than int() reads: not a number, no exception
    ("12" + " " * 20_000 + "3", "12"),  # long model text is read in linear time
    ("12 " + "apples " * 5_000 + "3", "12"),
    ("__import__('os').system('x')", "0"),
])
def test_near_misses_and_garbage_are_not_equal(predicted, reference):
    assert not math_answers_equal(predicted, reference)


@pytest.mark.parametrize("predicted", [None, 12, b"12"])
def test_non_string_predictions_are_false_not_errors(predicted):
    assert not math_answers_equal(predicted, "12")


def test_a_non_string_reference_raises_naming_it():
    with pytest.raises(ValueError, match="reference must be a string"):
        math_answers_equal("12", 12)


def test_values_are_exact_rationals():
    assert parse_math_answer("0.1") + parse_math_answer("0.2") == parse_math_answer("3/10")
    assert parse_math_answer("1" + "0" * 40) == 10 ** 40
    assert not math_answers_equal("0.3333333333", "1/3")


@pytest.mark.parametrize("text, expected", [
    (r"Thus \boxed{\frac{3}{4}} it is.", r"\frac{3}{4}"),
    ("The answer is: 42 apples.\nDone.", "42 apples."),
    ("So Ravi has 143/5 grams.", "143/5"),
    ("Between 1,000 and 2,500 of them", "2,500"),
    ("no numbers here", None),
    (None, None),
])
def test_extract_final_answer(text, expected):
    assert extract_final_answer(text) == expected


def test_math_score_gives_reasons():
    assert math_score(r"thinking done, \boxed{0.75}", "3/4").correct
    assert math_score("The answer is 4.", "3/4").reason == "wrong"
    verdict = math_score("I do not know.", "3/4")
    assert (verdict.score, verdict.reason) == (0.0, "unparseable")
