"""A toy on-policy trainer for the loop's tests: a contextual bandit learned by REINFORCE.

Each step's batch is made on the device from the current policy (`OnPolicyBatches`): contexts
c ~ N(0, I) [B, 4], actions a ~ softmax(policy(c)), rewards r = c[a] + noise; the advantage is
r − b with b a running mean of rewards that the batch source keeps as array state (saved beside
the train state), b ← 0.9·b + 0.1·mean(r). An episode of action a counts 1 + a tokens, so the
tokens of a step vary and the step reports them. Loss: −mean((r − b)·log π(a | c)).

It is also the config file: `python -m research.run --config tests/train/toy_bandit.py`.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from research.models import make_model
from research.optim import make_optimizer
from research.train.batches import OnPolicyBatches
from research.train.evaluators import Evaluator
from research.train.state import TrainState
from research.train.task import Task
from tests.train.toy_configs import toy_config

ARMS = 4


def get_config(arg=None) -> ml_collections.ConfigDict:
    config = toy_config("tests.train.toy_bandit", (ARMS,), ARMS)
    config.evals = ml_collections.ConfigDict(dict(reward=dict(every=10)))
    return config


def build(config, mesh) -> Task:
    model = make_model(config.model, mesh)
    optimizer = make_optimizer(config.optimizer, config.train.steps)
    rows = config.train.batch_size

    def init_state(rng, params=None):
        if params is None:
            params = model.init(rng, jnp.zeros((1, ARMS)))["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))

    def rollout(params, rng):
        context_key, action_key, noise_key = jax.random.split(rng, 3)
        contexts = jax.random.normal(context_key, (rows, ARMS))
        actions = jax.random.categorical(action_key, model.apply({"params": params}, contexts))
        rewards = jnp.take_along_axis(contexts, actions[:, None], 1)[:, 0] + 0.1 * jax.random.normal(noise_key, (rows,))
        return contexts, actions, rewards

    def make_batch(state, source_state, rng):
        contexts, actions, rewards = rollout(state.params, rng)
        baseline = source_state["baseline"]
        batch = {"contexts": contexts, "actions": actions, "advantages": rewards - baseline, "lengths": 1 + actions}
        return batch, {"baseline": 0.9 * baseline + 0.1 * jnp.mean(rewards)}

    def train_step(state, batch, rng):
        def loss_fn(params):
            log_probs = jax.nn.log_softmax(model.apply({"params": params}, batch["contexts"]))
            chosen = jnp.take_along_axis(log_probs, batch["actions"][:, None], 1)[:, 0]
            return -jnp.mean(batch["advantages"] * chosen)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        metrics = {"loss": loss, "tokens": jnp.sum(batch["lengths"])}
        return TrainState(state.step + 1, optax.apply_updates(state.params, updates), opt_state), metrics

    def evaluators(shardings):
        mean_reward = jax.jit(lambda params: jnp.mean(rollout(params, jax.random.key(123))[2]))
        return {"reward": Evaluator(config.evals.reward.every, lambda params: {"mean": float(mean_reward(params))})}

    def boxed(shape, dtype, axes):
        return nn.LogicallyPartitioned(jax.ShapeDtypeStruct(shape, dtype), axes)

    spec = {"contexts": boxed((rows, ARMS), jnp.float32, ("batch", None)),
            "actions": boxed((rows,), jnp.int32, ("batch",)),
            "advantages": boxed((rows,), jnp.float32, ("batch",)),
            "lengths": boxed((rows,), jnp.int32, ("batch",))}
    return Task(init_state=init_state, train_step=train_step, batch_spec=spec,
                batches=lambda shardings: OnPolicyBatches(lambda rng: {"baseline": jnp.zeros((), jnp.float32)},
                                                          make_batch, shardings),
                evaluators=evaluators, tokens_per_step=None, flops_per_token=6.0 * 16 * (2 * ARMS))
