"""LoRA as a switch for any trainer (`config.lora.enabled`): adapters trained, the base frozen and
never saved (Hu et al., 2021; research/models/lora.py holds the adapters' math).

A trainer builds its trained model with `adapted(model, config)` and its optimizer with
`adapter_optimizer(optimizer, config)`, and hands its Task through `lora_task(task, config)`; with
LoRA off all three return their argument. With LoRA on, the adapted model's parameters are

    {"lora_base": W (frozen), "lora_trained": leaves matching `lora.train_fully` (e.g. a new scalar
     head; absent when none), "lora_adapters": {A, B} per weight matching `lora.patterns`}

and its forward pass is the base model's on merge(W, A, B) = W + (α/r)·A·B, W under stop_gradient.
`lora_task` then moves every "lora_base" subtree out of the train state:

  state      the trainable leaves alone (adapters, fully trained leaves), and the optimizer's state of
             those alone (`adapter_optimizer`: the base gets zero updates and keeps none): a checkpoint
             holds no base weight;
  batch      {"data": the trainer's batch, "frozen": the base}: the base is an input of every step,
             boxed with the base model's logical axes, so it is sharded exactly as in pretraining;
  base       made once per process by the batch source from `lora.base` (kind "run": an earlier run's
             newest parameters; "hf_llama": a Hugging Face directory; "none": the trainer's own random
             initialisation from `config.seed`, the same on every resume). `lora.base` is the pointer a
             checkpoint's config.json keeps to its base; `config.init_from` stays "none".
  evaluate   evaluators get ordinary parameters, every adapted model merged (`merged_params`), so
             they run the plain model and generation unchanged.

`export_hf_llama(workdir, out_dir)` merges a finished run's adapters into its base and writes the
Hugging Face LLaMA layout.
"""

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import traverse_util

from research.models.convert import save_hf_llama
from research.models.lora import init_lora, lora_targets, merge_lora
from research.parallel.mesh import make_mesh
from research.train import init_from
from research.train.checkpoint import Checkpointer
from research.train.evaluators import Evaluator
from research.train.step import step_layout
from research.train.task import Task, build_task

BASE, TRAINED, ADAPTERS = "lora_base", "lora_trained", "lora_adapters"
DATA, FROZEN = "data", "frozen"
BASE_KINDS = ("none", "run", "hf_llama")


def lora_enabled(config) -> bool:
    return bool(config.get("lora") and config.lora.enabled)


class AdaptedModel:
    """`model` reparametrised by LoRA: `init` and `apply` as a flax module's, over the parameter tree of
    the module docstring. Only `apply`, `init` and `config` are offered: training objectives use it;
    evaluators and generation get the plain model and `merged_params`."""

    def __init__(self, model, lora):
        self.model, self.lora = model, lora

    @property
    def config(self):
        return self.model.config

    def init(self, rng, *args, **kwargs) -> dict:
        params = self.model.init(jax.random.fold_in(rng, 0), *args, **kwargs)["params"]
        adapters = init_lora(jax.random.fold_in(rng, 1), params, rank=self.lora.rank,
                             patterns=tuple(self.lora.patterns))
        trained = set(lora_targets(params, self.lora.train_fully)) if self.lora.train_fully else set()
        flat = traverse_util.flatten_dict(params)
        parts = {BASE: {}, TRAINED: {}}
        for path, leaf in flat.items():
            parts[TRAINED if "/".join(path) in trained else BASE][path] = leaf
        parts = {name: traverse_util.unflatten_dict(part) for name, part in parts.items() if part}
        return {"params": {**parts, ADAPTERS: adapters}}

    def apply(self, variables, *args, **kwargs):
        merged = merge_adapted(variables["params"], self.lora, frozen=jax.lax.stop_gradient)
        return self.model.apply({**variables, "params": merged}, *args, **kwargs)


def adapted(model, config):
    """The model a trainer trains: `model` itself, or with LoRA on its `AdaptedModel`."""
    return AdaptedModel(model, config.lora) if lora_enabled(config) else model


def is_adapted(node) -> bool:
    return isinstance(node, dict) and BASE in node and ADAPTERS in node


