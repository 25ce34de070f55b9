"""A trainer kept outside the library (`config.trainer = "tests.tools.toy_regression_trainer"`):
linear regression, one Dense layer ŷ = x·W + b on `config.model.features` inputs, trained on the
mean squared error (1/B)·Σ (ŷ − y)² of batches drawn on the devices, y = Σ_i x_i.

FLOPs per row: 6·N for the N = features + 1 parameters (2·N forward, 4·N backward).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from research.optim import make_optimizer
from research.train.batches import OnPolicyBatches
from research.train.state import TrainState
from research.train.task import Task


class Regressor(nn.Module):
    """ŷ = x·W + b, W sharded over its input width (`embed`)."""

    @nn.compact
    def __call__(self, x):
        dense = nn.Dense(1, kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", None)),
                         bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)))
        return dense(x)[:, 0]


def batch_spec(batch_size: int, features: int) -> dict:
    """x `[B, features]` and y `[B]`, rows over the data axes."""
    return {"x": nn.LogicallyPartitioned(jax.ShapeDtypeStruct((batch_size, features), jnp.float32), ("batch", None)),
            "y": nn.LogicallyPartitioned(jax.ShapeDtypeStruct((batch_size,), jnp.float32), ("batch",))}


def build(config, mesh) -> Task:
    """The regression's Task for `config` (`model.features`, `train.batch_size`, `optimizer`)."""
    model, features, batch_size = Regressor(), config.model.features, config.train.batch_size
    optimizer = make_optimizer(config.optimizer, config.train.steps)

    def init_state(rng, params=None):
        if params is None:
            params = model.init(rng, jnp.zeros((1, features), jnp.float32))["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))

    def train_step(state, batch, rng):
        def loss_fn(params):
            return jnp.mean((model.apply({"params": params}, batch["x"]) - batch["y"]) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), {"loss": loss}

    def draw(train_state, source_state, rng):
        x = jax.random.normal(rng, (batch_size, features), jnp.float32)
        return {"x": x, "y": x.sum(axis=-1)}, source_state

    return Task(
        init_state=init_state,
        train_step=train_step,
        batch_spec=batch_spec(batch_size, features),
        batches=lambda shardings: OnPolicyBatches(lambda rng: {}, draw, shardings),
        evaluators=lambda shardings: {},
        tokens_per_step=batch_size,
        flops_per_token=6 * (features + 1),
    )
