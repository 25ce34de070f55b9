r"""Math answers compared by value, not by spelling.

An answer is read in three stages, none of which evaluates anything:

1. Locate: the content of the last `\boxed{...}` (nested braces matched) if there is one,
   else the whole text. `extract_final_answer` goes further for a long response: boxed,
   else what follows the last "answer is" / "answer:", else the last number written.
2. Normalise: drop `$`, `\(`, `\)`, `\[`, `\]`, `\left`, `\right`, `\displaystyle`, the
   LaTeX spaces `\,` `\;` `\:` `\!` `~`, `\$` (currency) and degree marks; unwrap
   `\text{..}`-like commands; `\dfrac`/`\tfrac` become `\frac`; a leading "x =" goes.
3. Parse, exactly (`fractions.Fraction`): a signed integer (thousands separators as in
   "1,000" allowed), a decimal ("0.75", ".5"), a fraction "a/b" or `\frac{a}{b}`
   (`\frac34` too), optionally followed by "%" and unit words or a full stop ("12
   apples", "12 cm", "12."); or a tuple of such numbers in matching brackets, "(1, 2)".

Two answers are equal when both parse and their values (or tuples of values, with the
same brackets) are equal; "0.75" == "3/4" == `\frac{3}{4}`. A reference that is not a
number is compared as normalised text (case and spaces ignored).

Percentages: "%" is read as a unit, so "50%" equals "50" and not "0.5": the task says
whether it asks for a percentage, and its reference is written in that unit.
Mixed numbers ("1 1/2"), scientific notation and symbolic expressions are not parsed;
such answers equal only what normalises to the same text.
"""

import re
from fractions import Fraction

from research.rl.verifiers.verdict import CORRECT, Verdict, rejected

_SIGNED = r"[-+]?\s*"
_UNSIGNED = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+"
_NUMBER = re.compile(
    rf"(?P<sign>{_SIGNED})(?:"
    rf"\\frac\s*\{{\s*(?P<tex_num>{_SIGNED}(?:{_UNSIGNED}))\s*\}}\s*\{{\s*(?P<tex_den>{_SIGNED}(?:{_UNSIGNED}))\s*\}}"
    rf"|\\frac\s*(?P<short_num>\d)\s*(?P<short_den>\d)"
    rf"|(?P<num>{_UNSIGNED})(?:\s*/\s*(?P<den>{_UNSIGNED}))?)"
)
_UNIT_WORDS = re.compile(r"[A-Za-z][A-Za-z\s.]*")
_WRAPPERS = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_DROPPED = re.compile(r"\\left|\\right|\\displaystyle|\\[,;:! ]|~|\\\(|\\\)|\\\[|\\\]|\$|\^\s*\{?\\circ\}?|°")
_ASSIGNMENT = re.compile(r"^[A-Za-z]\w*\s*=\s*")
_ANSWER_PHRASE = re.compile(r"answer\s*(?:is|:|=)\s*:?\s*([^\n]+)", re.IGNORECASE)
_ANY_NUMBER = re.compile(rf"\\[dt]?frac\s*\{{[^{{}}]*\}}\s*\{{[^{{}}]*\}}|-?(?:{_UNSIGNED})(?:\s*/\s*\d+)?")
_BRACKETS = {"(": ")", "[": "]"}
_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])\s*")
_WORD = re.compile(r"[^\s$]*")


def _box_content(text: str, start: int) -> tuple[str | None, int]:
    """The argument of a box command whose name ends at `start`, and where it ends: a
    brace group (braces matched; None if it never closes) or else one word."""
    if text.startswith("{", start):
        depth = 0
        for position in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[position], 0)
            if depth == 0:
                return text[start + 1:position], position + 1
        return None, len(text)
    word = _WORD.match(text, start)[0].rstrip(".")
    return word or None, start + len(word)


def last_boxed(text: str) -> str | None:
    r"""The content of the last top-level `\boxed{...}` (or `\fbox{...}`) in `text`, braces
    matched, so a box inside a box belongs to the outer one; `\boxed 5` gives "5".
    None if there is none or the last one does not close."""
    content, position = None, 0
    while (match := _BOX.search(text, position)) is not None:
        content, position = _box_content(text, match.end())
    return content


