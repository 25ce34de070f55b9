"""Config checks of the LLaMA family (dense and MoE decoders): each raises `ValueError` naming the field.

Run by `research.config.load` (through the family) before any model is built or compiled.
"""

import jax.numpy as jnp

from research.models.family import require
from research.models.layers import ATTENTION_IMPLS
from research.models.moe import check_moe_config


def validate_llama(model, seq_len: int) -> None:
    """The decoder's own fields, and that `seq_len` fits its positions."""
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


def validate_llama_experiment(config) -> None:
    """`config.model` of a LLaMA-family model against the experiment's sequence length and mesh."""
    validate_llama(config.model, config.train.seq_len)
    validate_context_parallel(config.model, config.train.seq_len, config.mesh)
    if config.model.get("moe") is not None:
        validate_moe(config.model, config.mesh)
