"""research/rl/verifiers/format.py: the think-then-answer format reward."""

import pytest

from research.data.reasoning import format_example
from research.rl.verifiers.format import format_score


@pytest.mark.parametrize("response", [
    "<think>2 + 2 is 4.</think>4",
    "2 + 2 is 4.</think> 4 <|end|>",  # the prompt opened <think>
    "<think>a</think>b<|end|>ignored <think>",
])
def test_well_formed_responses_score_one(response):
    verdict = format_score(response)
    assert (verdict.score, verdict.reason) == (1.0, "well formed")


def test_a_training_example_is_well_formed():
    text = format_example("What is 2 + 2?", "2 + 2 = 4.", "4")
    assert format_score(text.split("<|assistant|>")[-1]).correct


@pytest.mark.parametrize("response, reason", [
    ("4", "malformed"),
    ("<think>still thinking", "malformed"),
    ("<think>a</think>b</think>c<think>", "malformed"),
    ("<think>a<|user|></think>b", "malformed"),
    ("<think></think>4", "empty thinking"),
    ("<think>2 + 2 is 4.</think>  ", "empty answer"),
    ("", "malformed"),
    (None, "malformed"),
])
def test_malformed_responses_score_zero_with_their_reason(response, reason):
    verdict = format_score(response)
    assert (verdict.score, verdict.reason) == (0.0, reason)
