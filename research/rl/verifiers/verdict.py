"""The result every verifier returns: a score in [0, 1] and a reason trainers can count.

A verifier never raises on model text: an answer it cannot read scores 0 with a
reason saying why ("unparseable", "incomplete", ...), and a correct one scores 1
with the reason "correct". Reasons are short fixed strings, so a trainer can
tally them (e.g. the fraction of rollouts that were unparseable).
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Verdict:
    """`score` in [0, 1] (1 = fully correct) and why."""

    score: float
    reason: str

    @property
    def correct(self) -> bool:
        return self.score == 1.0


CORRECT = Verdict(1.0, "correct")


def rejected(reason: str) -> Verdict:
    """A zero-score verdict for `reason`."""
    return Verdict(0.0, reason)
