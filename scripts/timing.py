"""Wall-clock timing of a jitted program for the benchmarks (imports only jax)."""

import statistics
import time

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
