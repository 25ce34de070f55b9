"""research/decoding/structured/regex.py and dfa.py: UTF-8 ranges, minimality, intersection."""

import itertools

import numpy as np

from research.decoding.structured.dfa import compile_regex, intersect, shortest_accepted
from research.decoding.structured.regex import Repeat, alt, byte_set, code_point_ranges, literal, seq, star


def test_code_point_ranges_accept_exactly_the_utf8_of_their_code_points():
    ranges = [(0x41, 0x5A), (0x7F0, 0x812), (0xD700, 0xE010), (0xFFF0, 0x10010), (0x10FFF0, 0x10FFFF)]
    dfa = compile_regex(code_point_ranges(ranges))
    probes = set(range(0, 0x1100)) | set(range(0xD6F0, 0xE020)) | set(range(0xFFE0, 0x10020)) | \
        set(range(0x10FFE0, 0x110000))
    for code_point in sorted(probes):
        if 0xD800 <= code_point <= 0xDFFF:
            continue
        inside = any(low <= code_point <= high for low, high in ranges)
        assert dfa.accepts(chr(code_point).encode()) == inside, hex(code_point)
    assert not dfa.accepts(b"\xed\xa0\x80")  # an encoded surrogate is not UTF-8


def test_the_dfa_is_minimal_and_bounded_repeats_are_exact():
    dfa = compile_regex(seq(literal("a"), Repeat(byte_set("xy"), 2, 4)))
    assert dfa.num_states == 6  # start, after a, after 1..4 repeats
    for length in range(7):
        for word in itertools.product("xy", repeat=length):
            assert dfa.accepts(("a" + "".join(word)).encode()) == (2 <= length <= 4)
    # (a|b)* and (a*b*)* are one language: the same minimal table
    first = compile_regex(star(alt(literal("a"), literal("b"))))
    second = compile_regex(star(seq(star(literal("a")), star(literal("b")))))
    np.testing.assert_array_equal(first.transitions, second.transitions)


def test_shortest_accepted_and_intersection():
    dfa = compile_regex(alt(literal("hello"), seq(literal("hi"), star(literal("!")))))
    assert shortest_accepted(dfa) == b"hi"
    assert intersect(dfa, compile_regex(literal("hi!!")))
    assert not intersect(dfa, compile_regex(literal("hey")))