def merge_adapted(params, lora, *, frozen=lambda tree: tree):
    """`params` with every adapted model's subtree replaced by its ordinary parameters: base and
    fully trained leaves joined, then each target W + (α/r)·A·B; `frozen` applied to the base first."""
    if is_adapted(params):
        whole = init_from.merged([frozen(params[BASE]), params.get(TRAINED, {})])
        return merge_lora(whole, params[ADAPTERS], alpha=lora.alpha, rank=lora.rank)
    if isinstance(params, dict):
        return {key: merge_adapted(value, lora, frozen=frozen) for key, value in params.items()}
    return params


def merged_params(params, config):
    """`params` as the plain models see them: every adapted model merged (LoRA on), else unchanged."""
    return merge_adapted(params, config.lora) if lora_enabled(config) else params


def split_base(params) -> tuple[dict, dict]:
    """(params without their "lora_base" subtrees, those subtrees alone), both nested like `params`."""
    flat = traverse_util.flatten_dict(params)
    kept = {path: leaf for path, leaf in flat.items() if BASE not in path}
    base = {path: leaf for path, leaf in flat.items() if BASE in path}
    return traverse_util.unflatten_dict(kept), traverse_util.unflatten_dict(base)


def adapter_optimizer(optimizer: optax.GradientTransformation, config) -> optax.GradientTransformation:
    """`optimizer` on the trainable leaves alone; the base gets zero updates and no optimizer state
    (LoRA on; `optimizer` itself with LoRA off)."""
    if not lora_enabled(config):
        return optimizer

    def init(params):
        return optimizer.init(split_base(params)[0])

    def update(grads, state, params=None):
        trained_grads, base_grads = split_base(grads)
        trained_params = None if params is None else split_base(params)[0]
        updates, state = optimizer.update(trained_grads, state, trained_params)
        return init_from.merged([updates, jax.tree.map(jnp.zeros_like, base_grads)]), state

    return optax.GradientTransformation(init, update)


def check_lora(config) -> None:
    """ValueError naming a `config.lora` field (or `init_from`) a LoRA run cannot take."""
    lora = config.lora
    if isinstance(lora.rank, bool) or not isinstance(lora.rank, int) or lora.rank < 1:
        raise ValueError(f"config field lora.rank: must be an int >= 1, got {lora.rank!r}")
    if not lora.alpha > 0:
        raise ValueError(f"config field lora.alpha: must be > 0, got {lora.alpha!r}")
    if lora.base.kind not in BASE_KINDS:
        raise ValueError(f"config field lora.base.kind: {lora.base.kind!r} is not one of {BASE_KINDS}")
    if lora.base.kind != "none" and not lora.base.path:
        raise ValueError(f"config field lora.base.path: empty, but lora.base.kind is {lora.base.kind!r}")
    if config.get("init_from") and config.init_from.kind != "none":
        raise ValueError("config field init_from.kind: a LoRA run keeps its base out of the train state and reads "
                         f"it from lora.base; set init_from.kind=none and lora.base.kind={config.init_from.kind!r}")


@dataclasses.dataclass(frozen=True)
class TrainableInit:
    """`init_state` of a LoRA Task: the trainer's own (`full`), its base split off the parameters."""

    full: Callable

    def __call__(self, rng, params=None):
        state = self.full(rng)
        return state.replace(params=split_base(state.params)[0])


def abstract_base(full_init_state):
    """The base subtrees of the parameters `full_init_state` makes, as boxed `ShapeDtypeStruct`s."""
    state = jax.eval_shape(full_init_state, jax.eval_shape(jax.random.key, 0))
    return split_base(state.params)[1]


def base_params(config, full_init_state, shardings):
    """The frozen base, placed with `shardings`: the trainer's own initialisation (`full_init_state`) from
    `config.seed` (the loop's init key), with the subtree `lora.base.into` of every base replaced by the
    parameters `lora.base` names (kind "run" or "hf_llama"; nothing replaced for "none")."""
    init_key = jax.random.fold_in(jax.random.key(config.seed), 0)  # as research/train/loop.py draws it
    base = jax.jit(lambda key: split_base(nn.meta.unbox(full_init_state(key).params))[1], out_shardings=shardings)(
        init_key)
    source = config.lora.base
    if source.kind == "none":
        return base
    flat = traverse_util.flatten_dict(base)
    nodes = {path[:path.index(BASE) + 1] for path in flat}
    for node in sorted(nodes):
        prefix = node + tuple(filter(None, source.get("into", "").split("/")))
        abstract = {path[len(prefix):]: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
                    for path, leaf in flat.items() if path[:len(prefix)] == prefix}
        if not abstract:
            raise ValueError(f"config field lora.base.into: {source.into!r} names no frozen parameter of "
                             f"{'/'.join(node)}")
        loaded = init_from.source_params(source, traverse_util.unflatten_dict(abstract))
        flat.update({prefix + path: leaf for path, leaf in traverse_util.flatten_dict(loaded).items()})
    return traverse_util.unflatten_dict(flat)


