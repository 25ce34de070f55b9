"""The code reward: a model's program, run against the task's tests in the sandbox.

The program is the last fenced block tagged python (```python, ```python3 or ```py) of the
completion (a last block cut before its closing fence runs to the end of the text), else the
whole completion when it has no such block. It runs with
research/rl/sandbox.py's `run_tests`; the reward is 1 when every test passes and 0 otherwise,
with the reason: "no code" (nothing but whitespace to run), or the sandbox's status: "failed",
"error" (not valid Python, or raised outside a test), "timeout", "memory", "output_limit".
"""

import re

from research.rl.sandbox import check_arguments, run_tests
from research.rl.verifiers.verdict import CORRECT, Verdict, rejected

PYTHON_BLOCK = re.compile(r"```[ \t]*(?:python3?|py)[ \t]*\r?\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)


def extract_program(completion: str) -> str:
    """The last ```python block of `completion`, else all of it."""
    blocks = PYTHON_BLOCK.findall(completion)
    return blocks[-1] if blocks else completion


def code_reward(completion: str, tests: str, *, timeout_s: float = 5.0, memory_mb: int = 512) -> Verdict:
    """Score 1.0 ("correct") when the program in `completion` passes every test of `tests` in
    the sandbox, else 0.0 with the reason (module docstring). Never raises on the completion (a
    completion that is not a str is "no code"); `tests`, `timeout_s` and `memory_mb` are the
    task's and are checked as `run_tests` checks them (ValueError)."""
    check_arguments("", tests, timeout_s=timeout_s, memory_mb=memory_mb)
    program = extract_program(completion) if isinstance(completion, str) else ""
    if not program.strip():
        return rejected("no code")
    result = run_tests(program, tests, timeout_s=timeout_s, memory_mb=memory_mb)
    return CORRECT if result.passed else rejected(result.status)
