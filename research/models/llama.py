"""LLaMA-2 decoder (Touvron et al., 2023): pre-norm blocks of GQA attention and SwiGLU.

    h = x + Attention(RMSNorm(x));  out = h + FFN(RMSNorm(h))
    logits = RMSNorm(h_L) · W_out   (W_out untied from the input embedding)

FFN is SwiGLU, or with `config.moe` a mixture of experts (research/models/moe.py) in every
`moe.every_k_layers`-th layer (layers k−1, 2k−1, ...): the same decoder serves dense LLaMA-2 and
MoE models. With k > 1 the scanned unit is a group of k layers (k − 1 dense, then one MoE), so
the stacked parameters are `layers/block_<j>` with a leading axis of L / k groups.

Context parallelism (`attention_impl="ring"` on a mesh with a `context` axis): the model permutes
its tokens, positions and segment ids into zig-zag order once at the input and the final hidden
states back before the output head, so every layer's ring attention runs without reordering and
the model's inputs and logits stay in sequence order.

With `scan_layers` (the default for training) the blocks are one `nn.scan`: block
parameters are stacked along a leading `layers` axis and compile time does not grow
with depth (on CPU devices the scan is unrolled when compiled: `scanned_blocks`). Without
it the blocks are unrolled (`layers_0`, `layers_1`, ...), which decoding prefers: no
per-step slicing of stacked weights (`unstack_layers` converts; `generate` does so
itself). For decoding, the KV cache is an explicit pytree `{"k", "v": [layers, batch, max_len, kv_heads, head_dim], "lengths": [batch]}`
made by `init_cache`; `lengths[b]` counts the valid entries of row b. Unrolled, the model also
takes `"k"`, `"v"` as tuples of per-layer arrays `[batch, max_len, kv_heads, head_dim]`
(`per_layer_cache`) and returns them so: a decoding loop that carries that form updates each
layer's cache in place, where the stacked form is sliced and restacked (copied) on every step.
A tree of candidate tokens (Medusa, research/decoding/medusa.py) is verified in one pass
with a `tree_mask`.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from research.models.family import ModelFamily
from research.models.layers import Attention, RMSNorm, SwiGLU, llama_hidden_dim, param_with_axes, uses_ring_attention
from research.models.llama_checks import validate_llama_experiment
from research.models.moe import MOE_COLLECTION, MoeFeedForward
from research.parallel.mesh import constrain, context_parallel_size
from research.parallel.ring_attention import zigzag_order

ACTIVATION_AXES = ("batch", "seq", None)  # the residual stream [batch, seq, dim]: model width replicated


def hidden_dim_of(config: ml_collections.ConfigDict) -> int:
    """The FFN width: `config.hidden_dim`, or Meta's rule when it is None."""
    if config.hidden_dim is not None:
        return config.hidden_dim
    return llama_hidden_dim(config.dim, config.ffn_dim_multiplier, config.multiple_of)


def moe_every(config) -> int:
    """Every how many layers one is a mixture of experts; 0 for a dense model."""
    moe = config.get("moe")
    return 0 if moe is None else moe.every_k_layers


def is_moe_layer(config, layer: int) -> bool:
    every = moe_every(config)
    return every > 0 and (layer + 1) % every == 0


