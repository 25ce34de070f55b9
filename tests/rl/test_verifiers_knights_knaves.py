"""research/rl/verifiers/knights_knaves.py: natural answers checked against the unique solution."""

import pytest

from research.rl.verifiers.knights_knaves import knights_knaves_score

# Alice: "Bob is a knave."  Bob: "Alice and I are the same kind."  Carol: "Alice is a knight or I am a knave."
PEOPLE = ["Alice", "Bob", "Carol"]
STATEMENTS = [
    ["Alice", ["knave", "Bob"]],
    ["Bob", ["same", "Alice", "Bob"]],
    ["Carol", ["or", ["knight", "Alice"], ["knave", "Carol"]]],
]


def test_the_example_puzzle_has_the_solution_the_answers_below_assume():
    assert knights_knaves_score("Alice is a knight, Bob is a knave, Carol is a knight.", PEOPLE, STATEMENTS).correct


@pytest.mark.parametrize("answer", [
    "alice is a knight, bob is a knave and carol is a knight",
    "ALICE IS A KNIGHT. BOB IS A KNAVE. CAROL IS A KNIGHT.",
    "Alice and Carol are knights; Bob is a knave.",
    "Bob is a knave, while Carol and Alice are both knights.",
    "Alice is not a knave, Bob isn't a knight, Carol is a knight.",
    "Knights: Alice, Carol. Knaves: Bob.",
    "The knaves are Bob, and the knights are Alice and Carol.",
])
def test_natural_phrasings_of_the_solution_are_correct(answer):
    verdict = knights_knaves_score(answer, PEOPLE, STATEMENTS)
    assert (verdict.score, verdict.reason) == (1.0, "correct")


@pytest.mark.parametrize("answer, reason", [
    ("Alice is a knight, Bob is a knight, Carol is a knight.", "wrong"),
    ("Alice is a knave, Bob is a knave, Carol is a knight.", "wrong"),
    ("Alice is a knight, Bob is a knave.", "incomplete"),
    ("Alice is a knight and Alice is a knave, Bob is a knave, Carol is a knight.", "contradictory"),
    ("I cannot tell.", "unparseable"),
    ("", "unparseable"),
    (None, "unparseable"),
    ("__import__('os').system('x')", "unparseable"),
])
def test_wrong_or_unreadable_answers_score_zero_with_their_reason(answer, reason):
    verdict = knights_knaves_score(answer, PEOPLE, STATEMENTS)
    assert (verdict.score, verdict.reason) == (0.0, reason)


def test_a_puzzle_without_a_unique_solution_is_a_caller_error():
    with pytest.raises(ValueError, match="2 solutions"):
        knights_knaves_score("Alice is a knight", ["Alice"], [["Alice", ["knight", "Alice"]]])
