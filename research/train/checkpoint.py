"""Checkpoints of the train state and the batch source's state (orbax), and of each host's
data-iterator position.

Layout under `<workdir>/checkpoints/`:
    <step>/state/                 the train state (orbax: atomic, written asynchronously)
    <step>/batches/               the batch source's array state, when it has any
    data_state/<step>.<proc>.json the data iterator of process <proc> after <step> steps

Only finite states are saved: `save` raises `NonFiniteState` naming the first leaf with a NaN or
an infinity, so the newest checkpoint is always one to resume from.

Restoring takes the newest checkpoint that reads back; one that does not (any file missing,
truncated or corrupt, its metadata included) is renamed `<step>.corrupt` with one warning line,
and the previous one is used. A complete checkpoint whose arrays differ in shape or dtype from the
config's raises `CheckpointMismatch` naming the first mismatching parameter; nothing is
overwritten then. Temporary directories of a save that was interrupted are removed.
"""

import json
import logging
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)

STATE, BATCHES = "state", "batches"


def tree_paths(tree) -> dict[str, tuple]:
    """`{"params/layers/attention/q": (shape, dtype name), ...}` for the array leaves of a pytree."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {
        "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path):
            (tuple(leaf.shape), np.dtype(leaf.dtype).name)
        for path, leaf in flat if hasattr(leaf, "shape")
    }


def first_mismatch(saved: dict[str, tuple], expected: dict[str, tuple]) -> str | None:
    """A sentence naming the first array (parameters first) whose presence, shape or dtype differs, else None."""
    for name in sorted(set(saved) | set(expected), key=lambda n: (not n.startswith("params"), n)):
        if name not in saved:
            return f"{name} is in the config's model but not in the checkpoint"
        if name not in expected:
            return f"{name} is in the checkpoint but not in the config's model"
        (saved_shape, saved_dtype), (shape, dtype) = saved[name], expected[name]
        if saved_shape != shape:
            return f"{name} has shape {saved_shape} in the checkpoint but {shape} in the config"
        if saved_dtype != dtype:
            return f"{name} has dtype {saved_dtype} in the checkpoint but {dtype} in the config"
    return None


def checkpoint_paths(state, source_state) -> dict[str, tuple]:
    """`tree_paths` of what a checkpoint holds: the train state's, then the batch source's under `batches/`."""
    return {**tree_paths(state), **tree_paths({BATCHES: source_state})}


class CheckpointMismatch(ValueError):
    """A readable checkpoint whose arrays do not fit the config (as opposed to a corrupt one)."""


class NonFiniteState(FloatingPointError):
    """A state with a NaN or an infinity, which is never saved."""


@jax.jit
def leaves_finite(tree):
    """One bool per leaf: whether all of its values are finite (integer leaves always are)."""
    return [jnp.all(jnp.isfinite(leaf)) if jnp.issubdtype(leaf.dtype, jnp.inexact) else jnp.array(True)
            for leaf in jax.tree.leaves(tree)]


def first_non_finite(tree) -> str | None:
    """The path of the first leaf of `tree` holding a NaN or an infinity, else None."""
    finite = jax.device_get(leaves_finite(tree))
    paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)]
    return next((path for path, ok in zip(paths, finite) if not ok), None)


def has_arrays(tree) -> bool:
    return bool(jax.tree.leaves(tree))


def restore_args(abstract, *, partial: bool = False) -> ocp.args.PyTreeRestore:
    """Orbax's arguments to read `abstract` (`jax.ShapeDtypeStruct`s with shardings) straight into
    sharded arrays; `partial`: `abstract` names only some of the saved arrays."""
    return ocp.args.PyTreeRestore(item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                                  partial_restore=partial)


class Checkpointer:
    """Saves and restores `(step, train_state, source_state, host_state)` under `directory`
    (read_only: another run's checkpoints, to start from)."""

    def __init__(self, directory: str, *, max_to_keep: int = 3, read_only: bool = False):
        self.directory = Path(directory).absolute()
        self.data_dir = self.directory / "data_state"
        self.set_aside_steps = []
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=None if read_only else max_to_keep, read_only=read_only,
                                                 save_interval_steps=0 if read_only else 1,
                                                 enable_async_checkpointing=not read_only, create=not read_only,
                                                 cleanup_tmp_directories=not read_only),
            item_handlers={STATE: ocp.PyTreeCheckpointHandler(), BATCHES: ocp.PyTreeCheckpointHandler()},
        )

    def save(self, step: int, state, source_state, host_state) -> None:
        """Writes this host's data position first, then starts the asynchronous array save;
        NonFiniteState (nothing written) if the state or the source state is not finite."""
        bad = first_non_finite({"state": state, "batches": source_state})
        if bad is not None:
            raise NonFiniteState(f"{bad} holds a NaN or an infinity after step {step}")
        self.write_host_state(step, host_state)
        items = {STATE: ocp.args.PyTreeSave(state)}
        if has_arrays(source_state):
            items[BATCHES] = ocp.args.PyTreeSave(source_state)
        self.manager.save(step, args=ocp.args.Composite(**items))
        self.remove_stale_host_states()

    def write_host_state(self, step: int, host_state) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        path = self.data_dir / f"{step}.{jax.process_index()}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(host_state))
        os.replace(tmp, path)

    def read_host_state(self, step: int):
        path = self.data_dir / f"{step}.{jax.process_index()}.json"
        if not path.exists():
            raise FileNotFoundError(f"no data-iterator state {path} for checkpoint step {step}")
        return json.loads(path.read_text())

    def remove_stale_host_states(self) -> None:
        """Deletes data positions whose step is no longer kept (keeps the newest, in flight)."""
        kept = set(self.manager.all_steps())
        newest = max(kept, default=None)
        for path in self.data_dir.glob("*.json"):
            step = int(path.name.split(".")[0])
            if step not in kept and (newest is None or step < newest):
                path.unlink(missing_ok=True)

    def saved_arrays(self, step: int) -> dict[str, tuple]:
        """`tree_paths` of everything the checkpoint at `step` holds (train state, then batch source);
        OSError if its metadata is missing or names no array (an incomplete checkpoint)."""
        metadata = self.manager.item_metadata(step)
        if metadata.get(STATE) is None or not tree_paths(metadata[STATE]):
            raise OSError(f"no readable metadata in {self.directory / str(step) / STATE}")
        return checkpoint_paths(metadata[STATE], metadata.get(BATCHES) or {})

    def check_compatible(self, step: int, saved: dict[str, tuple], expected: dict[str, tuple]) -> None:
        """Raises ValueError naming the first array that differs from what the config makes."""
        problem = first_mismatch(saved, expected)
        if problem:
            raise CheckpointMismatch(
                f"the checkpoint at {self.directory / str(step)} does not fit this config: {problem}. "
                "Use another --workdir or the config that wrote it; nothing was overwritten.")

    def restore(self, step: int, abstract_state, abstract_source):
        """`(state, source_state, host_state)` of the checkpoint at `step`, read straight into the
        shardings the abstract trees carry; CheckpointMismatch naming the first array that does not fit."""
        self.check_compatible(step, self.saved_arrays(step), checkpoint_paths(abstract_state, abstract_source))
        items = {STATE: restore_args(abstract_state)}
        if has_arrays(abstract_source):
            items[BATCHES] = restore_args(abstract_source)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return restored[STATE], restored[BATCHES] if has_arrays(abstract_source) else {}, self.read_host_state(step)

    def restore_latest(self, abstract_state, abstract_source):
        """`(step, state, source_state, host_state)` of the newest readable checkpoint, or None if there is none."""
        complete = set(self.manager.all_steps())
        for path in self.directory.iterdir():  # step directories orbax does not count as checkpoints
            if path.name.isdigit() and int(path.name) not in complete:
                self.set_aside(int(path.name), OSError("not a complete checkpoint (its metadata is missing)"))
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                return (step, *self.restore(step, abstract_state, abstract_source))
            except CheckpointMismatch:
                raise
            except Exception as error:  # unreadable: corrupt or half-written
                self.set_aside(step, error)
        return None

    def newest_step(self) -> int:
        """The newest step saved here; ValueError if there is none."""
        step = self.manager.latest_step()
        if step is None:
            raise ValueError(f"config field init_from.path: {self.directory} holds no checkpoint")
        return step

    def restore_params(self, step: int, abstract_params):
        """The parameters of the checkpoint at `step`, read straight into the shardings that
        `abstract_params` carry; nothing else is read."""
        expected = tree_paths({"params": abstract_params})
        saved = {name: leaf for name, leaf in self.saved_arrays(step).items() if name.startswith("params/")}
        self.check_compatible(step, saved, expected)
        restored = self.manager.restore(step, args=ocp.args.Composite(
            **{STATE: restore_args({"params": abstract_params}, partial=True)}))
        return restored[STATE]["params"]

    def set_aside(self, step: int, error: Exception) -> None:
        """Renames an unreadable checkpoint so that it is neither used nor overwritten."""
        path = self.directory / str(step)
        log.warning("checkpoint %s is unreadable (%s: %s); set aside as %s.corrupt, using the previous one",
                    path, type(error).__name__, str(error).splitlines()[0] if str(error) else "", step)
        self.set_aside_steps.append(f"{step}.corrupt")
        if jax.process_index() == 0 and path.exists():
            os.replace(path, path.with_name(f"{step}.corrupt"))
        self.manager.reload()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