class Block(nn.Module):
    """One decoder layer; `scan`-compatible signature (carry, per-layer cache).

    Pre-norm (LLaMA):                 h = x + D(Attention(RMSNorm(x)));  out = h + D(FFN(RMSNorm(h)))
    `config.swin_norm` (Chameleon):   h = x + D(RMSNorm(Attention(x)));  out = h + D(RMSNorm(FFN(h)))
    D is dropout at rate `config.dropout` (absent: 0), active only when the caller passes
    `rngs={"dropout": key}`; `config.qk_norm` adds Chameleon's QK-Norm to the attention.
    """

    config: Any
    moe_layer: bool = False
    mesh: Any = None

    @nn.compact
    def __call__(self, x, layer_cache, positions, segment_ids, tree_mask=None):
        c = self.config
        dtype = jnp.dtype(c.dtype)
        swin_norm, rate = c.get("swin_norm", False), c.get("dropout", 0.0)
        attention_norm = RMSNorm(c.norm_eps, dtype, name="attention_norm")
        ffn_norm = RMSNorm(c.norm_eps, dtype, name="ffn_norm")
        dropout = nn.Dropout(rate, deterministic=rate == 0.0 or not self.has_rng("dropout"))
        attn_out, new_cache = Attention(
            num_heads=c.num_heads, num_kv_heads=c.num_kv_heads, head_dim=c.dim // c.num_heads,
            rope_theta=c.rope_theta, attention_impl=c.attention_impl, dtype=dtype, mesh=self.mesh,
            qk_norm=c.get("qk_norm", False), name="attention",
        )(x if swin_norm else attention_norm(x), positions, segment_ids, layer_cache, tree_mask)
        h = x + dropout(attention_norm(attn_out) if swin_norm else attn_out)
        if self.moe_layer:
            ffn = MoeFeedForward(c.moe, dtype, self.mesh, name="moe")
        else:
            ffn = SwiGLU(hidden_dim_of(c), dtype, self.mesh, name="ffn")
        out = h + dropout(ffn_norm(ffn(h)) if swin_norm else ffn(ffn_norm(h)))
        return constrain(out.astype(x.dtype), ACTIVATION_AXES, self.mesh), new_cache


class BlockGroup(nn.Module):
    """`moe.every_k_layers` = k consecutive layers, k − 1 dense and the last one MoE: the unit that
    is scanned when MoE layers are interleaved. The per-layer cache arrives as `[k, ...]`."""

    config: Any
    mesh: Any = None

    @nn.compact
    def __call__(self, x, layer_cache, positions, segment_ids, tree_mask=None):
        every = moe_every(self.config)
        new_caches = []
        for j in range(every):
            cache_j = None if layer_cache is None else (layer_cache[0][j], layer_cache[1][j])
            x, new_cache = Block(self.config, j == every - 1, self.mesh, name=f"block_{j}")(
                x, cache_j, positions, segment_ids, tree_mask)
            new_caches.append(new_cache)
        return x, None if layer_cache is None else stacked_caches(new_caches)


REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def runs_on_cpu(mesh) -> bool:
    """Whether the model runs on CPU devices: the mesh's, or without a mesh the default ones."""
    devices = jax.devices() if mesh is None else mesh.devices.flat
    return next(iter(devices)).platform == "cpu"


def scanned_blocks(config, mesh, name: str):
    """The layers, rematerialised per `config.remat`, as one `nn.scan`: over `Block`s, or over
    `BlockGroup`s of `moe.every_k_layers` layers when MoE layers are interleaved with dense ones.

    On CPU devices the scan is unrolled (`lax.scan(unroll=length)`): the parameters keep their stacked
    layout and the same values, but XLA:CPU runs no while loop, so it neither zero-fills, copies and
    writes into stacked per-layer residual buffers nor slices them back in the backward pass (about a
    tenth of a training step at the tiny shape). Accelerators keep the rolled loop: compile time
    stays flat in depth."""
    every = moe_every(config)
    if every > 1:
        unit, args, length = BlockGroup, (config, mesh), config.num_layers // every
    else:
        unit, args, length = Block, (config, every == 1, mesh), config.num_layers
    if config.remat != "none":
        unit = nn.remat(unit, policy=REMAT_POLICIES[config.remat], prevent_cse=False)
    return nn.scan(
        unit,
        variable_axes={"params": 0, MOE_COLLECTION: 0},
        split_rngs={"params": True, "jitter": True, "dropout": True},
        in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast),
        length=length,
        unroll=length if runs_on_cpu(mesh) else 1,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )(*args, name=name)


