"""A model family: what the loop, the mesh, the checks and the parameter count need to know of
one kind of model, so that a new kind never edits them.

`config.model.family` names it: a key of `research.models.FAMILIES` ("llama") or the dotted path
of a module that defines `FAMILY` (a family kept outside the library, e.g. in an experiment).
"""

import dataclasses
from collections.abc import Callable
from typing import Any

from research.parallel.mesh import LOGICAL_AXIS_RULES


def require(condition: bool, field: str, problem: str) -> None:
    """Config validation: raises `ValueError("config field <field>: <problem>")` unless `condition`."""
    if not condition:
        raise ValueError(f"config field {field}: {problem}")


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    """build(model_config, mesh) -> the flax module (`mesh`: None, or the run's device mesh for
        layers that shard work by hand).
    init_inputs(model_config) -> the positional arguments of `module.init(rng, *inputs)` as
        `jax.ShapeDtypeStruct`s (shapes only: counting and sharding never allocate).
    validate(config) -> None: checks `config.model` against the rest of the experiment config,
        raising ValueError naming the field (`require`).
    axis_rules: logical axis name -> mesh axes, for parameters and batches (research/parallel/mesh.py).
    """

    build: Callable[[Any, Any], Any]
    init_inputs: Callable[[Any], tuple]
    validate: Callable[[Any], None]
    axis_rules: tuple = LOGICAL_AXIS_RULES
