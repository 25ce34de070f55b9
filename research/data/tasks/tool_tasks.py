"""Problems a Python tool makes easy: arithmetic on large numbers and list manipulation.

Each problem asks for one integer, computed from numbers of `difficulty` digits:

    product   a · b                                   "What is 4821 * 7734?"
    sum       a + b + c                               "What is 4821 + 7734 + 1203?"
    largest   the sum of the k largest of n numbers   "What is the sum of the 2 largest numbers in [...]?"

Besides the answer and a worked line (`reasoning`, for answering directly), every problem carries in
`inputs["program"]` a one-line Python program that prints the answer: what a model calling the
`python` tool runs (research/rl/tool_calls.py renders the call, the tool's turn and the answer as
one training trace). Difficulty = digits per number: 2 to 4 in train, 5 or 6 held out.
"""

import random

from research.data.tasks.problem import Problem

NAME = "tool_tasks"
DIFFICULTIES = {"train": (2, 3, 4), "held_out": (5, 6)}
KINDS = ("product", "sum", "largest")
QUESTION_SUFFIX = " Answer with the integer."


def _number(rng: random.Random, digits: int) -> int:
    return rng.randint(10 ** (digits - 1), 10 ** digits - 1)


def make_problem(rng: random.Random, difficulty: int, problem_id: str) -> Problem:
    """A problem of a random kind over `difficulty`-digit numbers, its answer, worked line and program."""
    kind = rng.choice(KINDS)
    if kind == "product":
        a, b = _number(rng, difficulty), _number(rng, difficulty)
        expression, answer = f"{a} * {b}", a * b
        question, reasoning = f"What is {expression}?", f"{expression} = {answer}"
    elif kind == "sum":
        terms = [_number(rng, difficulty) for _ in range(3)]
        expression, answer = " + ".join(map(str, terms)), sum(terms)
        question, reasoning = f"What is {expression}?", f"{expression} = {answer}"
    else:
        numbers = [_number(rng, difficulty) for _ in range(rng.randint(4, 6))]
        k = rng.randint(2, 3)
        largest = sorted(numbers)[-k:]
        expression, answer = f"sum(sorted({numbers})[-{k}:])", sum(largest)
        question = f"What is the sum of the {k} largest numbers in {numbers}?"
        reasoning = f"The {k} largest are {', '.join(map(str, largest))}; their sum is {answer}"
    return Problem(id=problem_id, suite=NAME, prompt=question + QUESTION_SUFFIX, answer=str(answer),
                   difficulty=difficulty, reasoning=reasoning, inputs={"program": f"print({expression})"})
