"""A second model family for the loop's tests: a two-layer perceptron over any input shape.

    y = relu(flatten(x) · W1) · W2,   W1 [inputs, hidden] axes ("embed", "mlp"), W2 [hidden, outputs] ("mlp", None)

`config.model.family = "tests.train.toy_family"`; fields `input_shape` (per example), `hidden`, `outputs`.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models.family import ModelFamily, require


class Perceptron(nn.Module):
    config: dict

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        w1 = self.param("w1", nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp")),
                        (x.shape[1], self.config.hidden))
        w2 = self.param("w2", nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("mlp", None)),
                        (self.config.hidden, self.config.outputs))
        return jax.nn.relu(x @ w1) @ w2


def validate(config) -> None:
    for field in ("hidden", "outputs"):
        require(config.model[field] > 0, f"model.{field}", f"must be positive, got {config.model[field]}")
    require(math.prod(config.model.input_shape) > 0, "model.input_shape", "must be non-empty")


FAMILY = ModelFamily(
    build=lambda model_config, mesh: Perceptron(model_config),
    init_inputs=lambda model_config: (jax.ShapeDtypeStruct((1, *model_config.input_shape), jnp.float32),),
    validate=validate,
)
