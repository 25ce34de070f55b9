"""Knights and knaves: does an answer name every person's kind as the unique solution does?

The puzzle's solution comes from the data layer's brute-force solver
(research/data/tasks/knights_knaves.py `unique_solution`). The answer is read in plain
English, word by word (case ignored):

- names of the puzzle's people collect into a group; "knight(s)" or "knave(s)" gives
  the group that kind and closes it: "Alice is a knight, Bob and Carol are knaves";
- a negation ("not", "isn't", "never", "neither", "nor") since the group opened flips
  the kind: "Alice is not a knave";
- a kind word with no open group applies to the names that follow it, until the next
  kind word: "Knights: Alice, Bob. Knaves: Carol".

Reasons: "correct", "unparseable" (no person named with a kind), "contradictory" (a
person given both kinds), "incomplete" (someone left without a kind), "wrong".
"""

import re
from collections.abc import Sequence

from research.data.tasks.knights_knaves import Statement, unique_solution
from research.rl.verifiers.verdict import CORRECT, Verdict, rejected

KIND_WORDS = {"knight": True, "knights": True, "knave": False, "knaves": False}
NEGATIONS = frozenset({"not", "isn't", "aren't", "never", "neither", "nor"})
_WORDS = re.compile(r"[a-z]+(?:'[a-z]+)?")


class _Contradiction(Exception):
    """A person was given both kinds."""


def read_assignment(answer: str, people: Sequence[str]) -> dict[str, bool]:
    """Person -> True for a knight, for each of `people` the answer gives a kind
    (see the module docstring); _Contradiction if it gives someone both."""
    names = {person.lower(): person for person in people}
    assignment: dict[str, bool] = {}

    def assign(person: str, is_knight: bool) -> None:
        if assignment.setdefault(person, is_knight) != is_knight:
            raise _Contradiction(person)

    group, negated, leading_kind = [], False, None
    for word in _WORDS.findall(answer.lower()):
        if word in names:
            if leading_kind is not None and not group:
                assign(names[word], leading_kind)
            else:
                group.append(names[word])
        elif word in NEGATIONS:
            negated = True
        elif word in KIND_WORDS:
            is_knight = KIND_WORDS[word] != negated
            for person in group:
                assign(person, is_knight)
            leading_kind = None if group else is_knight
            group, negated = [], False
    return assignment


def knights_knaves_score(answer: str, people: Sequence[str], statements: Sequence[tuple[str, Statement]]) -> Verdict:
    """Verdict on `answer` for the puzzle (people, statements: [speaker, statement]
    pairs as in research/data/tasks/knights_knaves.py, e.g. a problem's `inputs`).

    Never raises on the answer; ValueError if the puzzle has no unique solution."""
    solution = unique_solution(people, statements)
    if not isinstance(answer, str):
        return rejected("unparseable")
    try:
        assignment = read_assignment(answer, people)
    except _Contradiction:
        return rejected("contradictory")
    if not assignment:
        return rejected("unparseable")
    if len(assignment) < len(solution):
        return rejected("incomplete")
    return CORRECT if assignment == solution else rejected("wrong")
