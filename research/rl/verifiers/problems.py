"""One entry point for the procedural suites: the verdict on an answer to a `Problem`.

Dispatches on `problem.suite` (research/data/tasks/suites.py) to the suite's verifier
with what the problem records: arithmetic answers by value against `problem.answer`
(math_answers.py), tool tasks' integers likewise, countdown expressions against `inputs["numbers"]` and
`inputs["target"]`, knights-and-knaves answers against `inputs["people"]` and
`inputs["statements"]`, code (the last ```python block, else the whole answer) run
against the hidden `problem.tests` in the sandbox (code.py). `answer` is the model's answer alone (the text after
`</think>`, see research/data/reasoning.py `parse_response`); the format reward
(format.py) judges the layout separately.
"""

from collections.abc import Callable

from research.data.tasks.problem import Problem
from research.rl.verifiers.code import code_reward
from research.rl.verifiers.countdown import countdown_score
from research.rl.verifiers.knights_knaves import knights_knaves_score
from research.rl.verifiers.math_answers import math_score
from research.rl.verifiers.verdict import Verdict

SCORERS: dict[str, Callable[[Problem, str], Verdict]] = {
    "arithmetic": lambda problem, answer: math_score(answer, problem.answer),
    "countdown": lambda problem, answer: countdown_score(answer, problem.inputs["numbers"],
                                                         problem.inputs["target"]),
    "knights_knaves": lambda problem, answer: knights_knaves_score(answer, problem.inputs["people"],
                                                                   problem.inputs["statements"]),
    "coding": lambda problem, answer: code_reward(answer, problem.tests),
    "tool_tasks": lambda problem, answer: math_score(answer, problem.answer),
}


def problem_score(problem: Problem, answer: str) -> Verdict:
    """The verdict of `problem`'s suite on `answer`; ValueError for a suite without a verifier here."""
    if problem.suite not in SCORERS:
        raise ValueError(f"no verifier for suite {problem.suite!r} of problem {problem.id!r}; "
                         f"verified suites: {sorted(SCORERS)}")
    return SCORERS[problem.suite](problem, answer)
