"""Countdown: reach a target from given numbers with + − × ÷ and parentheses.

A problem is drawn backwards, so it is solvable by construction: draw `difficulty`
numbers (small ones from 1..25, now and then a large one from {25, 50, 75, 100}),
then repeatedly replace two numbers a, b of the pool by one of

    a + b,   a − b (a > b),   a × b,   a ÷ b (b > 1 divides a)

until one value is left: the target, a positive integer that is none of the numbers
(at most `MAX_TARGET`). Every intermediate value is a positive integer, so the
reference expression is valid under the strictest rules (integers only, each number
used once). Difficulty = how many numbers are given: 3 or 4 in train, 5 or 6 held out.
"""

import random

from research.data.tasks.problem import Problem

NAME = "countdown"
DIFFICULTIES = {"train": (3, 4), "held_out": (5, 6)}
LARGE_NUMBERS = (25, 50, 75, 100)
MAX_TARGET = 999


def _combinations(a: int, b: int) -> list[tuple[str, int]]:
    """(operator, value) of every rule-abiding way to combine a and b in this order."""
    options = [("+", a + b), ("*", a * b)]
    if a > b:
        options.append(("-", a - b))
    if b > 1 and a % b == 0:
        options.append(("/", a // b))
    return options


def _draw_numbers(rng: random.Random, count: int) -> list[int]:
    numbers = [rng.randint(1, 25) for _ in range(count)]
    if rng.random() < 0.3:
        numbers[0] = rng.choice(LARGE_NUMBERS)
    rng.shuffle(numbers)
    return numbers


def _solve_backwards(rng: random.Random, numbers: list[int]) -> tuple[int, str, list[str]]:
    """Combines all `numbers` at random: (value, expression, worked lines)."""
    pool = [(number, str(number)) for number in numbers]
    lines = []
    while len(pool) > 1:
        (a, left), (b, right) = [pool.pop(rng.randrange(len(pool))) for _ in range(2)]
        operator, value = rng.choice(_combinations(a, b))
        lines.append(f"{a} {operator} {b} = {value}")
        wrap = [part if part.isdigit() else f"({part})" for part in (left, right)]
        pool.append((value, f"{wrap[0]} {operator} {wrap[1]}"))
    return pool[0][0], pool[0][1], lines


def make_problem(rng: random.Random, difficulty: int, problem_id: str) -> Problem:
    """A solvable countdown problem with `difficulty` numbers and a reference expression."""
    while True:
        numbers = _draw_numbers(rng, difficulty)
        target, expression, lines = _solve_backwards(rng, numbers)
        if 1 < target <= MAX_TARGET and target not in numbers:
            break
    prompt = (f"Using the numbers {numbers}, write an arithmetic expression that equals {target}. "
              "You may use +, -, *, / and parentheses, and each number at most once.")
    reasoning = "\n".join(lines + [f"So {expression} = {target}."])
    return Problem(id=problem_id, suite=NAME, prompt=prompt, answer=expression, difficulty=difficulty,
                   reasoning=reasoning, inputs={"numbers": numbers, "target": target})
