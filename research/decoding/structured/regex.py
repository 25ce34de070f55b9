"""Regular expressions over bytes, as a small algebra: the language of a JSON Schema is built
from these nodes (research/decoding/structured/schema_language.py) and compiled to a DFA
(dfa.py).

    ByteSet(mask)         one byte b with bit b of `mask` set (an int below 2^256)
    Seq(parts)            the concatenation L1·L2·…; Seq(()) is {ε}
    Alt(options)          the union L1 ∪ L2 ∪ …; Alt(()) is ∅
    Repeat(node, lo, hi)  L^lo ∪ L^(lo+1) ∪ … ∪ L^hi; hi None: L^lo·L*

Text is spelled as its UTF-8 bytes; `code_point_ranges` turns sets of Unicode code points
into byte-level alternatives that accept exactly the UTF-8 encodings of those code points.
"""

import dataclasses

MAX_CODE_POINT = 0x10FFFF
SURROGATES = (0xD800, 0xDFFF)


@dataclasses.dataclass(frozen=True)
class ByteSet:
    mask: int


@dataclasses.dataclass(frozen=True)
class Seq:
    parts: tuple


@dataclasses.dataclass(frozen=True)
class Alt:
    options: tuple


@dataclasses.dataclass(frozen=True)
class Repeat:
    node: object
    low: int
    high: int | None


EPSILON = Seq(())
NOTHING = Alt(())


def byte_range(low: int, high: int) -> ByteSet:
    """One byte in [low, high]."""
    return ByteSet(((1 << (high + 1)) - 1) ^ ((1 << low) - 1))


def byte_set(values) -> ByteSet:
    """One byte among `values` (ints or a bytes/str of ASCII characters)."""
    values = values.encode() if isinstance(values, str) else values
    mask = 0
    for value in values:
        mask |= 1 << value
    return ByteSet(mask)


def literal(text: str | bytes) -> Seq:
    """Exactly the UTF-8 bytes of `text`."""
    data = text.encode() if isinstance(text, str) else text
    return Seq(tuple(ByteSet(1 << b) for b in data))


def seq(*parts) -> Seq:
    return Seq(tuple(parts))


def alt(*options) -> Alt:
    return Alt(tuple(options))


def optional(node) -> Repeat:
    return Repeat(node, 0, 1)


def star(node) -> Repeat:
    return Repeat(node, 0, None)


def plus(node) -> Repeat:
    return Repeat(node, 1, None)


DIGIT = byte_range(ord("0"), ord("9"))
NONZERO_DIGIT = byte_range(ord("1"), ord("9"))
HEX_DIGIT = byte_set("0123456789abcdefABCDEF")
CONTINUATION = byte_range(0x80, 0xBF)


def _utf8_length(code_point: int) -> int:
    return 1 if code_point < 0x80 else 2 if code_point < 0x800 else 3 if code_point < 0x10000 else 4


def _utf8_same_length(low: int, high: int):
    """UTF-8 encodings of [low, high], code points of one encoded length n: the lead byte holds
    cp >> 6(n−1) (after its length prefix), the continuation bytes the rest, 6 bits each."""
    length = _utf8_length(low)
    if length == 1:
        return byte_range(low, high)
    prefix = (0, 0, 0xC0, 0xE0, 0xF0)[length]
    shift = 6 * (length - 1)
    tail = (1 << shift) - 1
    lead_low, lead_high = low >> shift, high >> shift
    if lead_low == lead_high:
        return seq(ByteSet(1 << (prefix | lead_low)), _continuations(low & tail, high & tail, length - 1))
    return _split_by_top(low, high, shift, tail, length - 1,
                         lambda top_low, top_high: byte_range(prefix | top_low, prefix | top_high),
                         _utf8_same_length)


def _split_by_top(low, high, shift, tail, count, top_range, part):
    """[low, high] whose top bits (above `shift`) differ: a partial first block, the whole blocks
    between (`top_range` then `count` free continuation bytes) and a partial last block."""
    top_low, top_high = low >> shift, high >> shift
    options = []
    if low & tail:
        options.append(part(low, low | tail))
        top_low += 1
    middle_high = top_high if (high & tail) == tail else top_high - 1
    if top_low <= middle_high:
        options.append(seq(top_range(top_low, middle_high), Repeat(CONTINUATION, count, count)))
    if middle_high < top_high:
        options.append(part(top_high << shift, high))
    return alt(*options)


def _continuations(low: int, high: int, count: int):
    """`count` continuation bytes (6 payload bits each) spelling the values [low, high]."""
    if count == 1:
        return byte_range(0x80 | low, 0x80 | high)
    shift = 6 * (count - 1)
    tail = (1 << shift) - 1
    if low >> shift == high >> shift:
        return seq(ByteSet(1 << (0x80 | low >> shift)), _continuations(low & tail, high & tail, count - 1))
    return _split_by_top(low, high, shift, tail, count - 1,
                         lambda top_low, top_high: byte_range(0x80 | top_low, 0x80 | top_high),
                         lambda part_low, part_high: _continuations(part_low, part_high, count))


def code_point_ranges(ranges) -> Alt:
    """The UTF-8 encodings of the code points in `ranges` ((low, high) pairs, inclusive);
    surrogates are never encoded (they are not valid UTF-8)."""
    options = []
    for low, high in ranges:
        for part_low, part_high in _minus_surrogates(low, high):
            for boundary in (0x7F, 0x7FF, 0xFFFF, MAX_CODE_POINT):
                start = max(part_low, _first_of_length(_utf8_length(boundary)))
                stop = min(part_high, boundary)
                if start <= stop:
                    options.append(_utf8_same_length(start, stop))
    return alt(*options)


def _first_of_length(length: int) -> int:
    return (0, 0x80, 0x800, 0x10000)[length - 1]


def _minus_surrogates(low: int, high: int):
    if high < SURROGATES[0] or low > SURROGATES[1]:
        return [(low, high)]
    return [(a, b) for a, b in ((low, SURROGATES[0] - 1), (SURROGATES[1] + 1, high)) if a <= b]