class WithFrozenBase:
    """A batch source whose batches carry the frozen base beside the trainer's batch."""

    def __init__(self, inner, base):
        self.inner, self.base = inner, base
        self.init = inner.init

    def next(self, train_state, source_state, rng):
        full = train_state.replace(params=init_from.merged([train_state.params, self.base]))
        batch, source_state = self.inner.next(full, source_state, rng)
        return {DATA: batch, FROZEN: self.base}, source_state

    def host_state(self):
        return self.inner.host_state()

    def set_host_state(self, position) -> None:
        self.inner.set_host_state(position)


def lora_task(task: Task, config) -> Task:
    """`task` with its base moved out of the train state into each step's batch (module docstring)."""
    if not lora_enabled(config):
        return task
    check_lora(config)
    lora = config.lora
    boxed_base = abstract_base(task.init_state)
    loaded = {}

    def base(shardings):
        if "base" not in loaded:  # batches and evaluators share one copy
            loaded["base"] = base_params(config, task.init_state, shardings)
        return loaded["base"]

    def train_step(state, batch, rng):
        full = state.replace(params=init_from.merged([state.params, batch[FROZEN]]))
        new, metrics = task.train_step(full, batch[DATA], rng)
        return new.replace(params=split_base(new.params)[0]), metrics

    def with_base(evaluators, shardings):
        def run_merged(evaluator):
            return lambda params: evaluator.run(merge_adapted(init_from.merged([params, base(shardings)]), lora))
        return {name: Evaluator(e.every, run_merged(e)) for name, e in evaluators.items()}

    return dataclasses.replace(
        task, init_state=TrainableInit(task.init_state), train_step=train_step,
        batch_spec={DATA: task.batch_spec, FROZEN: boxed_base},
        batches=lambda shardings: WithFrozenBase(task.batches(shardings[DATA]), base(shardings[FROZEN])),
        evaluators=lambda shardings: with_base(task.evaluators(shardings[DATA]), shardings[FROZEN]),
        workdir_evaluators=lambda shardings, workdir: with_base(task.workdir_evaluators(shardings[DATA], workdir),
                                                                shardings[FROZEN]))


def run_parameters(workdir) -> tuple[ml_collections.FrozenConfigDict, dict]:
    """(config, parameters) of the LoRA run in `workdir` as its adapted models see them: its newest
    trainable leaves joined with its base, on this process's first device (`merge_adapted` of them is
    the ordinary tree)."""
    config = ml_collections.FrozenConfigDict(json.loads((Path(workdir) / "config.json").read_text()))
    if not lora_enabled(config):
        raise ValueError(f"{workdir} holds no LoRA run (its config's lora.enabled is off)")
    one_device = ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1, expert=1, context=1))
    mesh = make_mesh(one_device, jax.devices()[:1])
    task = build_task(config, mesh)
    layout = step_layout(task, mesh)
    with Checkpointer(Path(workdir) / "checkpoints", read_only=True) as reader:
        trained = reader.restore_params(reader.newest_step(), layout.state.params)
    base = base_params(config, task.init_state.full, layout.batch_shardings[FROZEN])
    return config, init_from.merged([trained, base])


def export_hf_llama(workdir, out_dir, *, overwrite: bool = False) -> None:
    """Writes the LoRA run in `workdir` (SFT or LM: its model; DPO, PPO: its policy), adapters merged into
    the base, as a Hugging Face LLaMA."""
    config, params = run_parameters(workdir)
    merged = merge_adapted(params, config.lora)
    save_hf_llama(config.model, merged.get("policy", merged), out_dir, overwrite=overwrite)
