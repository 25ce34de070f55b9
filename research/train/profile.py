"""A jax.profiler trace of a window of training steps (`config.train.profile_steps`).

`profile_steps = (first, last)` traces the steps that run while the step counter goes from
`first` to `last` (e.g. (10, 15): five steps after ten of warm-up); `()` traces nothing. The trace
(TensorBoard's profile plugin or Perfetto read it) goes to `<workdir>/profile/`.
"""

import logging
from pathlib import Path

import jax

log = logging.getLogger(__name__)


class ProfileWindow:
    """Starts the trace before step `first` and stops it once step `last` has finished."""

    def __init__(self, steps, directory: Path):
        self.first, self.last = tuple(steps) if steps else (None, None)
        self.directory, self.active = directory, False

    def before(self, step: int) -> None:
        if step == self.first and jax.process_index() == 0:
            jax.profiler.start_trace(str(self.directory))
            self.active = True

    def after(self, step: int, state) -> None:
        if step == self.last and self.active:
            jax.block_until_ready(state)
            self.close()
            log.info("profile of steps %d-%d written to %s", self.first, self.last, self.directory)

    def close(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