def scanned_cache(config, layer_cache):
    """The per-layer cache `[L, ...]` as the scan consumes it: `[L / k, k, ...]` for groups of k."""
    every = moe_every(config)
    if layer_cache is None or every <= 1:
        return layer_cache
    return tuple(c.reshape(c.shape[0] // every, every, *c.shape[1:]) for c in layer_cache)


def unrolled_blocks(config, mesh, x, layer_cache, positions, segment_ids, tree_mask=None):
    """The blocks one after another as `layers_<i>`; the per-layer caches restacked, or kept as
    tuples of per-layer arrays when they came as such (`per_layer_cache`)."""
    block = nn.remat(Block, policy=REMAT_POLICIES[config.remat], prevent_cse=True) if config.remat != "none" else Block
    new_caches = []
    for i in range(config.num_layers):
        cache_i = None if layer_cache is None else (layer_cache[0][i], layer_cache[1][i])
        x, new_cache = block(config, is_moe_layer(config, i), mesh, name=f"layers_{i}")(
            x, cache_i, positions, segment_ids, tree_mask)
        new_caches.append(new_cache)
    if layer_cache is None:
        return x, None
    if isinstance(layer_cache[0], tuple):
        return x, tuple(tuple(cache[i] for cache in new_caches) for i in range(2))
    return x, stacked_caches(new_caches)


def stacked_caches(per_layer):
    """Per-layer (k, v) caches, one after another, stacked into (k, v) with a leading layer axis."""
    return tuple(jnp.stack([cache[i] for cache in per_layer]) for i in range(2))


def unstack_layers(params):
    """Stacked block parameters `{"layers": [L, ...]}` → `{"layers_0": ..., "layers_{L-1}": ...}`
    (groups `{"layers": {"block_<j>": [L/k, ...]}}` → layer g·k + j)."""
    stacked = params["layers"]
    rest = {k: v for k, v in params.items() if k != "layers"}
    if "block_0" in stacked:
        every = len(stacked)
        groups = jax.tree.leaves(stacked)[0].shape[0]
        layers = {f"layers_{g * every + j}": jax.tree.map(lambda p, g=g: p[g], stacked[f"block_{j}"])
                  for g in range(groups) for j in range(every)}
    else:
        num_layers = jax.tree.leaves(stacked)[0].shape[0]
        layers = {f"layers_{i}": jax.tree.map(lambda p, i=i: p[i], stacked) for i in range(num_layers)}
    return {**rest, **layers}


class Llama(nn.Module):
    """The LLaMA-2 decoder. `config` is `config.model` (see configs/llama2.py).

    `mesh` (optional) is the device mesh of a sharded run; the layers that partition work by hand
    (ring attention over `context`, experts over `expert`) use it.
    """

    config: Any
    mesh: Any = None

    @nn.compact
    def __call__(self, tokens, *, positions=None, segment_ids=None, cache=None, decode=False, tree_mask=None,
                 return_hidden=False):
        """Logits `[batch, seq, vocab]` (float32) for int tokens `[batch, seq]`.

        positions default to 0.. (training) or to `cache["lengths"]` onwards (decoding).
        segment_ids (training only) keep packed documents from attending to each other.
        tree_mask (decoding only; `[seq, seq]` or `[batch, seq, seq]` bool) verifies a token tree:
        token i sees the cache and the tokens n with tree_mask[i, n] (its ancestors and itself);
        the tokens fill the cache slots from `cache["lengths"]` on, root first, and `positions`
        (required) are the cache length plus each token's depth (research/models/layers.py).
        With `return_hidden=True` the output is `(logits, h)`, h `[batch, seq, dim]` the final
        normed hidden state that the output head reads. With `decode=True` returns
        `(output, new_cache)`; the new cache's lengths count the slots written.
        """
        c = self.config
        dtype = jnp.dtype(c.dtype)
        if decode and cache is None:
            raise ValueError("decode=True needs a cache; make one with init_cache(config, batch, max_len)")
        if tree_mask is not None and (not decode or positions is None):
            raise ValueError("tree_mask verifies a token tree after a KV cache: it needs decode=True and the "
                             "tree's positions (cache length + depth)")
        if tree_mask is not None:
            tree_mask = jnp.broadcast_to(tree_mask, (tokens.shape[0], tokens.shape[1], tokens.shape[1]))
        if positions is None:
            offset = cache["lengths"][:, None] if decode else 0
            positions = offset + jnp.arange(tokens.shape[1], dtype=jnp.int32)[None, :]
            positions = jnp.broadcast_to(positions, tokens.shape)
        embedding = param_with_axes(
            self, "embed", nn.initializers.normal(stddev=1.0), (c.vocab_size, c.dim), ("vocab", "embed"))
        ring = uses_ring_attention(c.attention_impl, self.mesh) and not decode
        if ring:
            order = zigzag_order(tokens.shape[1], context_parallel_size(self.mesh))
            tokens, positions = tokens[:, order], positions[:, order]
            segment_ids = None if segment_ids is None else segment_ids[:, order]
        x = constrain(jnp.take(embedding, tokens, axis=0).astype(dtype), ACTIVATION_AXES, self.mesh)
        layer_cache = (cache["k"], cache["v"]) if decode else None
        if c.scan_layers and decode and isinstance(cache["k"], tuple):
            raise ValueError("a per-layer cache (tuples of arrays) needs model.scan_layers=False; "
                             "pass the stacked cache of init_cache to a scanned model")
        if c.scan_layers:
            x, new_layer_cache = scanned_blocks(c, self.mesh, "layers")(
                x, scanned_cache(c, layer_cache), positions, segment_ids, tree_mask)
            if new_layer_cache is not None:
                new_layer_cache = tuple(k.reshape(-1, *k.shape[-4:]) for k in new_layer_cache)
        else:
            x, new_layer_cache = unrolled_blocks(c, self.mesh, x, layer_cache, positions, segment_ids, tree_mask)
        if ring:
            x = x[:, np.argsort(order)]
        x = RMSNorm(c.norm_eps, dtype, name="norm")(x)
        w_out = param_with_axes(
            self, "lm_head", nn.initializers.normal(stddev=c.dim**-0.5), (c.dim, c.vocab_size), ("embed", "vocab"))
        logits = jnp.einsum("bsd,dv->bsv", x, w_out.astype(dtype), preferred_element_type=jnp.float32)
        logits = constrain(logits, ("batch", "seq", "vocab"), self.mesh)
        output = (logits, x) if return_hidden else logits
        if not decode:
            return output
        k, v = new_layer_cache
        return output, {"k": k, "v": v, "lengths": positions[:, 0] + tokens.shape[1]}


def init_cache(config, batch_size: int, max_len: int, dtype=None):
    """An empty KV cache: zeros `[layers, batch, max_len, kv_heads, head_dim]` and lengths 0."""
    head_dim = config.dim // config.num_heads
    shape = (config.num_layers, batch_size, max_len, config.num_kv_heads, head_dim)
    dtype = jnp.dtype(config.dtype if dtype is None else dtype)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
            "lengths": jnp.zeros((batch_size,), jnp.int32)}


def per_layer_cache(cache):
    """`cache` with "k" and "v" split along the layer axis into tuples of `[batch, max_len, kv_heads,
    head_dim]` arrays, the form an unrolled model updates in place."""
    return {**cache, "k": tuple(cache["k"]), "v": tuple(cache["v"])}


def init_tokens(config) -> tuple:
    """What `Llama.init` traces: one row of one token (parameter shapes do not depend on it)."""
    return (jax.ShapeDtypeStruct((1, 1), jnp.int32),)


FAMILY = ModelFamily(build=Llama, init_inputs=init_tokens, validate=validate_llama_experiment)
