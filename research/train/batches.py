"""Where each step's batch comes from: a host data iterator, or the current policy.

A `BatchSource` gives the loop the step's global batch (sharded as the Task's `batch_spec` says)
and two kinds of state a checkpoint keeps:
- array state (`init`, threaded through `next`): a pytree of arrays saved by orbax beside the
  train state, e.g. a rollout buffer, running reward statistics, a replay position;
- host state (`host_state`): the JSON-serialisable position of this process's data iterator.

Both are restored on resume, so a resumed run draws exactly the batches an uninterrupted one would.
"""

from collections.abc import Callable
from typing import Any, Protocol

import jax


class ResumableIterator(Protocol):
    """A batch iterator whose position can be saved (JSON-serialisable) and restored."""

    def __next__(self) -> dict: ...

    def get_state(self) -> Any: ...

    def set_state(self, state: Any) -> None: ...


class BatchSource(Protocol):
    """init(rng) -> array state (a pytree, boxed with logical axes where it should be sharded; {} if none).
    next(train_state, source_state, rng) -> (global batch, source_state).
    host_state() -> this process's JSON-serialisable position (None if none); set_host_state(position).
    """

    def init(self, rng) -> Any: ...

    def next(self, train_state, source_state, rng) -> tuple[Any, Any]: ...

    def host_state(self) -> Any: ...

    def set_host_state(self, position: Any) -> None: ...


def shard_batch(local_batch, shardings):
    """Each process's rows of every leaf (nested dicts allowed) assembled into global arrays."""
    return jax.tree.map(jax.make_array_from_process_local_data, shardings, local_batch)


class IteratorBatches:
    """Batches read from a host iterator (each process yields its own rows), e.g. packed text."""

    def __init__(self, iterator: ResumableIterator, shardings):
        self.iterator, self.shardings = iterator, shardings

    def init(self, rng) -> dict:
        return {}

    def next(self, train_state, source_state, rng):
        return shard_batch(next(self.iterator), self.shardings), source_state

    def host_state(self):
        return self.iterator.get_state()

    def set_host_state(self, position) -> None:
        self.iterator.set_state(position)


class OnPolicyBatches:
    """Batches made on the devices from the current train state, e.g. rollouts of the policy.

    `make(train_state, source_state, rng) -> (batch, source_state)` runs jitted, its batch laid out
    with `shardings`; `init(rng)` makes the first source state.
    """

    def __init__(self, init: Callable, make: Callable, shardings):
        self.init = init
        self.make = jax.jit(make, out_shardings=(shardings, None), donate_argnums=1)

    def next(self, train_state, source_state, rng):
        return self.make(train_state, source_state, rng)

    def host_state(self):
        return None

    def set_host_state(self, position) -> None:
        if position is not None:
            raise ValueError(f"an on-policy batch source keeps no host state, but the checkpoint holds {position!r}")
