"""research/rl/verifiers/code.py: the program a completion holds, and its reward."""

import pytest

from research.rl.verifiers.code import code_reward, extract_program

TESTS = "assert square(3) == 9\ndef test_negative():\n    assert square(-2) == 4\n"


@pytest.mark.parametrize("completion, program", [
    ("Here:\n```python\ndef f():\n    return 1\n```\nDone.", "def f():\n    return 1\n"),
    ("```py\nx = 1\n```\nbetter:\n```python3\nx = 2\n```", "x = 2\n"),
    ("```python\nx = 1\n```\n```python\nx = 3\n", "x = 3\n"),
    ("def f():\n    return 1", "def f():\n    return 1"),
    ("```text\nnot code\n```", "```text\nnot code\n```"),
])
def test_extract_program_takes_the_last_python_block_else_everything(completion, program):
    assert extract_program(completion) == program


@pytest.mark.parametrize("completion, score, reason", [
    ("Squaring:\n```python\ndef square(x):\n    return x * x\n```", 1.0, "correct"),
    ("def square(x):\n    return x * x\n", 1.0, "correct"),
    ("```python\ndef square(x):\n    return x + x\n```", 0.0, "failed"),
    ("I think the answer is to square it.", 0.0, "error"),
    ("```python\ndef square(x):\n    while True:\n        pass\n```", 0.0, "timeout"),
    ("```python\n\n```", 0.0, "no code"),
    (None, 0.0, "no code"),
])
def test_code_reward(completion, score, reason):
    verdict = code_reward(completion, TESTS, timeout_s=1.0)
    assert (verdict.score, verdict.reason) == (score, reason)


def test_bad_tests_raise_even_without_code():
    with pytest.raises(ValueError, match="tests must be a str"):
        code_reward("", None)
