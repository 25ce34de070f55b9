"""The record every procedural task suite produces: one problem with a verifiable answer.

A `Problem` is plain data (strings, an int, a JSON-serialisable `inputs` mapping), so it
round-trips through a tfds array_record dataset (research/data/tasks/builder.py) and a
verifier can check a model's answer from the record alone: the `answer` for math, the
`inputs` for countdown (`numbers`, `target`) and knights and knaves (`people`,
`statements`), the hidden `tests` for code.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

from research.data.reasoning import format_example


@dataclasses.dataclass(frozen=True)
class Problem:
    """One problem of a suite.

    id: unique within a suite, `"{suite}/{split}/{seed}/{index}"`.
    suite: the generating suite's name (research/data/tasks/suites.py `SUITES`).
    prompt: the user message stating the task.
    answer: the reference answer, as a model should write it after its reasoning.
    difficulty: the suite's difficulty level (steps, numbers, people, operations).
    reasoning: a worked solution for supervised fine-tuning ("" if none).
    tests: hidden unit tests, Python `assert` statements (code problems; "" otherwise).
    inputs: the structured task a verifier needs, JSON-serialisable.
    """

    id: str
    suite: str
    prompt: str
    answer: str
    difficulty: int
    reasoning: str = ""
    tests: str = ""
    inputs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def training_text(self) -> str:
        """The problem as one think-then-answer training example (reasoning.format_example)."""
        return format_example(self.prompt, self.reasoning, self.answer)
