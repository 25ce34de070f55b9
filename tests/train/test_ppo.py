"""research/train/trainers/ppo.py: PPO through the loop raises a reachable reward; the KL controller."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from research import config as config_lib
from research.config import unfrozen
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
