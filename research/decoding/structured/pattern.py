"""The `pattern` keyword: a regular expression over the decoded string, turned into the language
of its JSON-encoded text (research/decoding/structured/regex.py nodes).

JSON Schema patterns are searched, not matched (Python's `re.search`, as `jsonschema` runs
them): a pattern without a leading ^ may start anywhere and one without a trailing $ may end
anywhere, so the missing side becomes any string content.

Accepted syntax: literals, `.`, classes `[...]` / `[^...]` with ranges, `\\d \\w \\s` and their
negations, escapes (`\\n \\t \\r \\f \\v \\xHH \\uHHHH`, escaped punctuation), groups `(...)`,
`(?:...)`, `(?P<name>...)`, alternation, quantifiers `* + ? {n} {n,} {n,m}` (lazy forms too:
laziness does not change the language), ^ only first and $ only last. Anything else
(lookaround, backreferences, \\b, inline flags, anchors elsewhere) is not regular or not
supported and raises ValueError naming it.

Characters become their JSON spelling: `"` as \\", `\\` as \\\\, control characters as \\u00XX,
the rest as UTF-8. The sets that Python's re defines beyond ASCII (`.`, negated classes,
\\D \\W \\S) are generated from ASCII only (`.` without the newline), and \\d \\w \\s from
their ASCII members: a sub-language, so every generated string still matches.
"""

from research.decoding.structured.regex import Alt, Repeat, alt, code_point_ranges, literal, seq

ASCII = [(0x00, 0x7F)]
DIGITS = [(0x30, 0x39)]
WORD = [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)]
SPACE = [(0x09, 0x0D), (0x20, 0x20)]
SHORTHANDS = {"d": DIGITS, "w": WORD, "s": SPACE}
SIMPLE_ESCAPES = {"n": 0x0A, "t": 0x09, "r": 0x0D, "f": 0x0C, "v": 0x0B, "a": 0x07}
UNSUPPORTED_ESCAPES = {"b": "word boundaries (\\b)", "B": "\\B", "A": "\\A", "Z": "\\Z", "z": "\\z", "G": "\\G",
                       "p": "Unicode properties (\\p)", "P": "Unicode properties (\\P)"}


def normalised(ranges) -> list[tuple[int, int]]:
    """Sorted, merged, inclusive (low, high) code-point ranges."""
    merged = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(high, merged[-1][1]))
        else:
            merged.append((low, high))
    return merged


def complement(ranges, universe=ASCII) -> list[tuple[int, int]]:
    """The code points of `universe` outside `ranges`."""
    result = []
    for low, high in universe:
        cursor = low
        for a, b in normalised(ranges):
            if b < cursor or a > high:
                continue
            if a > cursor:
                result.append((cursor, a - 1))
            cursor = max(cursor, b + 1)
        if cursor <= high:
            result.append((cursor, high))
    return result


def json_spelling(ranges) -> Alt:
    """The JSON-encoded text of one character from `ranges`."""
    options, plain = [], []
    for low, high in normalised(ranges):
        for code_point in range(low, min(high, 0x1F) + 1):
            options.append(literal(f"\\u{code_point:04x}"))
        for special, spelling in ((0x22, '\\"'), (0x5C, "\\\\")):
            if low <= special <= high:
                options.append(literal(spelling))
        plain += complement([(0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C)], [(low, high)])
    return alt(*options, code_point_ranges(plain))


class PatternError(ValueError):
    """A `pattern` that is not regular or uses syntax this module does not support."""


