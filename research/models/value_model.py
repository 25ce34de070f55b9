"""A decoder with a scalar head: reward models and PPO's critic (model family "value").

v_t = w·h_t + b for every position t, h_t the LLaMA decoder's final normed hidden state
(research/models/llama.py), w `[dim]` initialised at 0 so every value starts at 0. A reward model
reads the value at the last token of a response (`last_values`); a critic reads every response token.
Parameters: {"backbone": the decoder's, "head": {"kernel", "bias"}}, so the backbone can start from a
language-model run (`init_from.into = "backbone"`) and the critic from a reward model.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from research.models.family import ModelFamily
from research.models.layers import param_with_axes
from research.models.llama import Llama, init_tokens
from research.models.llama_checks import validate_llama_experiment


class ScalarHead(nn.Module):
    """v = w·h + b over the last axis of h, in float32; w starts at 0."""

    @nn.compact
    def __call__(self, hidden):
        kernel = param_with_axes(self, "kernel", nn.initializers.zeros, (hidden.shape[-1],), ("embed",))
        bias = param_with_axes(self, "bias", nn.initializers.zeros, (), ())
        return jnp.einsum("...d,d->...", hidden.astype(jnp.float32), kernel) + bias


class ValueModel(nn.Module):
    """Values `[batch, seq]` (float32) of int tokens `[batch, seq]`; `config` as Llama's."""

    config: Any
    mesh: Any = None

    @nn.compact
    def __call__(self, tokens, *, positions=None, segment_ids=None):
        _, hidden = Llama(self.config, self.mesh, name="backbone")(
            tokens, positions=positions, segment_ids=segment_ids, return_hidden=True)
        return ScalarHead(name="head")(hidden)


def last_values(values, lengths):
    """The value at each row's last real token: values `[B, T]`, lengths `[B]` → `[B]`."""
    return jnp.take_along_axis(values, (lengths - 1)[:, None], axis=1)[:, 0]


FAMILY = ModelFamily(build=ValueModel, init_inputs=init_tokens, validate=validate_llama_experiment)
