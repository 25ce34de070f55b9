"""Medusa heads (Cai et al., 2024): K extra decoding heads on the LLaMA decoder's final hidden state.

Head k (k = 0, ..., K−1) reads the normed hidden state h_t that the base LM head reads at position
t and predicts the token at t + k + 2 (the base LM head predicts t + 1):

    r_k = h + SiLU(h·W_k + b_k)        a residual block, W_k [d, d] and b_k [d] zero-initialised
    logits_k = r_k · U_k                U_k [d, V]: the base model's lm_head (`shared_lm_head`) or the head's own

At initialisation r_k = h, so every head predicts what the base model predicts; own LM heads start
as copies of the base's lm_head.

`MedusaLM(config)` is the model family "medusa": `config` is a LLaMA `config.model` with a
`medusa` section (`num_heads` K, `shared_lm_head`). Its parameters are {"backbone": the LLaMA
decoder's, "medusa": the heads'}; it returns the base logits `[b, s, V]` and the heads' logits
`[K, b, s, V]` (and the new cache when decoding, as `Llama` does).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from research.models.family import ModelFamily, require
from research.models.layers import param_with_axes
from research.models.llama import Llama, init_tokens
from research.models.llama_checks import validate_llama_experiment


def copies_of(base_lm_head):
    """A parameter initialiser: `base_lm_head [d, V]` repeated to the shape asked for `[K, d, V]`."""
    return lambda rng, shape, dtype=jnp.float32: jnp.broadcast_to(base_lm_head.astype(dtype), shape)


class MedusaHeads(nn.Module):
    """The K heads on hidden states `[b, s, d]`: logits `[K, b, s, V]` (float32), the formula above.

    `base_lm_head [d, V]` is the base model's output matrix: every head's LM head when
    `shared_lm_head`, otherwise the initial value of each head's own.
    """

    num_heads: int
    shared_lm_head: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden, base_lm_head):
        dim = hidden.shape[-1]
        w = param_with_axes(self, "w", nn.initializers.zeros, (self.num_heads, dim, dim), (None, "embed", "mlp"))
        b = param_with_axes(self, "bias", nn.initializers.zeros, (self.num_heads, dim), (None, "mlp"))
        h = hidden.astype(self.dtype)
        update = jnp.einsum("bsd,kde->kbse", h, w.astype(self.dtype)) + b.astype(self.dtype)[:, None, None, :]
        residual = h[None] + nn.silu(update)
        if self.shared_lm_head:
            return jnp.einsum("kbsd,dv->kbsv", residual, base_lm_head.astype(self.dtype),
                              preferred_element_type=jnp.float32)
        lm_heads = param_with_axes(self, "lm_head", copies_of(base_lm_head), (self.num_heads, *base_lm_head.shape),
                                   (None, "embed", "vocab"))
        return jnp.einsum("kbsd,kdv->kbsv", residual, lm_heads.astype(self.dtype), preferred_element_type=jnp.float32)


def heads_of(config, name: str | None = None) -> MedusaHeads:
    """The heads `config.medusa` describes (`config` a Medusa `config.model`)."""
    return MedusaHeads(config.medusa.num_heads, config.medusa.shared_lm_head, jnp.dtype(config.dtype), name=name)


class MedusaLM(nn.Module):
    """The LLaMA decoder ("backbone") with Medusa heads ("medusa"); `config` is `config.model`.

    `__call__` takes `Llama`'s arguments (tokens, positions, segment_ids, cache, decode,
    tree_mask) and returns `(logits [b, s, V], medusa_logits [K, b, s, V])`, with `decode=True`
    `((logits, medusa_logits), new_cache)`.
    """

    config: Any
    mesh: Any = None

    @nn.compact
    def __call__(self, tokens, *, positions=None, segment_ids=None, cache=None, decode=False, tree_mask=None):
        backbone = Llama(self.config, self.mesh, name="backbone")
        output = backbone(tokens, positions=positions, segment_ids=segment_ids, cache=cache, decode=decode,
                          tree_mask=tree_mask, return_hidden=True)
        (logits, hidden), new_cache = output if decode else (output, None)
        base_lm_head = nn.meta.unbox(backbone.variables["params"]["lm_head"])
        medusa_logits = heads_of(self.config, "medusa")(hidden, base_lm_head)
        return ((logits, medusa_logits), new_cache) if decode else (logits, medusa_logits)


def fresh_heads(config, rng, backbone_params):
    """Newly initialised (boxed) head parameters for `backbone_params`: own LM heads copy its lm_head."""
    base_lm_head = nn.meta.unbox(backbone_params["lm_head"])
    return heads_of(config).init(rng, jnp.zeros((1, 1, config.dim), jnp.float32), base_lm_head)["params"]


def head_logits(config, params, hidden):
    """The heads' logits `[K, b, s, V]` for hidden states `[b, s, d]`; `params` are MedusaLM's."""
    return heads_of(config).apply({"params": params["medusa"]}, hidden, params["backbone"]["lm_head"])


def validate_medusa_experiment(config) -> None:
    """The LLaMA checks, then `config.model.medusa`: K ≥ 1 heads on a dense decoder."""
    validate_llama_experiment(config)
    model = config.model
    require("medusa" in model, "model.medusa", "missing (num_heads, shared_lm_head)")
    require(isinstance(model.medusa.num_heads, int) and model.medusa.num_heads >= 1, "model.medusa.num_heads",
            f"must be an int >= 1, got {model.medusa.num_heads!r}")
    require(isinstance(model.medusa.shared_lm_head, bool), "model.medusa.shared_lm_head",
            f"must be True or False, got {model.medusa.shared_lm_head!r}")
    require(model.get("moe") is None, "model.moe", "Medusa heads sit on a dense decoder; remove model.moe")


FAMILY = ModelFamily(build=MedusaLM, init_inputs=init_tokens, validate=validate_medusa_experiment)
