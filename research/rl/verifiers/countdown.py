"""Countdown: does an expression over the given numbers reach the target exactly?

The expression is read by a tokenizer and a recursive-descent parser of

    expression := term (("+" | "-") term)*
    term       := factor (("*" | "/") factor)*        ("×" and "÷" also accepted)
    factor     := integer | "(" expression ")"

and evaluated in exact rationals (`fractions.Fraction`), so 7 / 2 * 2 is exactly 7 and
no float rounding decides a verdict; nothing is ever passed to `eval`. A trailing
"= value" (the model restating its result) is ignored: the verdict is about the left
side. Rules: each literal must be one of `numbers`, each given number used at most once
(not every number must be used); unary signs are not allowed.

Checks, in order, each failure with its reason: "unparseable" (a character outside the
grammar's tokens: names, calls, attributes, quotes), "number not available" (a literal
not among the numbers, or used more often than given), "unparseable" (tokens not in the
grammar's order, or parentheses nested deeper than `MAX_DEPTH`), "division by zero",
"wrong value"; else "correct".
"""

import re
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction

from research.rl.verifiers.verdict import CORRECT, Verdict, rejected

MAX_DEPTH = 32
_TOKEN = re.compile(r"\s*(?:(\d+)|([-+*/×÷−()]))")
_OPERATORS = {"×": "*", "÷": "/", "−": "-"}


class _Unparseable(Exception):
    """The expression is outside the grammar."""


def tokenize(expression: str) -> list[str]:
    """Integers and the symbols + - * / ( ) (×, ÷ and − as *, / and -); _Unparseable on anything else."""
    tokens, position = [], 0
    expression = expression.rstrip()
    while position < len(expression):
        match = _TOKEN.match(expression, position)
        if match is None:
            raise _Unparseable(f"unexpected character at {position}")
        tokens.append(match[1] or _OPERATORS.get(match[2], match[2]))
        position = match.end()
    return tokens


class _Parser:
    """Evaluates a token list by the grammar above."""

    def __init__(self, tokens: list[str]):
        self.tokens, self.position = tokens, 0

    def peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise _Unparseable("the expression ends too early")
        self.position += 1
        return token

    def expression(self, depth: int) -> Fraction:
        value = self.term(depth)
        while self.peek() in ("+", "-"):
            value = value + self.term(depth) if self.take() == "+" else value - self.term(depth)
        return value

    def term(self, depth: int) -> Fraction:
        value = self.factor(depth)
        while self.peek() in ("*", "/"):
            operator, right = self.take(), self.factor(depth)
            value = value * right if operator == "*" else value / right  # ZeroDivisionError for x / 0
        return value

    def factor(self, depth: int) -> Fraction:
        token = self.take()
        if token == "(":
            if depth >= MAX_DEPTH:
                raise _Unparseable(f"parentheses nested deeper than {MAX_DEPTH}")
            value = self.expression(depth + 1)
            if self.take() != ")":
                raise _Unparseable("unbalanced parentheses")
            return value
        if not token.isdigit():
            raise _Unparseable(f"expected a number, got {token!r}")
        return Fraction(int(token))


def evaluate(tokens: list[str]) -> Fraction:
    """The exact value of the expression `tokens`.

    _Unparseable outside the grammar; ZeroDivisionError when it divides by zero."""
    parser = _Parser(tokens)
    value = parser.expression(depth=0)
    if parser.peek() is not None:
        raise _Unparseable(f"unexpected {parser.peek()!r} after a complete expression")
    return value


def _check_task(numbers: Sequence[int], target: int) -> None:
    if isinstance(numbers, (str, bytes)) or not all(isinstance(n, int) and not isinstance(n, bool) for n in numbers):
        raise ValueError(f"numbers must be a sequence of integers, got {numbers!r}")
    if not isinstance(target, int) or isinstance(target, bool):
        raise ValueError(f"target must be an integer, got {target!r}")


def countdown_score(expression: str, numbers: Sequence[int], target: int) -> Verdict:
    """Verdict on `expression` for the task (numbers, target); see the module docstring.

    Never raises on the expression; ValueError if `numbers` or `target` are not integers."""
    _check_task(numbers, target)
    if not isinstance(expression, str):
        return rejected("unparseable")
    try:
        tokens = tokenize(expression.split("=", 1)[0])
        literals = [int(token) for token in tokens if token.isdigit()]
    except (_Unparseable, ValueError):  # ValueError: a literal longer than int() reads
        return rejected("unparseable")
    if Counter(literals) - Counter(numbers):
        return rejected("number not available")
    try:
        value = evaluate(tokens)
    except _Unparseable:
        return rejected("unparseable")
    except ZeroDivisionError:
        return rejected("division by zero")
    return CORRECT if value == target else rejected("wrong value")
