"""Validation of experiment configs: each check raises `ValueError` naming the field.

Runs in `research.config.load`, before any model is built or compiled: the sections every
config has here, the model's through its family (`ModelFamily.validate`).
"""

import math

import ml_collections

from research.models import family_of
from research.models.family import require
from research.parallel.mesh import CONFIG_MESH_AXES

REQUIRED_SECTIONS = ("model", "trainer", "optimizer", "data", "mesh", "seed", "train")
REQUIRED_TRAIN_FIELDS = ("steps", "batch_size", "seq_len", "log_every", "eval_every", "checkpoint_every")
INIT_FROM_KINDS = ("none", "run", "hf_llama")  # what research/train/init_from.py can start from
INIT_FROM_PARTS = ("params", "all")


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks the sections every config has, then the model through its family."""
    for section in REQUIRED_SECTIONS:
        require(section in config, section, "missing")
    validate_finite(config)
    validate_train(config.train)
    validate_mesh(config.mesh)
    validate_optimizer(config.optimizer)
    family_of(config.model).validate(config)
    if "init_from" in config:
        validate_init_from(config.init_from)
    if "evals" in config:
        validate_evals(config.evals)
    if "tokenizer" in config.data:
        validate_data(config.data, config.model)
    if "parallel" in config:
        validate_parallel(config.parallel, config.mesh)


def validate_finite(config, prefix: str = "") -> None:
    """Every float field is a finite number (a NaN or infinite learning rate trains nothing)."""
    for key, value in config.items():
        if isinstance(value, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
            validate_finite(value, f"{prefix}{key}.")
        elif isinstance(value, float):
            require(math.isfinite(value), f"{prefix}{key}", f"must be a finite number, got {value}")


def validate_train(train) -> None:
    for field in REQUIRED_TRAIN_FIELDS:
        require(field in train, f"train.{field}", "missing")
    for field in ("steps", "batch_size", "seq_len", "log_every"):
        require(train[field] > 0, f"train.{field}", f"must be positive, got {train[field]}")
    for field in ("eval_every", "checkpoint_every"):
        require(train[field] >= 0, f"train.{field}", f"must be >= 0 (0 = never), got {train[field]}")
    require(train.get("max_checkpoints", 1) >= 1, "train.max_checkpoints",
            f"must be >= 1 (the newest checkpoint is what a run resumes from), got {train.get('max_checkpoints')}")
    require(train.get("checkpoint_every_minutes", 0) >= 0, "train.checkpoint_every_minutes",
            f"must be >= 0 (0 = by steps only), got {train.get('checkpoint_every_minutes')}")
    profile = tuple(train.get("profile_steps", ()))
    require(not profile or (len(profile) == 2 and 0 <= profile[0] < profile[1]), "train.profile_steps",
            f"must be () or (first, last) with 0 <= first < last, got {profile}")
    accum = train.get("grad_accum_steps", 1)
    require(accum >= 1, "train.grad_accum_steps", f"must be >= 1, got {accum}")
    require(train.batch_size % accum == 0, "train.grad_accum_steps",
            f"batch_size {train.batch_size} is not divisible by grad_accum_steps {accum}")
    per_device = train.get("micro_batch_per_device", 0)
    require(per_device >= 0, "train.micro_batch_per_device", f"must be >= 0 (0 = grad_accum_steps decides), got "
            f"{per_device}")
    require(not per_device or accum == 1, "train.micro_batch_per_device",
            f"{per_device} derives the micro-batches from the device count; it excludes train.grad_accum_steps "
            f"{accum} (set one of them)")


def validate_mesh(mesh) -> None:
    unknown = set(mesh.keys()) - set(CONFIG_MESH_AXES)
    require(not unknown, "mesh", f"unknown axes {sorted(unknown)}; known axes are {CONFIG_MESH_AXES}")
    for axis in CONFIG_MESH_AXES:
        size = mesh.get(axis, 1)
        require(size == -1 or size >= 1, f"mesh.{axis}", f"must be -1 or a positive size, got {size}")
    require(sum(mesh.get(a, 1) == -1 for a in CONFIG_MESH_AXES) <= 1, "mesh", "at most one axis may be -1")


def validate_parallel(parallel, mesh) -> None:
    from research.parallel.grad_sync import GRAD_REDUCE_METHODS

    require(parallel.grad_reduce in GRAD_REDUCE_METHODS, "parallel.grad_reduce",
            f"{parallel.grad_reduce!r} is not one of {GRAD_REDUCE_METHODS}")
    if parallel.grad_reduce != "auto":
        sharded = {a: mesh.get(a, 1) for a in ("fsdp", "tensor", "expert", "context") if mesh.get(a, 1) != 1}
        require(not sharded, "parallel.grad_reduce",
                f"{parallel.grad_reduce!r} needs a purely data-parallel mesh, but mesh has {sharded}")


def validate_optimizer(optimizer) -> None:
    for field in ("learning_rate", "weight_decay"):
        if field in optimizer:
            require(optimizer[field] >= 0, f"optimizer.{field}", f"must be >= 0, got {optimizer[field]}")


def validate_init_from(init_from) -> None:
    """Where the run's first state comes from (research/train/init_from.py)."""
    require(init_from.kind in INIT_FROM_KINDS, "init_from.kind", f"{init_from.kind!r} is not one of {INIT_FROM_KINDS}")
    require(init_from.parts in INIT_FROM_PARTS, "init_from.parts",
            f"{init_from.parts!r} is not one of {INIT_FROM_PARTS}")
    require((init_from.kind == "none") == (not init_from.path), "init_from.path",
            "set it (a run's workdir or a Hugging Face directory) exactly when init_from.kind is not 'none'")
    require(init_from.kind == "run" or init_from.parts == "params", "init_from.parts",
            "'all' (optimizer state, step and data position too) needs init_from.kind 'run'")
    extra = init_from.get("extra", {})
    require(init_from.parts == "params" or not (init_from.get("into", "") or extra), "init_from.parts",
            "'all' continues a whole run: it takes neither init_from.into nor init_from.extra")
    places = {"init_from.into": init_from.get("into", "")} if init_from.kind != "none" else {}
    for name, source in extra.items():
        field = f"init_from.extra.{name}"
        require(source.get("kind") in INIT_FROM_KINDS[1:], f"{field}.kind",
                f"{source.get('kind')!r} is not one of {INIT_FROM_KINDS[1:]}")
        require(bool(source.get("path")), f"{field}.path", "set it (a run's workdir or a Hugging Face directory)")
        places[f"{field}.into"] = source.get("into", "")
    for field, into in places.items():
        for other, other_into in places.items():
            nested = not into or (other_into + "/").startswith(into.rstrip("/") + "/")
            require(field == other or not nested, field,
                    f"{into!r} overlaps {other} {other_into!r}: each source fills its own part of the parameters")


def validate_evals(evals) -> None:
    """Each evaluator (research/train/evaluators.py) runs every `every` steps (0: only at the end)."""
    for name, evaluator in evals.items():
        require("every" in evaluator, f"evals.{name}.every", "missing")
        require(evaluator.every >= 0, f"evals.{name}.every", f"must be >= 0 (0 = at the end only), got {evaluator.every}")


def validate_data(data, model) -> None:
    require(data.tokenizer in ("byte", "sentencepiece"), "data.tokenizer",
            f"{data.tokenizer!r} is not 'byte' or 'sentencepiece'")
    if data.tokenizer == "byte":
        require(model.vocab_size >= 259, "model.vocab_size",
                f"the byte tokenizer needs at least 259 ids, got {model.vocab_size}")
    else:
        require(data.vocab_size == model.vocab_size, "data.vocab_size",
                f"{data.vocab_size} differs from model.vocab_size {model.vocab_size}")
