"""Validation of experiment configs: each check raises `ValueError` naming the field.

Runs in `research.config.load`, before any model is built or compiled.
"""

import jax.numpy as jnp
import ml_collections

REQUIRED_SECTIONS = ("model", "trainer", "optimizer", "data", "mesh", "seed", "train")
REQUIRED_TRAIN_FIELDS = ("steps", "batch_size", "seq_len", "log_every", "eval_every", "checkpoint_every")
MESH_AXES = ("data", "fsdp", "tensor", "expert", "context")  # research/parallel/mesh.py
ATTENTION_IMPLS = ("xla", "pallas", "cudnn", "ring")  # research/models/layers.py


def require(condition: bool, field: str, problem: str) -> None:
    if not condition:
        raise ValueError(f"config field {field}: {problem}")


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks the sections every config has, then those of the model family present."""
    for section in REQUIRED_SECTIONS:
        require(section in config, section, "missing")
    validate_train(config.train)
    validate_mesh(config.mesh)
    validate_optimizer(config.optimizer)
    if "num_heads" in config.model:
        validate_llama(config.model, config.train.seq_len)
        validate_context_parallel(config.model, config.train.seq_len, config.mesh)
    if config.model.get("moe") is not None:
        validate_moe(config.model, config.mesh)
    if "tokenizer" in config.data:
        validate_data(config.data, config.model)
    if "parallel" in config:
        validate_parallel(config.parallel, config.mesh)


def validate_train(train) -> None:
    for field in REQUIRED_TRAIN_FIELDS:
        require(field in train, f"train.{field}", "missing")
    for field in ("steps", "batch_size", "seq_len", "log_every"):
        require(train[field] > 0, f"train.{field}", f"must be positive, got {train[field]}")
    for field in ("eval_every", "checkpoint_every"):
        require(train[field] >= 0, f"train.{field}", f"must be >= 0 (0 = never), got {train[field]}")
    accum = train.get("grad_accum_steps", 1)
    require(accum >= 1, "train.grad_accum_steps", f"must be >= 1, got {accum}")
    require(train.batch_size % accum == 0, "train.grad_accum_steps",
            f"batch_size {train.batch_size} is not divisible by grad_accum_steps {accum}")


def validate_mesh(mesh) -> None:
    unknown = set(mesh.keys()) - set(MESH_AXES)
    require(not unknown, "mesh", f"unknown axes {sorted(unknown)}; known axes are {MESH_AXES}")
    for axis in MESH_AXES:
        size = mesh.get(axis, 1)
        require(size == -1 or size >= 1, f"mesh.{axis}", f"must be -1 or a positive size, got {size}")
    require(sum(mesh.get(a, 1) == -1 for a in MESH_AXES) <= 1, "mesh", "at most one axis may be -1")


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


def validate_llama(model, seq_len: int) -> None:
    for field in ("vocab_size", "dim", "num_layers", "num_heads", "num_kv_heads"):
        require(model[field] > 0, f"model.{field}", f"must be positive, got {model[field]}")
    require(model.dim % model.num_heads == 0, "model.num_heads",
            f"dim {model.dim} is not divisible by num_heads {model.num_heads}")
    require(model.num_heads % model.num_kv_heads == 0, "model.num_kv_heads",
            f"num_heads {model.num_heads} is not divisible by num_kv_heads {model.num_kv_heads}")
    require((model.dim // model.num_heads) % 2 == 0, "model.num_heads",
            f"head_dim {model.dim // model.num_heads} must be even for RoPE")
    require(model.hidden_dim is None or model.hidden_dim > 0, "model.hidden_dim",
            f"must be None (Meta's rule) or positive, got {model.hidden_dim}")
    require(seq_len <= model.max_seq_len, "train.seq_len",
            f"{seq_len} exceeds model.max_seq_len {model.max_seq_len}")
    require(model.remat in ("none", "full", "dots"), "model.remat", f"{model.remat!r} not in none/full/dots")
    require(model.get("attention_impl", "xla") in ATTENTION_IMPLS, "model.attention_impl",
            f"{model.get('attention_impl')!r} is not one of {ATTENTION_IMPLS}")
    try:
        jnp.dtype(model.dtype)
    except TypeError:
        raise ValueError(f"config field model.dtype: {model.dtype!r} is not a dtype") from None


def validate_context_parallel(model, seq_len: int, mesh) -> None:
    """Ring attention cuts each sequence into 2 × context zig-zag chunks."""
    context = mesh.get("context", 1)
    if model.get("attention_impl") == "ring" and context > 1:
        require(seq_len % (2 * context) == 0, "train.seq_len",
                f"{seq_len} is not divisible by 2 × mesh.context = {2 * context} (ring attention's zig-zag chunks)")


def validate_moe(model, mesh) -> None:
    """The mixture-of-experts fields (research/models/moe.py) and how they meet the layers and the mesh."""
    from research.models.moe import check_moe_config

    moe = model.moe
    expert_axis = mesh.get("expert", 1)
    try:
        check_moe_config(moe, expert_axis if expert_axis > 0 else 1)
    except ValueError as error:
        raise ValueError(f"config field model.{error}") from None
    require(moe.every_k_layers >= 1, "model.moe.every_k_layers", f"must be >= 1, got {moe.every_k_layers}")
    require(model.num_layers % moe.every_k_layers == 0, "model.moe.every_k_layers",
            f"num_layers {model.num_layers} is not divisible by every_k_layers {moe.every_k_layers}")
    for field in ("load_balancing_weight", "z_loss_weight"):
        require(moe[field] >= 0, f"model.moe.{field}", f"must be >= 0, got {moe[field]}")


def validate_data(data, model) -> None:
    require(data.tokenizer in ("byte", "sentencepiece"), "data.tokenizer",
            f"{data.tokenizer!r} is not 'byte' or 'sentencepiece'")
    if data.tokenizer == "byte":
        require(model.vocab_size >= 259, "model.vocab_size",
                f"the byte tokenizer needs at least 259 ids, got {model.vocab_size}")
    else:
        require(data.vocab_size == model.vocab_size, "data.vocab_size",
                f"{data.vocab_size} differs from model.vocab_size {model.vocab_size}")
