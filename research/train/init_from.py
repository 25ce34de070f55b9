"""Where a new run's first state comes from: `config.init_from`.

    kind "none"      random initialisation (`task.init_state(rng)`)
    kind "run"       an earlier run's newest checkpoint in `path` (its workdir): parts "params"
                     starts a new optimizer, step 0 and a fresh data stream from its parameters;
                     parts "all" continues its whole state (step, optimizer, batch source, data
                     position) in this workdir
    kind "hf_llama"  a Hugging Face `LlamaForCausalLM` directory (research/models/convert.py)

With parts "params", `into` places the loaded parameters at a '/'-separated path of the task's
parameter tree instead of at its root (e.g. "backbone": a pretrained decoder under new heads),
and `extra` names further sources, each `{kind, path, into}` (e.g. a PPO run's critic from a
reward-model run, beside its policy from an SFT run). `task.init_state(rng, params)` then gets the
partial tree of everything loaded and initialises the rest itself.

Parameters are read outside jit straight into the run's shardings (orbax restores each shard
where it lives; a Hugging Face checkpoint is placed by `device_put`), then `task.init_state`
builds the rest of the state around them. A mismatch names the first parameter whose shape
or dtype differs. Only a run without checkpoints of its own starts here: a resumed run
continues from its own newest checkpoint.
"""

import dataclasses
import logging
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax

from research.models.convert import load_hf_llama
from research.train.checkpoint import Checkpointer, first_mismatch, tree_paths
from research.train.step import StepLayout
from research.train.task import Task

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Start:
    """The state a run starts from, and the step it is at."""

    step: int
    state: Any
    source_state: Any
    host_state: Any = None


def hf_params(path: str, abstract_params):
    """The parameters of a Hugging Face LLaMA directory, checked against and placed as `abstract_params`."""
    _, params = load_hf_llama(path)
    problem = first_mismatch(tree_paths({"params": params}), tree_paths({"params": abstract_params}))
    if problem:
        raise ValueError(f"config field init_from.path: the Hugging Face checkpoint {path} does not fit "
                         f"config.model: {problem.replace('checkpoint', 'Hugging Face checkpoint')}")
    return jax.device_put(params, jax.tree.map(lambda leaf: leaf.sharding, abstract_params))


def subtree(tree, path: str, field: str):
    """The node of nested dicts `tree` at '/'-separated `path` ("" is the root); ValueError naming `field`."""
    node = tree
    for key in filter(None, path.split("/")):
        if not isinstance(node, dict) or key not in node:
            keys = sorted(node) if isinstance(node, dict) else []
            raise ValueError(f"config field {field}: {path!r} is not a subtree of the task's parameters "
                             f"({key!r} is not among {keys})")
        node = node[key]
    return node


def nested(path: str, value):
    """`value` placed at '/'-separated `path` of otherwise empty nested dicts."""
    for key in reversed(list(filter(None, path.split("/")))):
        value = {key: value}
    return value


def merged(trees):
    """Nested dicts merged key by key (the sources' `into` paths are disjoint)."""
    result = {}
    for tree in trees:
        for key, value in tree.items():
            result[key] = merged([result[key], value]) if key in result else value
    return result


def source_params(source, abstract_params):
    """The parameters one source names, sharded as `abstract_params`."""
    if source.kind == "hf_llama":
        return hf_params(source.path, abstract_params)
    with Checkpointer(Path(source.path) / "checkpoints", read_only=True) as reader:
        step = reader.newest_step()
        log.info("starting from the parameters of %s at step %d", source.path, step)
        return reader.restore_params(step, abstract_params)


def sources(init_from) -> dict:
    """Where each part of the parameters comes from: {config field: source}, the main one first."""
    found = {} if init_from.kind == "none" else {"init_from": init_from}
    for name, source in init_from.get("extra", {}).items():
        found[f"init_from.extra.{name}"] = source
    return found


def initial_params(init_from, abstract_params, shardings):
    """(params, their shardings): the partial parameter tree the sources fill, each at its `into`
    path and sharded as there, or (None, None) for a random start."""
    loaded, placed = [], []
    for field, source in sources(init_from).items():
        into = source.get("into", "")
        loaded.append(nested(into, source_params(source, subtree(abstract_params, into, f"{field}.into"))))
        placed.append(nested(into, subtree(shardings, into, f"{field}.into")))
    return (merged(loaded), merged(placed)) if loaded else (None, None)


def start(init_from, task: Task, layout: StepLayout, abstract_source, init_key) -> Start:
    """The first state of a run that has no checkpoint of its own (`source_state` None: the batch
    source starts afresh)."""
    if init_from.kind == "run" and init_from.parts == "all":
        with Checkpointer(Path(init_from.path) / "checkpoints", read_only=True) as reader:
            step = reader.newest_step()
            log.info("continuing %s from step %d", init_from.path, step)
            return Start(step, *reader.restore(step, layout.state, abstract_source))
    params, shardings = initial_params(init_from, layout.state.params, layout.state_shardings.params)
    if params is None:
        init = jax.jit(lambda key: nn.meta.unbox(task.init_state(key)), out_shardings=layout.state_shardings)
        return Start(0, init(init_key), None)
    init = jax.jit(lambda key, p: nn.meta.unbox(task.init_state(key, p)),
                   in_shardings=(None, shardings), out_shardings=layout.state_shardings, donate_argnums=1)
    return Start(0, init(init_key, params), None)
