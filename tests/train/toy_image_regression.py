"""A toy trainer with image-shaped batches and per-row scalar labels, for the loop's tests.

Batches are nested: {"images": [B, 8, 8, 3] axes ("batch", None, None, None),
"labels": {"reward": [B] axes ("batch",)}}; the perceptron (tests/train/toy_family.py) regresses
reward = mean(first channel) + 0.5·mean(second) with the mean squared error. Data are drawn
from NumPy's generator seeded with (seed, batch index), so the iterator's position is one int.
Evaluators: "eval" (summed squared error on held-out batches) and "close" (the fraction of
predictions within 0.1 of the reward), each at its own cadence.

It is also the config file: `python -m research.run --config tests/train/toy_image_regression.py`.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from research.models import make_model
from research.optim import make_optimizer
from research.train.batches import IteratorBatches
from research.train.evaluators import summed_evaluator
from research.train.state import TrainState
from research.train.task import Task
from tests.train.toy_configs import toy_config

IMAGE_SHAPE = (8, 8, 3)


def get_config(arg=None) -> ml_collections.ConfigDict:
    config = toy_config("tests.train.toy_image_regression", IMAGE_SHAPE, 1)
    config.evals = ml_collections.ConfigDict(dict(eval=dict(every=2, batches=2), close=dict(every=3, batches=1)))
    return config


def image_batch(seed: int, index: int, batch_size: int) -> dict:
    rng = np.random.default_rng((seed, index))
    images = rng.uniform(-1, 1, (batch_size, *IMAGE_SHAPE)).astype(np.float32)
    reward = images[..., 0].mean((1, 2)) + 0.5 * images[..., 1].mean((1, 2))
    return {"images": images, "labels": {"reward": reward.astype(np.float32)}}


class ImageBatches:
    """Batch i of this process's rows, forever; the position is the next i."""

    def __init__(self, seed: int, batch_size: int):
        self.seed, self.batch_size, self.index = seed, batch_size, 0

    def __next__(self) -> dict:
        batch = image_batch(self.seed * 1000 + jax.process_index(), self.index, self.batch_size)
        self.index += 1
        return batch

    def get_state(self):
        return {"index": self.index}

    def set_state(self, state) -> None:
        self.index = state["index"]


def build(config, mesh) -> Task:
    model = make_model(config.model, mesh)
    optimizer = make_optimizer(config.optimizer, config.train.steps)
    rows = config.train.batch_size

    def predictions(params, batch):
        return model.apply({"params": params}, batch["images"])[:, 0]

    def init_state(rng, params=None):
        if params is None:
            params = model.init(rng, jnp.zeros((1, *IMAGE_SHAPE)))["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))

    def train_step(state, batch, rng):
        def loss_fn(params):
            return jnp.mean((predictions(params, batch) - batch["labels"]["reward"]) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return TrainState(state.step + 1, optax.apply_updates(state.params, updates), opt_state), {"loss": loss}

    def eval_sums(params, batch):
        error = predictions(params, batch) - batch["labels"]["reward"]
        return {"squared_error": jnp.sum(error**2), "close": jnp.sum(jnp.abs(error) < 0.1), "rows": error.size}

    def held_out():
        return (image_batch(10**6 + jax.process_index(), i, rows // jax.process_count()) for i in range(4))

    def evaluators(shardings):
        evals = config.evals
        return {
            "eval": summed_evaluator(evals.eval.every, eval_sums, held_out, evals.eval.batches, shardings,
                                     lambda sums: {"loss": float(sums["squared_error"] / sums["rows"])}),
            "close": summed_evaluator(evals.close.every, eval_sums, held_out, evals.close.batches, shardings,
                                      lambda sums: {"fraction": float(sums["close"] / sums["rows"])}),
        }

    spec = {"images": nn.LogicallyPartitioned(jax.ShapeDtypeStruct((rows, *IMAGE_SHAPE), jnp.float32),
                                              ("batch", None, None, None)),
            "labels": {"reward": nn.LogicallyPartitioned(jax.ShapeDtypeStruct((rows,), jnp.float32), ("batch",))}}
    return Task(init_state=init_state, train_step=train_step, batch_spec=spec,
                batches=lambda shardings: IteratorBatches(ImageBatches(config.seed, rows // jax.process_count()),
                                                          shardings),
                evaluators=evaluators, tokens_per_step=rows, flops_per_token=6.0 * 16 * (8 * 8 * 3 + 1))
