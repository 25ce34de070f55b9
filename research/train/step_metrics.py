"""The metrics of each step on their way to the log: left on the device until a log step or a
checkpoint fetches them (so the host never waits for the device inside a step), checked for a
non-finite loss there, and turned into tokens/s and MFU over the steps since the last reading:

    tokens/s = tokens / seconds,   MFU = tokens/s · FLOPs per token / peak FLOP/s
"""

import math
import time

import jax


class Throughput:
    """Tokens/s and MFU over the steps since the last reading; the clock starts after the first step."""

    def __init__(self, flops_per_token: float, peak_flops: float):
        self.flops_per_token, self.peak = flops_per_token, peak_flops
        self.start = None

    def begin(self) -> None:
        self.start = time.perf_counter()

    def exclude(self, seconds: float) -> None:
        """Leaves `seconds` of other work (evaluation, checkpointing) out of the current window."""
        if self.start is not None:
            self.start += seconds

    def read(self, tokens: float, steps: int) -> dict:
        """Rates of the `steps` steps (`tokens` tokens) run since the window began; starts a new one."""
        if self.start is None or not steps:
            return {}
        seconds = time.perf_counter() - self.start
        self.start = time.perf_counter()
        return {"tokens_per_s": tokens / seconds, "mfu": tokens * self.flops_per_token / seconds / self.peak,
                "step_time_s": seconds / steps}


def kept_checkpoint(last_saved: int, checkpoint_dir) -> str:
    """What a run that stops on a non-finite value leaves to resume from."""
    if not last_saved:
        return "No checkpoint was saved"
    return f"The last good checkpoint (step {last_saved}) is kept in {checkpoint_dir}"


class PendingMetrics:
    """Each step's metrics, left on the device until `fetch` (a log step or a checkpoint) brings them
    over; a non-finite loss among them raises FloatingPointError naming its step."""

    def __init__(self, tokens_per_step: int | None):
        self.tokens_per_step = tokens_per_step
        self.on_device, self.fetched = [], []

    def add(self, step: int, metrics: dict, *, timed: bool = True) -> None:
        """`timed`: the step counts towards tokens/s (the first step of a run does not)."""
        self.on_device.append((step, metrics, timed))

    def fetch(self, last_saved: int, checkpoint_dir) -> None:
        """Brings the metrics over; FloatingPointError if a loss is not finite."""
        fetched, self.on_device = jax.device_get(self.on_device), []
        self.fetched += fetched
        for step, metrics, _ in fetched:
            loss = float(metrics["loss"])
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at step {step}; stopping. {kept_checkpoint(last_saved, checkpoint_dir)}.")

    def take(self) -> tuple[dict, float, int]:
        """(the newest step's metrics, tokens and number of the timed steps since the last `take`),
        of the metrics fetched before."""
        records, self.fetched = self.fetched, []
        timed = [metrics for _, metrics, is_timed in records if is_timed]
        if self.tokens_per_step is None:
            tokens = sum(float(metrics["tokens"]) for metrics in timed)
        else:
            tokens = self.tokens_per_step * len(timed)
        return records[-1][1], tokens, len(timed)
