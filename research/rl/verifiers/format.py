"""The format reward: reasoning in `<think>…</think>`, then a non-empty answer.

A response is split by research/data/reasoning.py's `parse_response` (which owns the
template's tags and its tolerance: a missing opening `<think>` is fine because the
prompt opened it, text after `<|end|>` is ignored). It earns 1 when it is well formed
(exactly one closed thinking section and no stray tag) with non-empty thinking and a
non-empty answer, else 0 with the reason: "malformed" (no `</think>`, or a stray or
repeated tag), "empty thinking", "empty answer".
"""

from research.data.reasoning import parse_response
from research.rl.verifiers.verdict import Verdict, rejected

WELL_FORMED = Verdict(1.0, "well formed")


def format_score(response: str) -> Verdict:
    """Verdict on the layout of `response` (see the module docstring); never raises."""
    if not isinstance(response, str):
        return rejected("malformed")
    parsed = parse_response(response)
    if not parsed.well_formed:
        return rejected("malformed")
    if not parsed.thinking:
        return rejected("empty thinking")
    if not parsed.answer:
        return rejected("empty answer")
    return WELL_FORMED
