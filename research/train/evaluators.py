"""Evaluators: measurements of the parameters that the loop runs at their own cadence.

`config.evals` holds one entry per evaluator (big_vision's pattern), each with `every` (steps
between runs; 0 = only at the end) and the fields of its kind; the trainer turns them into
`Evaluator`s. The loop runs each when `step % every == 0` and once more at the end, and logs its
metrics as `<name>_<metric>` (numbers to TensorBoard too; lists and strings to metrics.jsonl and
results.json only).
"""

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp

from research.train.batches import shard_batch


@dataclasses.dataclass(frozen=True)
class Evaluator:
    """every: steps between runs (0: at the end only); run(params) -> {metric: value}."""

    every: int
    run: Callable[[Any], dict]

    def is_due(self, step: int) -> bool:
        """Whether to run after `step` steps (the end of training is the loop's to add)."""
        return self.every > 0 and step % self.every == 0


def summed_evaluator(every: int, eval_step: Callable, batches: Callable[[], Iterable], num_batches: int,
                     shardings, summarize: Callable[[dict], dict]) -> Evaluator:
    """An evaluator that adds up `eval_step(params, batch)` sums (e.g. Σ nll, Σ tokens) over the
    first `num_batches` batches of `batches()` (all if 0), then `summarize`s the totals (e.g. the
    mean loss and perplexity)."""
    jitted = jax.jit(eval_step)

    def run(params):
        totals = None
        for index, batch in enumerate(batches()):
            if num_batches and index >= num_batches:
                break
            sums = jitted(params, shard_batch(batch, shardings))
            totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        if totals is None:
            raise ValueError("the eval split produced no batches")
        return summarize(jax.device_get(totals))

    return Evaluator(every, run)
