"""The train state: everything a step changes and a checkpoint must hold."""

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
    """`step` counts optimizer updates; `params` and `opt_state` are pytrees of arrays."""

    step: jax.Array
    params: Any
    opt_state: Any
