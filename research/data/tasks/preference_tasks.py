"""Helpfulness prompts for preference data: each with graded candidate responses and a judge.

Each kind has `make_<kind>(rng) -> (prompt, spec, candidates)` and
`judge_<kind>(spec, response) -> score in [0, 1]`. `spec` is the JSON-serialisable
ground truth the judge needs; `candidates` are (intended grade, response) pairs spanning
correct, partially correct, wrong format and wrong. The judge, not the intended grade,
decides every preference (research/data/tasks/preferences.py), so a candidate that turns
out better than intended is simply ranked higher.

Judges sum weighted checks:

- arithmetic ("What is a op b op c? Reply with the number only."): the last integer
  written is the value (0.7) + the reply is that number alone (0.3).
- string ("Reverse / sort the letters of / remove the vowels of the word w [and write
  it in uppercase]. Reply with the result only."): the result appears, case ignored
  (0.5) + it appears with the right case (0.2) + the reply is the result alone, case
  ignored (0.3).
- format ("Write one sentence about a topic" + a constraint: all uppercase / exactly n
  words / a JSON object with key k holding the sentence): the constraint holds (0.6) +
  the topic's keyword appears (0.4).
"""

import json
import random
import re

WORDS = ("planet", "garden", "silver", "candle", "rocket", "window", "forest", "marble", "bridge", "pencil")
TOPICS = {"the sea": "waves", "winter": "snow", "a city": "streets", "music": "melody", "the night sky": "stars"}
FILLER = ("quiet", "bright", "slowly", "always", "under", "golden", "morning", "people", "gentle", "across",
          "small", "old", "green", "far", "home")
JSON_KEYS = ("text", "sentence", "answer")
_INTEGERS = re.compile(r"-?\d+")


def make_arithmetic(rng: random.Random):
    """`a op b op c` with small integers; candidates of every grade."""
    a, b, c = rng.randint(2, 30), rng.randint(2, 30), rng.randint(2, 9)
    first, second = rng.choice("+-*"), rng.choice("+-*")
    expression = f"{a} {first} {b} {second} {c}"
    value = _value_of(a, first, b, second, c)
    off = value + rng.choice((-2, -1, 1, 2, 10))
    prompt = f"What is {expression}? Reply with the number only."
    candidates = [("correct", str(value)), ("wrong format", f"The answer is {value}."),
                  ("partially correct", f"{expression} = {off}... no, {value}."),
                  ("wrong", str(off)), ("wrong", f"I think it is {off}.")]
    return prompt, {"answer": value}, candidates


def _value_of(a: int, first: str, b: int, second: str, c: int) -> int:
    """a first b second c with * binding tighter than + and -."""
    apply = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}
    if second == "*" and first != "*":
        return apply[first](a, b * c)
    return apply[second](apply[first](a, b), c)


def judge_arithmetic(spec, response: str) -> float:
    integers = _INTEGERS.findall(response)
    try:
        correct = bool(integers) and int(integers[-1]) == spec["answer"]
    except ValueError:  # more digits than int() reads
        correct = False
    alone = re.fullmatch(r"\s*-?\d+\s*", response) is not None
    return 0.7 * correct + 0.3 * (correct and alone)


STRING_OPERATIONS = {
    "reverse": ("Reverse the word", lambda word: word[::-1]),
    "sort": ("Sort alphabetically the letters of the word", lambda word: "".join(sorted(word))),
    "no_vowels": ("Remove the vowels of the word", lambda word: "".join(c for c in word if c not in "aeiou")),
}


def make_string(rng: random.Random):
    """A string manipulation of a word, sometimes in uppercase; candidates of every grade."""
    word = rng.choice(WORDS)
    operation = rng.choice(sorted(STRING_OPERATIONS))
    instruction, apply = STRING_OPERATIONS[operation]
    uppercase = rng.random() < 0.5
    expected = apply(word).upper() if uppercase else apply(word)
    prompt = (f"{instruction} '{word}'{' and write it in uppercase' if uppercase else ''}. "
              "Reply with the result only.")
    candidates = [("correct", expected), ("partially correct", expected.swapcase()),
                  ("wrong format", f"Sure! The result is: {expected}"), ("wrong", word),
                  ("wrong", f"Sure! The result is: {word[::-1] if operation != 'reverse' else word}")]
    return prompt, {"expected": expected}, candidates


def judge_string(spec, response: str) -> float:
    expected = spec["expected"]
    return (0.5 * (expected.lower() in response.lower()) + 0.2 * (expected in response)
            + 0.3 * (response.strip().lower() == expected.lower()))


def _sentence(rng: random.Random, keyword: str | None, length: int) -> str:
    """`length` words: filler, with `keyword` among them when given."""
    words = [rng.choice(FILLER) for _ in range(length)]
    if keyword is not None:
        words[rng.randrange(length)] = keyword
    return " ".join(words).capitalize()


def make_format(rng: random.Random):
    """A sentence about a topic under a format constraint; candidates crossing
    (constraint kept or broken) with (topic mentioned or not)."""
    topic = rng.choice(sorted(TOPICS))
    keyword = TOPICS[topic]
    constraint = rng.choice(("uppercase", "words", "json"))
    length = rng.randint(4, 9)
    key = rng.choice(JSON_KEYS)
    on_topic, off_topic = _sentence(rng, keyword, length), _sentence(rng, None, length)
    if constraint == "uppercase":
        instruction, spec = "in uppercase letters only", {}
        comply, break_ = str.upper, str.lower
    elif constraint == "words":
        instruction, spec = f"in exactly {length} words", {"words": length}
        comply, break_ = (lambda text: text), (lambda text: f"{text} {rng.choice(FILLER)} {rng.choice(FILLER)}")
    else:
        instruction, spec = f'as a JSON object with the key "{key}" holding the sentence', {"key": key}
        comply, break_ = (lambda text: json.dumps({key: text})), (lambda text: text)
    prompt = f"Write one sentence about {topic}, {instruction}."
    candidates = [("correct", comply(on_topic)), ("partially correct", comply(off_topic)),
                  ("wrong format", break_(on_topic)), ("wrong", break_(off_topic))]
    return prompt, {"constraint": constraint, "keyword": keyword, **spec}, candidates


def _constraint_holds(spec, response: str) -> bool:
    if spec["constraint"] == "uppercase":
        return any(c.isalpha() for c in response) and response == response.upper()
    if spec["constraint"] == "words":
        return len(response.split()) == spec["words"]
    try:
        value = json.loads(response)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
        return False
    return isinstance(value, dict) and isinstance(value.get(spec["key"]), str)


def judge_format(spec, response: str) -> float:
    return 0.6 * _constraint_holds(spec, response) + 0.4 * (spec["keyword"] in response.lower())
