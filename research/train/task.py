"""The seam between a trainer and the shared loop (`research/train/loop.py`).

A trainer module under `research/train/trainers/` defines `build(config, mesh) -> Task`;
the loop does everything else: sharding, restore-or-init, the step loop, logging,
evaluation, checkpoints and results.
"""

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import research.train.trainers
from research.train.state import TrainState


class ResumableIterator(Protocol):
    """A batch iterator whose position can be saved (JSON-serialisable) and restored."""

    def __next__(self) -> dict: ...

    def get_state(self) -> Any: ...

    def set_state(self, state: Any) -> None: ...


@dataclasses.dataclass(frozen=True)
class Task:
    """What a trainer hands the loop.

    init_state(rng) -> TrainState whose params carry flax logical-axis boxes (for sharding).
    train_step(state, batch, rng) -> (state, metrics); metrics include "loss".
    eval_step(params, batch) -> dict of sums over the batch, added up over eval batches.
    summarize_eval(sums) -> dict of final eval metrics (e.g. loss and perplexity).
    eval_batches() -> a fresh finite iterable of eval batches.
    flops_per_step: model FLOPs of one train step (for MFU); tokens_per_step for tokens/s.
    finish(params) -> dict added to results.json (e.g. generated samples).
    """

    init_state: Callable[[Any], TrainState]
    train_step: Callable[..., tuple[TrainState, dict]]
    eval_step: Callable[..., dict]
    summarize_eval: Callable[[dict], dict]
    train_batches: ResumableIterator
    eval_batches: Callable[[], Iterable[dict]]
    tokens_per_step: int
    flops_per_step: float
    finish: Callable[[Any], dict]


def trainer_names() -> tuple[str, ...]:
    """Trainers available to `config.trainer`: the modules of research/train/trainers/."""
    return tuple(sorted(m.name for m in pkgutil.iter_modules(research.train.trainers.__path__)))


def build_task(config, mesh) -> Task:
    """Imports `research.train.trainers.<config.trainer>` and builds its Task."""
    if config.trainer not in trainer_names():
        raise ValueError(f"config field trainer: {config.trainer!r} is not one of {trainer_names()}")
    return importlib.import_module(f"research.train.trainers.{config.trainer}").build(config, mesh)
