"""Preemption: SIGTERM (what a TPU VM, SLURM or Kubernetes sends before taking the machine) or
SIGINT ends the run at the next step boundary with a checkpoint, so nothing is lost.

The loop asks `stop_requested(step)` after every step. One process: whether a signal arrived
(handlers are installed from the main thread only). Several: JAX's preemption sync point
(`multihost_utils.reached_preemption_sync_point`; the distributed runtime catches SIGTERM itself),
which answers identically on every process, so all of them save the same step. A second SIGINT
interrupts at once (Python's default), for a user who does not want to wait.
"""

import signal
import threading

import jax
from jax.experimental import multihost_utils

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again"; research.run exits with it after a preemption


class Preempted(Exception):
    """The run stopped early on a signal; its checkpoint at `step` resumes it."""

    def __init__(self, step: int, workdir):
        super().__init__(f"preempted at step {step}: checkpoint saved in {workdir}; "
                         "run the same command again to resume")
        self.step = step


class PreemptionWatch:
    """Catches SIGTERM and SIGINT while the loop runs (`with PreemptionWatch() as watch:`)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received, self.previous = None, {}

    def __enter__(self):
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self.previous[signum] = signal.signal(signum, self.handle)
        return self

    def handle(self, signum, frame) -> None:
        self.received = signum
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once

    def stop_requested(self, step: int) -> bool:
        if jax.process_count() > 1:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.received is not None

    def __exit__(self, *exc_info):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
