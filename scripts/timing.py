"""Wall-clock timing of programs for the benchmarks (imports only jax)."""

import statistics
import time
from collections.abc import Callable

import jax


def median_seconds(program, args, repeats: int) -> float:
    """One warm-up call (it compiles), then the median of `repeats` timed calls, each waited for."""
    jax.block_until_ready(program(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(program(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_best_seconds(programs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best-of-`repeats` seconds per call of each of `programs` (name -> a call that returns when its
    work is done), after one warm-up call each. The programs take turns, one call each per round, so
    a change of machine load in the middle of the run slows them alike and their ratio holds."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for program in programs.values():
        jax.block_until_ready(program())
    best = dict.fromkeys(programs, float("inf"))
    for _ in range(repeats):
        for name, program in programs.items():
            start = time.perf_counter()
            jax.block_until_ready(program())
            best[name] = min(best[name], time.perf_counter() - start)
    return best
