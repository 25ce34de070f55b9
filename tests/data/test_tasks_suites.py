"""research/data/tasks/ suites: seeded, deterministic, held-out strictly harder, answers right."""

import ast
import json
import re
from fractions import Fraction

import pytest

from research.data.reasoning import parse_response
from research.data.tasks import SPLITS, SUITES, arithmetic, generate_problem, generate_problems
from research.data.tasks.knights_knaves import describe, render, solutions, statement_holds

COUNT = 120


def intrinsic_difficulty(problem) -> int:
    """What the difficulty level should count, read off the problem itself."""
    if problem.suite == "arithmetic":
        return len(problem.reasoning.splitlines()) - 2  # start line, one line a step, the conclusion
    if problem.suite == "countdown":
        return len(problem.inputs["numbers"])
    if problem.suite == "knights_knaves":
        return len(problem.inputs["people"])
    if problem.suite == "tool_tasks":
        return len(re.findall(r"\d+", problem.inputs["program"])[0])  # digits of each number
    return len(re.findall(r"^\d+\. ", problem.prompt, flags=re.MULTILINE))


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_held_out_is_strictly_harder_than_train(suite):
    train = generate_problems(suite, "train", COUNT)
    held_out = generate_problems(suite, "held_out", COUNT)
    for problem in train + held_out:
        assert problem.difficulty == intrinsic_difficulty(problem), problem.id
    assert max(p.difficulty for p in train) < min(p.difficulty for p in held_out)
    assert {p.difficulty for p in train} == set(SUITES[suite].DIFFICULTIES["train"])  # every level drawn


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_generation_is_deterministic_seeded_and_prefix_stable(suite):
    first = generate_problems(suite, "train", 20, seed=7)
    assert first == generate_problems(suite, "train", 20, seed=7)
    assert first[:5] == generate_problems(suite, "train", 5, seed=7)
    assert first[13] == generate_problem(suite, "train", 7, 13)
    other_seed = generate_problems(suite, "train", 20, seed=8)
    assert sum(a.prompt == b.prompt for a, b in zip(first, other_seed)) < 3
    assert len({problem.id for problem in first + other_seed}) == 40


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_records_are_plain_data_and_training_text_is_think_then_answer(suite):
    for problem in generate_problems(suite, "held_out", 10):
        assert problem.suite == suite and problem.prompt and problem.answer and problem.reasoning
        assert json.loads(json.dumps(problem.inputs)) == problem.inputs
        parsed = parse_response(problem.training_text().split("<|assistant|>")[-1])
        assert parsed.well_formed and (parsed.thinking, parsed.answer) == (problem.reasoning, problem.answer)


def test_arithmetic_answers_follow_the_worked_steps():
    for problem in generate_problems("arithmetic", "train", COUNT) + generate_problems("arithmetic", "held_out", 40):
        lines = problem.reasoning.splitlines()
        value = Fraction(re.search(r"\d+", lines[0])[0])
        for line in lines[1:-1]:
            *_, last = line.split(", and ")
            left, right = last.rsplit(" = ", 1)
            a, operator, b = re.fullmatch(r"(\S+) ([-+*/]) (\S+)", left).groups()
            assert Fraction(a) == value
            value = {"+": value + Fraction(b), "-": value - Fraction(b), "*": value * Fraction(b),
                     "/": value / Fraction(b)}[operator]
            assert Fraction(right) == value and value > 0
        assert problem.answer == arithmetic.format_number(value)


def _value(node) -> Fraction:
    """The value of a countdown reference expression, from its syntax tree (+ - * / on integers)."""
    if isinstance(node, ast.Constant):
        return Fraction(node.value)
    left, right = _value(node.left), _value(node.right)
    return {ast.Add: left + right, ast.Sub: left - right, ast.Mult: left * right,
            ast.Div: left / right if right else None}[type(node.op)]


def test_countdown_references_use_the_numbers_and_reach_the_target():
    for split in SPLITS:
        for problem in generate_problems("countdown", split, COUNT):
            tree = ast.parse(problem.answer, mode="eval").body
            literals = sorted(node.value for node in ast.walk(tree) if isinstance(node, ast.Constant))
            assert literals == sorted(problem.inputs["numbers"])
            assert _value(tree) == problem.inputs["target"]
            assert problem.inputs["target"] not in problem.inputs["numbers"]


def test_knights_and_knaves_puzzles_have_one_solution_stated_in_the_prompt():
    for split in SPLITS:
        for problem in generate_problems("knights_knaves", split, 60):
            people, statements = problem.inputs["people"], problem.inputs["statements"]
            found = solutions(people, statements)
            assert len(found) == 1 and problem.answer == describe(found[0]) + "."
            for speaker, statement in statements:
                assert f'{speaker} says: "{render(statement, speaker)}."' in problem.prompt
                assert statement_holds(statement, found[0]) == found[0][speaker]


def test_knights_and_knaves_solver_finds_every_consistent_assignment():
    # A: "B is a knave", B: "A and I are the same kind" -> A knight, B knave only.
    statements = [["A", ["knave", "B"]], ["B", ["same", "A", "B"]]]
    assert solutions(["A", "B"], statements) == [{"A": True, "B": False}]
    assert len(solutions(["A"], [["A", ["knight", "A"]]])) == 2  # "I am a knight": either
    assert solutions(["A"], [["A", ["knave", "A"]]]) == []  # "I am a knave": nobody can say it
    with pytest.raises(ValueError, match="unknown statement form 'xor'"):
        statement_holds(["xor", "A", "B"], {"A": True, "B": True})


def test_coding_references_pass_their_hidden_tests_and_examples():
    """The references are this module's own trusted strings, so they run in-process here."""
    for split in SPLITS:
        for problem in generate_problems("coding", split, 60):
            namespace = {}
            exec(problem.answer, namespace)
            exec(problem.tests, namespace)
            for argument, expected in problem.inputs["examples"]:
                assert namespace["transform"](argument) == expected
            assert problem.answer.startswith(problem.inputs["signature"])
            assert problem.tests.count("assert transform(") == 6


def test_coding_hidden_tests_reject_a_wrong_solution():
    rejected = 0
    for problem in generate_problems("coding", "train", 40):
        namespace = {}
        signature = problem.inputs["signature"]
        exec(f"{signature}\n    return {'xs' if 'xs:' in signature else 's'}", namespace)
        try:
            exec(problem.tests, namespace)
        except AssertionError:
            rejected += 1
    assert rejected >= 36  # the identity passes only where the operations happen to change nothing


@pytest.mark.parametrize("args, message", [
    (("poetry", "train", 3), "unknown suite 'poetry'"),
    (("countdown", "test", 3), "unknown split 'test'"),
    (("countdown", "train", -1), "count must be a non-negative integer"),
])
def test_bad_arguments_raise_naming_them(args, message):
    with pytest.raises(ValueError, match=message):
        generate_problems(*args)
