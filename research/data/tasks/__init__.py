"""Procedural tasks with verifiable answers, generated offline from a seed.

- problem.py: the `Problem` record.
- arithmetic.py, countdown.py, knights_knaves.py, coding.py: one suite each.
- suites.py: `SUITES`, `SPLITS` (train, held_out: harder), `generate_problems`.
- builder.py: the suites as tfds array_record datasets (`task_source`).
- preferences.py: prompts, graded candidate responses, judges and preference pairs.
- safety.py: banned topics, safe and unsafe prompts, and the safety judge.

Verifiers of model answers live in research/rl/verifiers/ (this data layer imports nothing from research.rl).
"""

from research.data.tasks.problem import Problem
from research.data.tasks.suites import SPLITS, SUITES, generate_problem, generate_problems

__all__ = ["Problem", "SPLITS", "SUITES", "generate_problem", "generate_problems"]
