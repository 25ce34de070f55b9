"""The train step as the loop runs it and the ahead-of-time compiler compiles it.

`step_layout` lays a Task out on a mesh from shapes alone (nothing is allocated): the train
state, the batch source's state and the batch as `jax.ShapeDtypeStruct`s carrying their
shardings, derived from their logical axes by the family's rules. `jit_train_step` jits
`task.train_step` with those shardings and the state donated; `.lower(*layout.step_args())`
then compiles it for the mesh's devices, real or described (research/tools/aot.py).
"""

import dataclasses
from typing import Any

import jax

from research.parallel.mesh import check_divides, sharded_abstract, sharded_abstract_state
from research.train.task import Task


@dataclasses.dataclass(frozen=True)
class StepLayout:
    """Abstract (sharded) train state, batch-source state and batch, with their shardings."""

    state: Any
    state_shardings: Any
    batch: Any
    batch_shardings: Any

    def step_args(self) -> tuple:
        """Abstract arguments of `train_step(state, batch, rng)`."""
        return self.state, self.batch, jax.eval_shape(jax.random.key, 0)


def step_layout(task: Task, mesh) -> StepLayout:
    """The Task's state and batch on `mesh`; ValueError naming a leaf the mesh does not split evenly."""
    state, state_shardings = sharded_abstract_state(task.init_state, mesh, jax.eval_shape(jax.random.key, 0),
                                                    task.axis_rules)
    check_divides(state, "state leaf")
    batch, batch_shardings = sharded_abstract(task.batch_spec, mesh, task.axis_rules)
    check_divides(batch, "batch leaf", "change config.train.batch_size (or seq_len) or config.mesh")
    return StepLayout(state, state_shardings, batch, batch_shardings)


def jit_train_step(task: Task, layout: StepLayout):
    """`task.train_step(state, batch, rng) -> (state, metrics)` jitted with the layout's shardings,
    the state donated (updated in place)."""
    return jax.jit(task.train_step, in_shardings=(layout.state_shardings, layout.batch_shardings, None),
                   out_shardings=(layout.state_shardings, None), donate_argnums=0)
