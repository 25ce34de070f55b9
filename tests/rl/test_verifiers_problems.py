"""research/rl/verifiers/problems.py: every generated problem's reference passes its own
verifier, and perturbed answers do not."""

import dataclasses

import pytest

from research.data.tasks import generate_problems
from research.data.tasks.knights_knaves import solutions
from research.rl.verifiers import problem_score

VERIFIED_SUITES = ("arithmetic", "countdown", "knights_knaves")
COUNT = 300  # per split and suite


@pytest.mark.parametrize("suite", VERIFIED_SUITES)
@pytest.mark.parametrize("split", ["train", "held_out"])
def test_every_reference_answer_passes_its_verifier(suite, split):
    for problem in generate_problems(suite, split, COUNT, seed=3):
        verdict = problem_score(problem, problem.answer)
        assert verdict.correct, (problem.id, problem.answer, verdict)


@pytest.mark.parametrize("suite", VERIFIED_SUITES)
def test_another_problems_reference_fails(suite):
    problems = generate_problems(suite, "train", 40, seed=4)
    wrong = [problem_score(problem, other.answer)
             for problem, other in zip(problems, problems[1:]) if problem.answer != other.answer]
    assert len(wrong) > 20
    assert sum(verdict.correct for verdict in wrong) < 0.2 * len(wrong)  # a few coincide by chance
    assert all(verdict.reason != "correct" for verdict in wrong if not verdict.correct)


def test_knights_and_knaves_references_are_the_only_solutions():
    for split in ("train", "held_out"):
        for problem in generate_problems("knights_knaves", split, 60, seed=5):
            found = solutions(problem.inputs["people"], problem.inputs["statements"])
            assert len(found) == 1
            flipped = {person: not knight for person, knight in found[0].items()}
            answer = ", ".join(f"{p} is a {'knight' if k else 'knave'}" for p, k in flipped.items())
            assert problem_score(problem, answer).reason == "wrong"


@pytest.mark.parametrize("suite", VERIFIED_SUITES)
def test_garbage_scores_zero_with_a_reason(suite):
    problem = generate_problems(suite, "train", 1)[0]
    for garbage in ("", "no idea", "__import__('os').system('x')", "\x00" * 10):
        verdict = problem_score(problem, garbage)
        assert verdict.score == 0.0 and verdict.reason in ("unparseable", "wrong", "wrong value")


def test_coding_references_pass_in_the_sandbox_and_a_wrong_program_fails():
    problems = generate_problems("coding", "train", 2) + generate_problems("coding", "held_out", 1)
    for problem in problems:
        assert problem_score(problem, f"```python\n{problem.answer}\n```").correct, problem.id
    identity = "def transform(value):\n    return value"
    assert problem_score(problems[0], identity).reason == "failed"
    assert problem_score(problems[0], "").reason == "no code"


def test_a_suite_without_a_verifier_raises_naming_it():
    problem = dataclasses.replace(generate_problems("arithmetic", "train", 1)[0], suite="poetry")
    with pytest.raises(ValueError, match="no verifier for suite 'poetry'"):
        problem_score(problem, "1")
