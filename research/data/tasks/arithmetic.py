"""Arithmetic word problems: a quantity changed by a chain of steps, answered exactly.

A person starts with q0 units of something; each step maps q to a new quantity:

    gain k: q + k     use k: q − k (k < q)     buy g bags of k: q + g·k
    double / triple: m·q     use n/d of it: q·(1 − n/d)     split into n, keep one: q / n

The answer is the final q as an exact rational (`fractions.Fraction`), written as an
integer ("12") or a reduced fraction ("25/2"). Difficulty = the number of steps; the
numbers drawn grow with it (up to 10 × difficulty). Train has 1 to 3 steps, held-out 4 or 5.
"""

import random
from fractions import Fraction

from research.data.tasks.problem import Problem

NAME = "arithmetic"
DIFFICULTIES = {"train": (1, 2, 3), "held_out": (4, 5)}

PEOPLE = ("Mia", "Noah", "Ava", "Liam", "Zoe", "Omar", "Ines", "Kai", "Lena", "Ravi")
SUPPLIES = (("litres", "juice"), ("kilograms", "flour"), ("metres", "rope"), ("cups", "rice"),
            ("grams", "tea"), ("bottles", "water"))
MULTIPLIERS = {2: "doubles", 3: "triples"}


def format_number(value: Fraction) -> str:
    """`value` as "12", "-3" or "25/2" (lowest terms, sign on the numerator)."""
    value = Fraction(value)
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def _step(rng: random.Random, quantity: Fraction, person: str, unit: str, magnitude: int):
    """One random step: (sentence, new quantity, worked line)."""
    q = format_number(quantity)
    kinds = ["gain", "bags", "scale", "portion", "split"] + (["use"] if quantity > 1 else [])
    kind = rng.choice(kinds)
    if kind == "gain":
        k = rng.randint(1, magnitude)
        new = quantity + k
        return f"{person} gets {k} more {unit}.", new, f"{q} + {k} = {format_number(new)}"
    if kind == "use":
        k = rng.randint(1, -(-quantity.numerator // quantity.denominator) - 1)  # 1 <= k < q
        new = quantity - k
        return f"{person} uses {k} {unit}.", new, f"{q} - {k} = {format_number(new)}"
    if kind == "bags":
        bags, each = rng.randint(2, 5), rng.randint(2, magnitude)
        new = quantity + bags * each
        return (f"{person} buys {bags} bags holding {each} {unit} each.", new,
                f"{bags} * {each} = {bags * each}, and {q} + {bags * each} = {format_number(new)}")
    if kind == "scale":
        factor = rng.choice(sorted(MULTIPLIERS))
        new = quantity * factor
        return f"{person}'s supply {MULTIPLIERS[factor]}.", new, f"{q} * {factor} = {format_number(new)}"
    if kind == "portion":
        denominator = rng.randint(2, 5)
        share = Fraction(rng.randint(1, denominator - 1), denominator)
        used, new = quantity * share, quantity * (1 - share)
        return (f"{person} uses {format_number(share)} of it.", new,
                f"{format_number(share)} of {q} is {format_number(used)}, and {q} - {format_number(used)} = "
                f"{format_number(new)}")
    parts = rng.randint(2, 5)
    new = quantity / parts
    return (f"{person} splits it equally into {parts} jars and keeps one jar.", new,
            f"{q} / {parts} = {format_number(new)}")


def make_problem(rng: random.Random, difficulty: int, problem_id: str) -> Problem:
    """A word problem of `difficulty` steps, its exact answer and a worked solution."""
    person = rng.choice(PEOPLE)
    unit, stuff = rng.choice(SUPPLIES)
    magnitude = 10 * difficulty
    quantity = Fraction(rng.randint(2, magnitude))
    sentences = [f"{person} has {quantity} {unit} of {stuff}."]
    lines = [f"Start with {quantity} {unit}."]
    for _ in range(difficulty):
        sentence, quantity, line = _step(rng, quantity, person, unit, magnitude)
        sentences.append(sentence)
        lines.append(line)
    answer = format_number(quantity)
    question = (f"How many {unit} of {stuff} does {person} have now? "
                "Give the answer as an integer or a fraction in lowest terms.")
    lines.append(f"So {person} has {answer} {unit}.")
    return Problem(id=problem_id, suite=NAME, prompt=" ".join(sentences + [question]), answer=answer,
                   difficulty=difficulty, reasoning="\n".join(lines))
