"""Model families and their parameter counts.

`count_params(config.model)` counts from shapes alone (`jax.eval_shape`): nothing is
allocated, so it is exact and instant for the full-size configs.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.models.llama import Llama


def make_model(model_config):
    """The flax module for `config.model`."""
    return Llama(model_config)


def abstract_params(model_config):
    """Parameter shapes of the model (a pytree of `jax.ShapeDtypeStruct`), boxes removed."""
    model = make_model(model_config)
    tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    variables = jax.eval_shape(lambda t: model.init(jax.random.key(0), t), tokens)
    return nn.meta.unbox(variables["params"])


def count_params(model_config) -> dict[str, int]:
    """{"total": all parameters, "active": parameters used per token} (equal for dense models)."""
    shapes = jax.tree.leaves(abstract_params(model_config))
    total = int(sum(np.prod(s.shape, dtype=np.int64) for s in shapes))
    return {"total": total, "active": total}
