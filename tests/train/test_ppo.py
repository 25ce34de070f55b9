"""research/train/trainers/ppo.py: PPO through the loop raises a reachable reward; the KL controller; the
PPO-ptx objective on a hand-made mini-batch."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from research import config as config_lib
from research.config import unfrozen
from research.models import make_model
from research.train.loop import train
from research.train.metrics import read_metrics
from research.train.trainers import ppo
from tests.train.test_loop import ONE_DEVICE

TINY = {"model.dim": 32, "model.num_layers": 2, "model.num_heads": 4, "model.num_kv_heads": 2, "model.hidden_dim": 64,
        "model.vocab_size": 265, "data.tokenizer": "byte", "init_from.kind": "none", "init_from.path": "",
        "init_from.into": "", "ppo.max_prompt_len": 120, "ppo.max_new_tokens": 8, "ppo.num_prompts": 64,
        "train.steps": 12, "train.log_every": 1, "train.checkpoint_every": 0}


def ppo_config(variant="tiny_ppo", **overrides):
    """A tiny PPO run whose four models all start at random (no earlier runs to load)."""
    fields = {**TINY, **{key.replace("__", "."): value for key, value in overrides.items()}}
    config = unfrozen(config_lib.load(f"configs/rlhf.py:{variant}", [f"{k}={v}" for k, v in fields.items()]))
    config.init_from.extra = ml_collections.ConfigDict()
    return ml_collections.FrozenConfigDict(config)


def share_of_even_tokens(critic, reward_params, tokens, lengths, response_mask):
    """A dense stand-in reward model a random policy can climb."""
    return jnp.sum((tokens % 2 == 0) * response_mask, axis=1) / jnp.maximum(jnp.sum(response_mask, axis=1), 1)


def logged(workdir, name):
    return [r[name] for r in read_metrics(str(workdir)) if name in r]


@pytest.mark.parametrize("variant", ["tiny_ppo", "tiny_ppo_max"])
def test_ppo_raises_a_reward_the_policy_can_reach(tmp_path, monkeypatch, variant):
    monkeypatch.setattr(ppo, "score_responses", share_of_even_tokens)
    train(ppo_config(variant, optimizer__learning_rate=0.02, ppo__kl_coef=0.0), str(tmp_path), devices=ONE_DEVICE)
    scores = logged(tmp_path, "rollout_score")
    assert len(scores) == 12 and np.mean(scores[-3:]) > np.mean(scores[:3]) + 0.1
    assert all(np.isfinite(logged(tmp_path, "loss")))


def test_the_adaptive_kl_coefficient_moves_toward_its_target(tmp_path, monkeypatch):
    monkeypatch.setattr(ppo, "score_responses", share_of_even_tokens)
    config = ppo_config(optimizer__learning_rate=0.02, ppo__kl_target=1e-4, ppo__kl_horizon=100)
    train(config, str(tmp_path), devices=ONE_DEVICE)
    coefs, kls = logged(tmp_path, "rollout_kl_coef"), logged(tmp_path, "rollout_kl")
    assert coefs[0] == pytest.approx(0.02) and max(kls) > 1e-4
    assert coefs[-1] > coefs[0]  # the KL ran above its target, so β grew


def test_bad_ppo_fields_are_named(tmp_path):
    with pytest.raises(ValueError, match="ppo.minibatches: 3 does not divide"):
        train(ppo_config(ppo__minibatches=3), str(tmp_path), devices=ONE_DEVICE)


def hand_made_minibatch(rng, config, rows: int = 2, length: int = 12):
    """A rollout mini-batch of random tokens (responses on the last half) and LM rows with some weights 0."""
    keys = jax.random.split(rng, 6)
    vocab = config.model.vocab_size
    mask = jnp.zeros((rows, length)).at[:, length // 2:].set(1.0)
    per_token = {name: jax.random.normal(key, (rows, length)) * mask
                 for name, key in zip(("old_log_probs", "old_values", "advantages", "returns"), keys[:4])}
    inputs = jax.random.randint(keys[4], (rows, 10), 0, vocab)
    ptx = {"inputs": inputs, "targets": jnp.roll(inputs, -1, axis=1),
           "positions": jnp.broadcast_to(jnp.arange(10), (rows, 10)), "segment_ids": jnp.ones((rows, 10), jnp.int32),
           "weights": (jax.random.uniform(keys[5], (rows, 10)) > 0.3) * 1.0}
    return {"tokens": jax.random.randint(keys[4], (rows, length), 0, vocab), "response_mask": mask, **per_token,
            ppo.PTX: ptx}


def test_ptx_adds_its_coefficient_times_the_lm_loss_and_nothing_at_zero():
    config = ppo_config("tiny_ppo_max")
    policy_model, critic = make_model(config.model), make_model(ppo.value_config(config.model))
    tokens = jnp.zeros((1, 12), jnp.int32)
    trained = {"policy": jax.jit(policy_model.init)(jax.random.key(0), tokens)["params"],
               "value": jax.jit(critic.init)(jax.random.key(1), tokens)["params"]}
    trained = nn.meta.unbox(trained)
    batch = hand_made_minibatch(jax.random.key(2), config)
    without_rows = {name: value for name, value in batch.items() if name != ppo.PTX}

    def objective(coef, minibatch):
        fields = ml_collections.ConfigDict({**config.ppo.to_dict(), "ptx_coef": coef})
        return jax.jit(jax.value_and_grad(functools.partial(ppo.ppo_objective, policy_model, critic, fields),
                                          has_aux=True))(trained, minibatch)

    (ppo_loss, _), ppo_grads = objective(0.0, without_rows)
    (zero_loss, zero_metrics), zero_grads = objective(0.0, batch)
    assert zero_loss == ppo_loss and "ptx_loss" not in zero_metrics
    jax.tree.map(np.testing.assert_array_equal, zero_grads, ppo_grads)

    rows = batch[ppo.PTX]
    logits = jax.jit(policy_model.apply)({"params": trained["policy"]}, rows["inputs"]).astype(jnp.float32)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), rows["targets"][..., None], -1)[..., 0]
    lm_loss = jnp.sum(nll * rows["weights"]) / jnp.sum(rows["weights"])
    (mixed_loss, metrics), _ = objective(0.25, batch)
    np.testing.assert_allclose(metrics["ptx_loss"], lm_loss, rtol=1e-5)
    np.testing.assert_allclose(mixed_loss, ppo_loss + 0.25 * lm_loss, rtol=1e-5)


def test_distinct_bigram_share_counts_repeated_bigrams_once_and_ignores_the_mask():
    tokens = jnp.asarray([[9, 1, 2, 1, 2, 0], [9, 1, 2, 3, 7, 7]])
    mask = jnp.asarray([[0, 1, 1, 1, 1, 0], [0, 1, 1, 1, 0, 0]], bool)
    # bigrams on the mask: (1,2) (2,1) (1,2) and (1,2) (2,3): 3 distinct of 5
    assert float(ppo.distinct_bigram_share(tokens, mask)) == pytest.approx(3 / 5)
