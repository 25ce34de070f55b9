"""JSON numbers as regular languages, with integer bounds where they are expressible.

General forms (RFC 8259): integer  -?(0|[1-9][0-9]*),
number  -?(0|[1-9][0-9]*)(\\.[0-9]+)?([eE][+-]?[0-9]+)?.

Bounds lo ≤ x ≤ hi (either may be absent) split by sign: a sign s ∈ {+, −} contributes the
magnitudes m = |x| in an interval [a, b] of integers (b possibly ∞). Integer magnitudes in
[a, b] are a finite union of digit-wise ranges (`digit_range`). A decimal I.F with integer part
I and fraction digits F lies in [a, b] iff a ≤ I < b, or I = b and F is all zeros (a ≤ I.F
because a is an integer). Bounded numbers are written without an exponent.
"""

import math

from research.decoding.structured.regex import DIGIT, NONZERO_DIGIT, Repeat, alt, byte_range, literal, optional, plus, seq, star

UNSIGNED = alt(literal("0"), seq(NONZERO_DIGIT, star(DIGIT)))
FRACTION = seq(literal("."), plus(DIGIT))
EXPONENT = seq(alt(literal("e"), literal("E")), optional(alt(literal("+"), literal("-"))), plus(DIGIT))
GENERAL_INTEGER = seq(optional(literal("-")), UNSIGNED)
GENERAL_NUMBER = seq(GENERAL_INTEGER, optional(FRACTION), optional(EXPONENT))


def digit_range(low: str, high: str):
    """Decimal strings of len(low) digits between `low` and `high` (equal lengths), digit by digit:
    the shared first digit then the rest; or low's first digit with a suffix ≥ low's, the digits
    strictly between with anything, and high's first digit with a suffix ≤ high's."""
    if len(low) == 1:
        return byte_range(ord(low), ord(high))
    rest = len(low) - 1
    if low[0] == high[0]:
        return seq(literal(low[0]), digit_range(low[1:], high[1:]))
    options = [seq(literal(low[0]), digit_range(low[1:], "9" * rest))]
    if int(low[0]) + 1 <= int(high[0]) - 1:
        options.append(seq(byte_range(ord(low[0]) + 1, ord(high[0]) - 1), Repeat(DIGIT, rest, rest)))
    options.append(seq(literal(high[0]), digit_range("0" * rest, high[1:])))
    return alt(*options)


def magnitude_range(low: int, high: int | None):
    """Unsigned integers in [low, high] (high None: no upper bound), without leading zeros."""
    options = []
    digits = len(str(low))
    top = high if high is not None else 10 ** digits - 1
    for length in range(digits, len(str(top)) + 1):
        first, last = max(low, 10 ** (length - 1) if length > 1 else 0), min(top, 10 ** length - 1)
        if first <= last:
            options.append(digit_range(str(first), str(last)))
    if high is None:
        options.append(seq(NONZERO_DIGIT, Repeat(DIGIT, digits, None)))
    return alt(*options)


def _signed_magnitudes(low: int | None, high: int | None):
    """(sign text, a, b) for the signs with values in [low, high]: magnitudes in [a, b], b None = ∞."""
    parts = []
    if low is None or low < 0:
        parts.append(("-", 0 if high is None else max(0, -high), None if low is None else -low))
    if high is None or high >= 0:
        parts.append(("", 0 if low is None else max(0, low), high))
    return [(sign, a, b) for sign, a, b in parts if b is None or a <= b]


def integer_language(low: int | None, high: int | None):
    """Integers in [low, high] (None: unbounded on that side), no "-0"."""
    if low is None and high is None:
        return GENERAL_INTEGER
    options = []
    for sign, a, b in _signed_magnitudes(low, high):
        a = max(a, 1) if sign else a
        if b is None or a <= b:
            options.append(seq(literal(sign), magnitude_range(a, b)))
    return alt(*options)


def number_language(low: int | None, high: int | None):
    """Numbers in [low, high] with integer bounds (None: unbounded on that side)."""
    if low is None and high is None:
        return GENERAL_NUMBER
    options = []
    for sign, a, b in _signed_magnitudes(low, high):
        forms = [magnitude_range(a, b)]
        if b is None:
            forms.append(seq(magnitude_range(a, None), FRACTION))
        else:
            if a <= b - 1:
                forms.append(seq(magnitude_range(a, b - 1), FRACTION))
            forms.append(seq(literal(str(b) + "."), plus(literal("0"))))
        options.append(seq(literal(sign), alt(*forms)))
    return alt(*options)


def integer_bounds(minimum, maximum, exclusive_minimum, exclusive_maximum) -> tuple[int | None, int | None]:
    """The tightest integer bounds [low, high] of an integer schema's keywords (None where absent)."""
    lows = [math.ceil(minimum) if minimum is not None else None,
            math.floor(exclusive_minimum) + 1 if exclusive_minimum is not None else None]
    highs = [math.floor(maximum) if maximum is not None else None,
             math.ceil(exclusive_maximum) - 1 if exclusive_maximum is not None else None]
    lows, highs = [v for v in lows if v is not None], [v for v in highs if v is not None]
    return (max(lows) if lows else None), (min(highs) if highs else None)
