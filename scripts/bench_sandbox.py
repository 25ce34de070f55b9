"""Sandbox throughput: small correct programs through `run_many`, in programs per second.

    python -m scripts.bench_sandbox [--programs 200] [--workers 1 2 4 8]

Each program defines a function and is checked by two tests (a top-level assert and a test_*
function); every one must pass. programs/s = programs / wall time of one `run_many` call. The
load average before and after is printed beside it: the figure is only as good as the idle
CPUs the machine had.
"""

import argparse
import os
import time

from research.rl.sandbox import isolation, run_many


def programs(count: int) -> list[tuple[str, str]]:
    """(code, tests) pairs, each a different correct program."""
    return [(f"def scaled_sum(values):\n    return sum(values) * {i}\n",
             f"assert scaled_sum([1, 2, 3]) == {6 * i}\n\ndef test_empty():\n    assert scaled_sum([]) == 0\n")
            for i in range(count)]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--programs", type=int, default=200)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    args = parser.parse_args()
    print(f"isolation: {isolation()}")
    print(f"cpus: {os.cpu_count()}")
    jobs = programs(args.programs)
    for workers in args.workers:
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        results = run_many(jobs, workers=workers)
        seconds = time.perf_counter() - start
        failed = [result for result in results if not result.passed]
        if failed:
            raise SystemExit(f"{len(failed)} correct programs did not pass, e.g. {failed[0]}")
        print(f"workers {workers:2d}: {len(jobs) / seconds:6.1f} programs/s ({len(jobs)} in {seconds:.1f} s; "
              f"load average {load_before:.2f} -> {os.getloadavg()[0]:.2f})", flush=True)


if __name__ == "__main__":
    main()
