"""Verifiers for verifiable rewards: each scores a model's answer with a `Verdict`
(score in [0, 1] and a reason), never raising on model text.

- math_answers.py: answers compared by exact value (`math_answers_equal`, `extract_final_answer`).
- countdown.py: expressions over given numbers reaching a target (`countdown_score`).
- knights_knaves.py: who is a knight and who a knave (`knights_knaves_score`).
- code.py: a program run against unit tests in the sandbox (`code_reward`).
- format.py: the think-then-answer layout (`format_score`).
- problems.py: the verdict on an answer to a procedural `Problem` (`problem_score`).
"""

from research.rl.verifiers.code import code_reward
from research.rl.verifiers.countdown import countdown_score
from research.rl.verifiers.format import format_score
from research.rl.verifiers.knights_knaves import knights_knaves_score
from research.rl.verifiers.math_answers import extract_final_answer, math_answers_equal, math_score
from research.rl.verifiers.problems import problem_score
from research.rl.verifiers.verdict import Verdict

__all__ = ["Verdict", "code_reward", "countdown_score", "extract_final_answer", "format_score", "knights_knaves_score",
           "math_answers_equal", "math_score", "problem_score"]
