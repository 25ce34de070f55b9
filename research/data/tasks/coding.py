"""Small coding problems: a function applying a chain of list or string operations.

A problem asks for `transform(xs: list[int]) -> list[int]` or `transform(s: str) -> str`
that applies `difficulty` operations in order, each drawn from the tables below with
random parameters. Every operation is written twice: as a line of the reference
solution's source and as a Python function that computes the expected outputs of the
tests, so the problem never runs the source it ships (running model code is the
sandbox's job, research/rl/sandbox.py). The hidden tests are `assert transform(...) ==
...` lines on random inputs, an empty one among them; the prompt shows a few other
examples. Difficulty = the number of operations: 1 or 2 in train, 3 or 4 held out.
"""

import dataclasses
import random
from collections.abc import Callable

from research.data.tasks.problem import Problem

NAME = "coding"
DIFFICULTIES = {"train": (1, 2), "held_out": (3, 4)}
NUM_TESTS = 6
NUM_EXAMPLES = 2
VOWELS = "aeiou"
WORDS = ("apple", "river", "stone", "cloud", "tiger", "lemon", "piano", "maple", "ocean", "robot")


@dataclasses.dataclass(frozen=True)
class Operation:
    """One step: what the prompt says, the solution's line, and the step as a function."""

    description: str
    source: str
    apply: Callable


def _list_operation(rng: random.Random) -> Operation:
    kind = rng.choice(("above", "scale", "shift", "unique", "sort", "reverse", "rotate", "head", "even",
                       "prefix_sums"))
    k = rng.randint(1, 4)
    t = rng.randint(-3, 5)
    if kind == "above":
        return Operation(f"keep only the elements greater than {t}", f"xs = [x for x in xs if x > {t}]",
                         lambda xs: [x for x in xs if x > t])
    if kind == "scale":
        return Operation(f"multiply every element by {k + 1}", f"xs = [x * {k + 1} for x in xs]",
                         lambda xs: [x * (k + 1) for x in xs])
    if kind == "shift":
        return Operation(f"subtract {k} from every element", f"xs = [x - {k} for x in xs]",
                         lambda xs: [x - k for x in xs])
    if kind == "unique":
        return Operation("remove repeated elements, keeping the first occurrence of each",
                         "xs = list(dict.fromkeys(xs))", lambda xs: list(dict.fromkeys(xs)))
    if kind == "sort":
        descending = rng.random() < 0.5
        return Operation(f"sort the elements in {'descending' if descending else 'ascending'} order",
                         f"xs = sorted(xs, reverse={descending})", lambda xs: sorted(xs, reverse=descending))
    if kind == "reverse":
        return Operation("reverse the order of the elements", "xs = xs[::-1]", lambda xs: xs[::-1])
    if kind == "rotate":
        return Operation(f"rotate the list left by {k} positions (wrapping around; an empty list stays empty)",
                         f"xs = xs[{k} % len(xs):] + xs[:{k} % len(xs)] if xs else xs",
                         lambda xs: xs[k % len(xs):] + xs[:k % len(xs)] if xs else xs)
    if kind == "head":
        return Operation(f"keep only the first {k + 1} elements", f"xs = xs[:{k + 1}]", lambda xs: xs[:k + 1])
    if kind == "even":
        return Operation("keep only the even elements", "xs = [x for x in xs if x % 2 == 0]",
                         lambda xs: [x for x in xs if x % 2 == 0])
    return Operation("replace each element by the sum of the elements up to and including it",
                     "xs = [sum(xs[:i + 1]) for i in range(len(xs))]",
                     lambda xs: [sum(xs[:i + 1]) for i in range(len(xs))])


def _string_operation(rng: random.Random) -> Operation:
    kind = rng.choice(("reverse", "upper", "lower", "no_vowels", "replace", "squeeze", "swapcase", "title"))
    if kind == "reverse":
        return Operation("reverse the string", "s = s[::-1]", lambda s: s[::-1])
    if kind == "upper":
        return Operation("convert it to uppercase", "s = s.upper()", str.upper)
    if kind == "lower":
        return Operation("convert it to lowercase", "s = s.lower()", str.lower)
    if kind == "no_vowels":
        return Operation(f"remove every vowel ({', '.join(VOWELS)}, in either case)",
                         f"s = ''.join(c for c in s if c.lower() not in {VOWELS!r})",
                         lambda s: "".join(c for c in s if c.lower() not in VOWELS))
    if kind == "replace":
        old, new = rng.sample("aeinorst", 2)
        return Operation(f"replace every {old!r} with {new!r}", f"s = s.replace({old!r}, {new!r})",
                         lambda s: s.replace(old, new))
    if kind == "squeeze":
        return Operation("collapse each run of the same character into one character",
                         "s = ''.join(c for i, c in enumerate(s) if i == 0 or s[i - 1] != c)",
                         lambda s: "".join(c for i, c in enumerate(s) if i == 0 or s[i - 1] != c))
    if kind == "swapcase":
        return Operation("swap the case of every letter", "s = s.swapcase()", str.swapcase)
    return Operation("capitalise the first letter of every word and lowercase the rest", "s = s.title()",
                     str.title)


def _random_list(rng: random.Random) -> list[int]:
    return [rng.randint(-5, 9) for _ in range(rng.randint(1, 7))]


def _random_string(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(1, 3))]
    return " ".join(word.upper() if rng.random() < 0.3 else word for word in words)


def make_problem(rng: random.Random, difficulty: int, problem_id: str) -> Problem:
    """A `transform` function of `difficulty` operations with its reference solution and tests."""
    on_lists = rng.random() < 0.5
    name, kind = ("xs", "list[int]") if on_lists else ("s", "str")
    draw_operation, draw_input = (_list_operation, _random_list) if on_lists else (_string_operation,
                                                                                  _random_string)
    operations = [draw_operation(rng) for _ in range(difficulty)]

    def expected(value):
        for operation in operations:
            value = operation.apply(value)
        return value

    header = f"transform({name}: {kind}) -> {kind}"
    signature = f"def {header}:"
    solution = "\n".join([signature] + [f"    {op.source}" for op in operations] + [f"    return {name}"])
    test_inputs = [[] if on_lists else ""] + [draw_input(rng) for _ in range(NUM_TESTS - 1)]
    tests = "\n".join(f"assert transform({value!r}) == {expected(value)!r}" for value in test_inputs)
    examples = [draw_input(rng) for _ in range(NUM_EXAMPLES)]
    steps = "\n".join(f"{index}. {op.description}" for index, op in enumerate(operations, 1))
    shown = "\n".join(f"transform({value!r}) == {expected(value)!r}" for value in examples)
    prompt = (f"Write a Python function `{header}` that takes its argument and, in order:\n"
              f"{steps}\nthen returns the result.\nExamples:\n{shown}")
    reasoning = "\n".join(
        [f"Step {index}: {op.description}, which is `{op.source}`." for index, op in enumerate(operations, 1)]
        + [f"Check: transform({examples[0]!r}) gives {expected(examples[0])!r}, as the example says."])
    return Problem(id=problem_id, suite=NAME, prompt=prompt, answer=solution, difficulty=difficulty,
                   reasoning=reasoning, tests=tests,
                   inputs={"signature": signature, "examples": [[value, expected(value)] for value in examples]})