def extract_final_answer(text: str) -> str | None:
    """The final answer written in a response: the last boxed expression, else the rest
    of the line after the last "answer is" / "answer:", else the last number; None if
    there is none (or `text` is not a string)."""
    if not isinstance(text, str):
        return None
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    phrases = _ANSWER_PHRASE.findall(text)
    if phrases and phrases[-1].strip():
        return phrases[-1].strip()
    numbers = _ANY_NUMBER.findall(text)
    return numbers[-1].strip() if numbers else None


def normalize(text: str) -> str:
    """`text` without LaTeX delimiters, spacing and wrappers (stage 2 of the module docstring)."""
    text = text.replace("\u2212", "-").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = text.replace("\\%", "%").replace("\\$", "")
    text = _WRAPPERS.sub(r" \1", _DROPPED.sub("", text))
    return _ASSIGNMENT.sub("", text.strip()).strip()


def _to_fraction(text: str) -> Fraction:
    return Fraction(re.sub(r"[\s,]", "", text))


def _is_unit(text: str) -> bool:
    """Whether `text` (stripped) is "%", unit words, a full stop, or "%" then words."""
    words = text[1:].lstrip() if text.startswith("%") else text
    return not words or words == "." or _UNIT_WORDS.fullmatch(words) is not None


def parse_number(text: str, *, allow_units: bool = True) -> Fraction | None:
    """The exact value of a normalised number (stage 3), or None if `text` is not one."""
    match = _NUMBER.match(text)
    if match is None:
        return None
    rest = text[match.end():].strip()
    if rest and not (allow_units and _is_unit(rest)):
        return None
    groups = match.groupdict()
    try:
        if groups["tex_num"] is not None:
            value = _to_fraction(groups["tex_num"]) / _to_fraction(groups["tex_den"])
        elif groups["short_num"] is not None:
            value = Fraction(int(groups["short_num"]), int(groups["short_den"]))
        else:
            value = _to_fraction(groups["num"])
            if groups["den"] is not None:
                value /= _to_fraction(groups["den"])
    except (ValueError, ZeroDivisionError):  # 0 denominators, more digits than int() takes
        return None
    return -value if match["sign"].strip() == "-" else value


def parse_math_answer(text: str) -> Fraction | tuple | None:
    """A number, or (opening bracket, values..., closing bracket) for a tuple, read from
    the last boxed expression of `text` (or all of it); None if neither."""
    if not isinstance(text, str):
        return None
    boxed = last_boxed(text)
    text = normalize(text if boxed is None else boxed).rstrip(".").strip()
    if len(text) >= 2 and _BRACKETS.get(text[0]) == text[-1]:
        values = tuple(parse_number(part.strip(), allow_units=False) for part in text[1:-1].split(","))
        return None if None in values else (text[0], *values, text[-1])
    return parse_number(text)


def _plain_text(text: str) -> str:
    return re.sub(r"\s+", "", normalize(text).rstrip(".")).lower()


def math_answers_equal(predicted: str, reference: str) -> bool:
    """Whether `predicted` and `reference` are the same answer, read as the module
    docstring says. False (never an exception) for model text that cannot be read.

    ValueError if `reference` is not a string."""
    if not isinstance(reference, str):
        raise ValueError(f"reference must be a string, got {type(reference).__name__}")
    if not isinstance(predicted, str):
        return False
    expected = parse_math_answer(reference)
    if expected is None:
        boxed = last_boxed(predicted)
        return bool(_plain_text(reference)) and _plain_text(predicted if boxed is None else boxed) == \
            _plain_text(reference)
    return parse_math_answer(predicted) == expected


def math_score(answer: str, reference: str) -> Verdict:
    """Verdict on `answer` against `reference`: "correct", "unparseable" (no final answer
    can be read from it: `extract_final_answer`), or "wrong"."""
    final = extract_final_answer(answer)
    if final is None:
        return rejected("unparseable")
    return CORRECT if math_answers_equal(final, reference) else rejected("wrong")
