"""Helpers for tests that run `research.run` in real processes and interrupt them mid-run."""

import os
import time

from research.train.metrics import read_metrics


def logged_step(workdir) -> int:
    """The newest step with a training record in the run's metrics.jsonl (0 before the first)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path) or not os.path.getsize(path):
        return 0
    return max((r["step"] for r in read_metrics(str(workdir)) if "loss" in r), default=0)


def wait_for_step(process, workdir, step: int, timeout_s: float = 300) -> None:
    """Waits until the run in `workdir` has logged `step`; fails if `process` ended first."""
    deadline = time.time() + timeout_s
    while logged_step(workdir) < step and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, "the run ended before it could be interrupted"
