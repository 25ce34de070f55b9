"""The seam between a trainer and the shared loop (`research/train/loop.py`).

A trainer module defines `build(config, mesh) -> Task`; the loop does everything else: sharding,
restore-or-init, the step loop, logging, evaluation, checkpoints and results. `config.trainer`
names a module of research/train/trainers/ ("lm") or, for a trainer kept outside the library,
a dotted module path.

Only what compiling the step needs is built eagerly; data (`batches`) and `evaluators` are
factories the loop calls when it runs, so the ahead-of-time compiler builds no dataset.
"""

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import research.train.trainers
from research.parallel.mesh import LOGICAL_AXIS_RULES
from research.train.batches import BatchSource
from research.train.evaluators import Evaluator
from research.train.state import TrainState


@dataclasses.dataclass(frozen=True)
class Task:
    """What a trainer hands the loop.

    init_state(rng, params=None) -> TrainState whose params carry flax logical-axis boxes (for
        sharding); `params`, when given (config.init_from), are the (sharded) parameters to start
        from: the whole tree, or a partial one holding only the subtrees loaded at their `into`
        paths, the rest of which `init_state` initialises itself. Called inside jit.
    train_step(state, batch, rng) -> (state, metrics); metrics hold "loss" and, when
        `tokens_per_step` is None, "tokens" (the step's token count, for tokens/s and MFU).
    batch_spec: the global batch as a pytree (nested dicts allowed) of `jax.ShapeDtypeStruct`s
        boxed with their logical axes (`nn.LogicallyPartitioned`): each leaf is sharded by its
        own axes, e.g. tokens ("batch", "seq"), images ("batch", None, None, None), rewards ("batch",).
    batches(batch_shardings) -> BatchSource: where each step's batch comes from
        (research/train/batches.py), laid out with the shardings of `batch_spec`.
    evaluators(batch_shardings) -> {name: Evaluator}: run at their own cadence, logged as
        `<name>_<metric>` (research/train/evaluators.py).
    workdir_evaluators(batch_shardings, workdir) -> {name: Evaluator}: evaluators that also write files
        into the run's `workdir` (a `pathlib.Path`; process 0 writes), e.g. image grids; none by default.
    tokens_per_step: tokens in one step's batch, or None when each step reports its own.
    flops_per_token: model FLOPs of one trained token (for MFU).
    axis_rules: logical axis -> mesh axes, for the state and the batch (the model family's).
    """

    init_state: Callable[..., TrainState]
    train_step: Callable[..., tuple[TrainState, dict]]
    batch_spec: Any
    batches: Callable[[Any], BatchSource]
    evaluators: Callable[[Any], Mapping[str, Evaluator]]
    tokens_per_step: int | None
    flops_per_token: float
    axis_rules: tuple = LOGICAL_AXIS_RULES
    workdir_evaluators: Callable[[Any, Path], Mapping[str, Evaluator]] = lambda batch_shardings, workdir: {}


def trainer_names() -> tuple[str, ...]:
    """Trainers of the library: the modules of research/train/trainers/."""
    return tuple(sorted(m.name for m in pkgutil.iter_modules(research.train.trainers.__path__)))


def build_task(config, mesh) -> Task:
    """Imports the trainer `config.trainer` names and builds its Task."""
    name = config.trainer
    if name in trainer_names():
        module_name = f"research.train.trainers.{name}"
    elif "." in name:
        module_name = name
    else:
        raise ValueError(f"config field trainer: {name!r} is not one of {trainer_names()} "
                         "nor the dotted path of a module that defines build(config, mesh)")
    return importlib.import_module(module_name).build(config, mesh)
