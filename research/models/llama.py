"""LLaMA-2 decoder (Touvron et al., 2023): pre-norm blocks of GQA attention and SwiGLU.

    h = x + Attention(RMSNorm(x));  out = h + SwiGLU(RMSNorm(h))
    logits = RMSNorm(h_L) · W_out   (W_out untied from the input embedding)

With `scan_layers` (the default for training) the blocks are one `nn.scan`: block
parameters are stacked along a leading `layers` axis and compile time does not grow
with depth. Without it the blocks are unrolled (`layers_0`, `layers_1`, ...), which
decoding prefers: no per-step slicing of stacked weights (`unstack_layers` converts;
`generate` does so itself). For decoding, the KV cache is
an explicit pytree `{"k", "v": [layers, batch, max_len, kv_heads, head_dim], "lengths": [batch]}`
made by `init_cache`; `lengths[b]` counts the valid entries of row b.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from research.models.layers import Attention, RMSNorm, SwiGLU, llama_hidden_dim, param_with_axes


def hidden_dim_of(config: ml_collections.ConfigDict) -> int:
    """The FFN width: `config.hidden_dim`, or Meta's rule when it is None."""
    if config.hidden_dim is not None:
        return config.hidden_dim
    return llama_hidden_dim(config.dim, config.ffn_dim_multiplier, config.multiple_of)


class Block(nn.Module):
    """One pre-norm decoder layer; `scan`-compatible signature (carry, per-layer cache)."""

    config: Any

    @nn.compact
    def __call__(self, x, layer_cache, positions, segment_ids):
        c = self.config
        dtype = jnp.dtype(c.dtype)
        attn_out, new_cache = Attention(
            num_heads=c.num_heads, num_kv_heads=c.num_kv_heads, head_dim=c.dim // c.num_heads,
            rope_theta=c.rope_theta, attention_impl=c.attention_impl, dtype=dtype, name="attention",
        )(RMSNorm(c.norm_eps, dtype, name="attention_norm")(x), positions, segment_ids, layer_cache)
        h = x + attn_out
        out = h + SwiGLU(hidden_dim_of(c), dtype, name="ffn")(RMSNorm(c.norm_eps, dtype, name="ffn_norm")(h))
        return out.astype(x.dtype), new_cache


REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def scanned_blocks(config, num_layers: int, name: str):
    """`num_layers` copies of `Block`, rematerialised per `config.remat`, as one `nn.scan`."""
    block = Block
    if config.remat != "none":
        block = nn.remat(Block, policy=REMAT_POLICIES[config.remat], prevent_cse=False)
    return nn.scan(
        block,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=(0, nn.broadcast, nn.broadcast),
        length=num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )(config, name=name)


def unrolled_blocks(config, x, layer_cache, positions, segment_ids):
    """The blocks one after another as `layers_<i>`; the per-layer caches restacked."""
    block = nn.remat(Block, policy=REMAT_POLICIES[config.remat], prevent_cse=True) if config.remat != "none" else Block
    new_caches = []
    for i in range(config.num_layers):
        cache_i = None if layer_cache is None else (layer_cache[0][i], layer_cache[1][i])
        x, new_cache = block(config, name=f"layers_{i}")(x, cache_i, positions, segment_ids)
        new_caches.append(new_cache)
    if layer_cache is None:
        return x, None
    return x, tuple(jnp.stack([c[j] for c in new_caches]) for j in range(2))


def unstack_layers(params):
    """Stacked block parameters `{"layers": [L, ...]}` → `{"layers_0": ..., "layers_{L-1}": ...}`."""
    stacked = params["layers"]
    num_layers = jax.tree.leaves(stacked)[0].shape[0]
    rest = {k: v for k, v in params.items() if k != "layers"}
    return {**rest, **{f"layers_{i}": jax.tree.map(lambda p, i=i: p[i], stacked) for i in range(num_layers)}}


class Llama(nn.Module):
    """The LLaMA-2 decoder. `config` is `config.model` (see configs/llama2.py)."""

    config: Any

    @nn.compact
    def __call__(self, tokens, *, positions=None, segment_ids=None, cache=None, decode=False):
        """Logits `[batch, seq, vocab]` (float32) for int tokens `[batch, seq]`.

        positions default to 0.. (training) or to `cache["lengths"]` onwards (decoding).
        segment_ids (training only) keep packed documents from attending to each other.
        With `decode=True` returns `(logits, new_cache)`.
        """
        c = self.config
        dtype = jnp.dtype(c.dtype)
        if decode and cache is None:
            raise ValueError("decode=True needs a cache; make one with init_cache(config, batch, max_len)")
        if positions is None:
            offset = cache["lengths"][:, None] if decode else 0
            positions = offset + jnp.arange(tokens.shape[1], dtype=jnp.int32)[None, :]
            positions = jnp.broadcast_to(positions, tokens.shape)
        embedding = param_with_axes(
            self, "embed", nn.initializers.normal(stddev=1.0), (c.vocab_size, c.dim), ("vocab", "embed"))
        x = jnp.take(embedding, tokens, axis=0).astype(dtype)
        layer_cache = (cache["k"], cache["v"]) if decode else None
        if c.scan_layers:
            x, new_layer_cache = scanned_blocks(c, c.num_layers, "layers")(x, layer_cache, positions, segment_ids)
        else:
            x, new_layer_cache = unrolled_blocks(c, x, layer_cache, positions, segment_ids)
        x = RMSNorm(c.norm_eps, dtype, name="norm")(x)
        w_out = param_with_axes(
            self, "lm_head", nn.initializers.normal(stddev=c.dim**-0.5), (c.dim, c.vocab_size), ("embed", "vocab"))
        logits = jnp.einsum("bsd,dv->bsv", x, w_out.astype(dtype), preferred_element_type=jnp.float32)
        if not decode:
            return logits
        k, v = new_layer_cache
        return logits, {"k": k, "v": v, "lengths": positions[:, -1] + 1}


def init_cache(config, batch_size: int, max_len: int, dtype=None):
    """An empty KV cache: zeros `[layers, batch, max_len, kv_heads, head_dim]` and lengths 0."""
    head_dim = config.dim // config.num_heads
    shape = (config.num_layers, batch_size, max_len, config.num_kv_heads, head_dim)
    dtype = jnp.dtype(config.dtype if dtype is None else dtype)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
            "lengths": jnp.zeros((batch_size,), jnp.int32)}