class _Parser:
    """Recursive descent over the pattern text; `position` indexes the next character."""

    def __init__(self, text: str):
        self.text, self.position = text, 0

    def fail(self, what: str):
        raise PatternError(f"{what} at offset {self.position} of pattern {self.text!r}")

    def peek(self) -> str | None:
        return self.text[self.position] if self.position < len(self.text) else None

    def take(self) -> str:
        char = self.peek()
        if char is None:
            self.fail("unexpected end")
        self.position += 1
        return char

    def alternation(self) -> list:
        """The alternatives of a `|`-separated list (one if there is no `|`)."""
        options = [self.sequence()]
        while self.peek() == "|":
            self.position += 1
            options.append(self.sequence())
        return options

    def sequence(self):
        items = []
        while self.peek() not in (None, "|", ")"):
            items.append(self.quantified(self.atom()))
        return seq(*items)

    def quantified(self, node):
        while self.peek() in ("*", "+", "?", "{"):
            bounds = self.quantifier()
            if bounds is None:
                break
            node = Repeat(node, *bounds)
            if self.peek() == "?":
                self.position += 1
            elif self.peek() == "+":
                self.fail("possessive quantifier")
        return node

    def quantifier(self):
        """(low, high) of the quantifier here, or None for a "{" that is a literal."""
        char = self.take()
        if char != "{":
            return {"*": (0, None), "+": (1, None), "?": (0, 1)}[char]
        end = self.text.find("}", self.position)
        body = self.text[self.position:end] if end >= 0 else ""
        low, comma, high = body.partition(",")
        if not low.isdigit() or (high and not high.isdigit()):
            self.position -= 1
            return None
        self.position = end + 1
        high_value = (int(high) if high else None) if comma else int(low)
        if high_value is not None and high_value < int(low):
            self.fail(f"quantifier {{{body}}} with max below min")
        return int(low), high_value

    def atom(self):
        char = self.take()
        if char == "(":
            return self.group()
        if char == "[":
            return json_spelling(self.char_class())
        if char == ".":
            return json_spelling(complement([(0x0A, 0x0A)]))
        if char == "\\":
            return json_spelling(self.escape(in_class=False))
        if char in "^$":
            self.position -= 1
            self.fail(f"anchor {char!r} not at the pattern's start or end")
        if char in "*+?{":
            self.position -= 1
            if char != "{" or self.quantifier() is not None:
                self.fail("nothing to repeat")
            self.position += 1
        if char == ")":
            self.fail("unbalanced ')'")
        return json_spelling([(ord(char), ord(char))])

    def group(self):
        if self.text.startswith("?:", self.position):
            self.position += 2
        elif self.text.startswith("?P<", self.position) or self.text.startswith("?<", self.position) and \
                self.text[self.position + 2:self.position + 3] not in ("=", "!"):
            self.position = self.text.index(">", self.position) + 1
        elif self.peek() == "?":
            self.fail("lookaround, inline flags or other (?...) groups (not regular or not supported)")
        node = alt(*self.alternation())
        if self.peek() != ")":
            self.fail("missing ')'")
        self.position += 1
        return node

    def escape(self, in_class: bool) -> list[tuple[int, int]]:
        """The code points of the escape after a backslash."""
        char = self.take()
        if char in SHORTHANDS:
            return SHORTHANDS[char]
        if char.lower() in SHORTHANDS:
            return complement(SHORTHANDS[char.lower()])
        if char in SIMPLE_ESCAPES:
            return [(SIMPLE_ESCAPES[char],) * 2]
        if char in "xu":
            width = 2 if char == "x" else 4
            digits = self.text[self.position:self.position + width]
            if len(digits) != width or any(c not in "0123456789abcdefABCDEF" for c in digits):
                self.fail(f"malformed \\{char} escape")
            self.position += width
            return [(int(digits, 16),) * 2]
        if char.isdigit():
            self.fail("backreferences or octal escapes (not regular)")
        if char in UNSUPPORTED_ESCAPES and not (in_class and char == "b"):
            self.fail(f"{UNSUPPORTED_ESCAPES[char]} (not supported)")
        if char.isalnum():
            self.fail(f"unknown escape \\{char}")
        return [(ord(char),) * 2]

    def char_class(self) -> list[tuple[int, int]]:
        negated = self.peek() == "^"
        self.position += negated
        ranges, first = [], True
        while self.peek() != "]" or first:
            first = False
            low = self.class_member()
            if self.peek() == "-" and self.text[self.position + 1:self.position + 2] not in ("]", ""):
                self.position += 1
                high = self.class_member()
                if len(low) != 1 or len(high) != 1 or low[0][0] != low[0][1] or high[0][0] != high[0][1]:
                    self.fail("a range between classes")
                if high[0][0] < low[0][0]:
                    self.fail("a reversed range")
                ranges.append((low[0][0], high[0][0]))
            else:
                ranges += low
        self.position += 1
        return complement(ranges) if negated else normalised(ranges)

    def class_member(self) -> list[tuple[int, int]]:
        char = self.take()
        if char == "\\":
            return self.escape(in_class=True)
        if char == "[" and self.peek() in (":", "=", "."):
            self.fail("POSIX classes")
        return [(ord(char), ord(char))]


def pattern_language(pattern: str, any_character):
    """The language of JSON-encoded strings (without quotes) whose decoded text `re.search`
    finds `pattern` in; `any_character` is the language of one JSON-encoded character, used
    for the unanchored sides. PatternError (a ValueError) naming the unsupported construct."""
    body = pattern
    anchored_start = body.startswith("^")
    body = body[1:] if anchored_start else body
    trailing_backslashes = len(body[:-1]) - len(body[:-1].rstrip("\\"))
    anchored_end = body.endswith("$") and trailing_backslashes % 2 == 0
    body = body[:-1] if anchored_end else body
    parser = _Parser(body)
    options = parser.alternation()
    if parser.peek() is not None:
        parser.fail("unbalanced ')'")
    if len(options) > 1 and (anchored_start or anchored_end):
        raise PatternError(f"an anchor next to a top-level '|' in pattern {pattern!r}: it binds to one "
                           "alternative only; group the alternatives, e.g. ^(a|b)$")
    node = alt(*options)
    anything = Repeat(any_character, 0, None)
    return seq(*([] if anchored_start else [anything]), node, *([] if anchored_end else [anything]))
