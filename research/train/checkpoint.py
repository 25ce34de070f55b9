"""Checkpoints of the train state (orbax) and of each host's data-iterator position.

Layout under `<workdir>/checkpoints/`:
    <step>/                       orbax's atomic, asynchronously written train state
    data_state/<step>.<proc>.json the data iterator of process <proc> after <step> steps

Restoring takes the newest checkpoint that reads back; one that does not (corrupt or
half-written) is renamed `<step>.corrupt` with a warning, and the previous one is used.
A checkpoint whose parameter shapes differ from the config's raises `ValueError` naming
the first mismatching parameter; nothing is overwritten then.
"""

import json
import logging
import os
from pathlib import Path

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


def tree_paths(tree) -> dict[str, tuple]:
    """`{"params/layers/attention/q": shape, ...}` for the array leaves of a pytree."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {
        "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path): tuple(leaf.shape)
        for path, leaf in flat if hasattr(leaf, "shape")
    }


def first_mismatch(saved: dict[str, tuple], expected: dict[str, tuple]) -> str | None:
    """A sentence naming the first array (parameters first) whose presence or shape differs, else None."""
    for name in sorted(set(saved) | set(expected), key=lambda n: (not n.startswith("params"), n)):
        if name not in saved:
            return f"{name} is in the config's model but not in the checkpoint"
        if name not in expected:
            return f"{name} is in the checkpoint but not in the config's model"
        if saved[name] != expected[name]:
            return f"{name} has shape {saved[name]} in the checkpoint but {expected[name]} in the config"
    return None


class Checkpointer:
    """Saves and restores `(step, train_state, data_state)` under `<workdir>/checkpoints`."""

    def __init__(self, directory: str, *, max_to_keep: int = 3):
        self.directory = Path(directory).absolute()
        self.data_dir = self.directory / "data_state"
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=True,
                                                 create=True),
            item_handlers=ocp.StandardCheckpointHandler(),
        )

    def save(self, step: int, state, data_state) -> None:
        """Writes this host's data state first, then starts the asynchronous state save."""
        self.write_data_state(step, data_state)
        self.manager.save(step, args=ocp.args.StandardSave(state))
        self.remove_stale_data_states()

    def write_data_state(self, step: int, data_state) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        path = self.data_dir / f"{step}.{jax.process_index()}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data_state))
        os.replace(tmp, path)

    def read_data_state(self, step: int):
        path = self.data_dir / f"{step}.{jax.process_index()}.json"
        if not path.exists():
            raise FileNotFoundError(f"no data-iterator state {path} for checkpoint step {step}")
        return json.loads(path.read_text())

    def remove_stale_data_states(self) -> None:
        """Deletes data states whose step is no longer kept (keeps the newest, in flight)."""
        kept = set(self.manager.all_steps())
        newest = max(kept, default=None)
        for path in self.data_dir.glob("*.json"):
            step = int(path.name.split(".")[0])
            if step not in kept and (newest is None or step < newest):
                path.unlink(missing_ok=True)

    def saved_shapes(self, step: int) -> dict[str, tuple]:
        metadata = self.manager.item_metadata(step)
        return tree_paths(metadata.tree if hasattr(metadata, "tree") else metadata)

    def check_compatible(self, step: int, saved: dict[str, tuple], abstract_state) -> None:
        """Raises ValueError naming the first parameter that differs from `abstract_state`."""
        problem = first_mismatch(saved, tree_paths(abstract_state))
        if problem:
            raise ValueError(
                f"the checkpoint at {self.directory / str(step)} does not fit this config: {problem}. "
                "Use another --workdir or the config that wrote it; nothing was overwritten.")

    def restore_latest(self, abstract_state):
        """`(step, state, data_state)` of the newest readable checkpoint, or None if there is none."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                saved = self.saved_shapes(step)
            except Exception as error:  # unreadable metadata: a corrupt checkpoint
                self.set_aside(step, error)
                continue
            self.check_compatible(step, saved, abstract_state)
            try:
                state = self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
                data_state = self.read_data_state(step)
            except Exception as error:
                self.set_aside(step, error)
                continue
            return step, state, data_state
        return None

    def set_aside(self, step: int, error: Exception) -> None:
        """Renames an unreadable checkpoint so that it is neither used nor overwritten."""
        path = self.directory / str(step)
        log.warning("checkpoint %s is unreadable (%s: %s); using the previous one", path, type(error).__name__,
                    str(error).splitlines()[0] if str(error) else "")
        if jax.process_index() == 0 and path.exists():
            os.replace(path, path.with_name(f"{step}.corrupt"))
        self.manager.reload()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

