"""The procedural task suites and their seeded, offline generation.

Each suite module (arithmetic, countdown, knights_knaves, coding, tool_tasks) has a `NAME`, its
`DIFFICULTIES` per split and `make_problem(rng, difficulty, problem_id)`. Splits:
`train`, and `held_out`, whose difficulty levels are all above train's (more steps,
numbers, people or operations), for testing generalisation beyond the training range.

Problem i of (suite, split, seed) is drawn from its own `random.Random` seeded with the
string "{suite}/{split}/{seed}/{i}" (string seeds hash the same in every process), so
it is the same whatever the count asked for and whichever process asks.
"""

import random

from research.data.tasks import arithmetic, coding, countdown, knights_knaves, tool_tasks
from research.data.tasks.problem import Problem

SUITES = {module.NAME: module for module in (arithmetic, countdown, knights_knaves, coding, tool_tasks)}
SPLITS = ("train", "held_out")


def check_suite_and_split(suite: str, split: str) -> None:
    """ValueError naming an unknown suite or split."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; known suites: {sorted(SUITES)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known splits: {list(SPLITS)}")


def generate_problem(suite: str, split: str, seed: int, index: int) -> Problem:
    """Problem `index` of `suite`'s `split` for `seed`, its difficulty drawn uniformly
    from the split's levels."""
    check_suite_and_split(suite, split)
    problem_id = f"{suite}/{split}/{seed}/{index}"
    rng = random.Random(problem_id)
    module = SUITES[suite]
    return module.make_problem(rng, rng.choice(module.DIFFICULTIES[split]), problem_id)


def generate_problems(suite: str, split: str, count: int, seed: int = 0) -> list[Problem]:
    """Problems 0..count-1 of `suite`'s `split` for `seed` (ValueError for a negative count)."""
    check_suite_and_split(suite, split)
    if not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be a non-negative integer, got {count!r}")
    return [generate_problem(suite, split, seed, index) for index in range(count)]
