"""research/train/ppo_verifier_rollouts.py and ppo.py's `ppo.reward = "verifiers"`: PPO on the task suites
through the loop, each row's verifier reward at its last response token under the per-token KL shaping,
and the fields that do not fit named."""

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from research import config as config_lib
from research.config import unfrozen
from research.models import make_model
from research.parallel.mesh import make_mesh
from research.rl.rollout import policy_log_probs
from research.train import ppo_verifier_rollouts
from research.train.checkpoint import Checkpointer
from research.train.loop import train
from research.train.metrics import read_metrics
from research.train.step import step_layout
from research.train.task import build_task
from tests.train.test_loop import ONE_DEVICE

TINY = {"model.dim": 32, "model.num_layers": 2, "model.num_heads": 4, "model.num_kv_heads": 2, "model.hidden_dim": 64,
        "model.vocab_size": 265, "data.tokenizer": "byte", "init_from.kind": "none", "init_from.path": "",
        "init_from.into": "", "ppo.max_prompt_len": 288, "ppo.max_new_tokens": 8, "ppo.prompts_per_step": 4,
        "train.steps": 2, "train.log_every": 1, "train.checkpoint_every": 0,
        "evals.in_domain.count": 1, "evals.held_out.count": 1, "evals.in_domain.max_new_tokens": 4,
        "evals.held_out.max_new_tokens": 4, "evals.in_domain.every": 0, "evals.held_out.every": 0}


def ppo_config(spec="configs/rlvr.py:tiny_ppo", evaluate=False, **overrides):
    """A tiny PPO run on verifiable problems from a random start (without evaluators unless `evaluate`)."""
    fields = {**TINY, **{key.replace("__", "."): value for key, value in overrides.items()}}
    config = unfrozen(config_lib.load(spec, [f"{key}={value}" for key, value in fields.items()]))
    if not evaluate:
        config.evals = ml_collections.ConfigDict()
    return ml_collections.FrozenConfigDict(config)


def test_ppo_on_verifiable_problems_trains_from_scratch_and_logs_the_rollout_statistics_grpo_logs(tmp_path):
    results = train(ppo_config(evaluate=True), str(tmp_path), devices=ONE_DEVICE)
    logged = [r for r in read_metrics(str(tmp_path)) if "loss" in r]
    assert [r["step"] for r in logged] == [1, 2]
    for record in logged:
        assert {"rollout_accuracy", "rollout_reward", "rollout_format_rate", "rollout_response_length",
                "rollout_truncated", "rollout_kl", "value_loss"} <= set(record)
        assert 0 <= record["rollout_accuracy"] <= 1 and 1 <= record["rollout_response_length"] <= 8
        assert np.isfinite(record["loss"]) and np.isfinite(record["value_loss"])
    assert {"in_domain_pass@1", "held_out_pass@1", "held_out_mean_length"} <= set(results)
    with Checkpointer(tmp_path / "checkpoints", read_only=True) as reader:
        saved = reader.saved_arrays(reader.newest_step())
    roles = {name.split("/")[1] for name in saved if name.startswith("params/")}
    assert roles == {"policy", "reference", "value"}  # no reward model


def test_each_rows_verifier_reward_lands_at_its_last_response_token_under_the_kl_shaping(monkeypatch):
    config = ppo_config(ppo__lam=1.0, ppo__gamma=1.0, ppo__kl_coef=0.5, ppo__format_weight=0.25)
    judged = []

    def correct_on_even_problems(tokenizer, problem, response):
        judged.append(problem.id)
        return float(int(problem.id.rsplit("/", 1)[1]) % 2 == 0), True

    monkeypatch.setattr(ppo_verifier_rollouts, "judge_response", correct_on_even_problems)
    mesh = make_mesh(config.mesh, ONE_DEVICE)
    task = build_task(config, mesh)
    source = task.batches(step_layout(task, mesh).batch_shardings)
    state = nn.meta.unbox(jax.jit(task.init_state)(jax.random.key(0)))
    params = state.params
    jax.tree.map(np.testing.assert_array_equal, params["value"]["backbone"], params["policy"])  # the critic's start
    reference = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(1), p.shape), params["policy"])
    state = state.replace(params={**params, "reference": reference})
    batch, _ = source.next(state, nn.meta.unbox(source.init(None)), jax.random.key(2))

    mask = np.asarray(batch["response_mask"]) > 0
    policy = np.asarray(batch["old_log_probs"])
    ref = np.asarray(policy_log_probs(make_model(config.model), reference, batch["tokens"],
                                      temperature=config.ppo.temperature))
    kl = np.where(mask, policy - ref, 0.0)
    assert np.abs(kl).max() > 1e-3  # the shaping has something to add
    final = np.array([1.25 if int(name.rsplit("/", 1)[1]) % 2 == 0 else 0.25 for name in judged])
    assert sorted(set(final)) == [0.25, 1.25]
    last = np.array([np.flatnonzero(row).max() for row in mask])
    rewards = -0.5 * kl
    rewards[np.arange(len(last)), last] += final
    expected = np.where(mask, np.cumsum(rewards[:, ::-1], axis=1)[:, ::-1], 0.0)  # γ = λ = 1: R_t = Σ_{k≥t} r_k
    np.testing.assert_allclose(np.asarray(batch["returns"]), expected, atol=1e-5)
    statistics = {name: float(value) for name, value in batch["statistics"].items()}
    assert statistics["reward"] == pytest.approx(final.mean()) and statistics["format_rate"] == 1.0
    assert statistics["accuracy"] == pytest.approx(np.mean(final == 1.25))
    assert source.host_state() == {"taken": 4}


@pytest.mark.parametrize("overrides, message", [
    ({"ppo__reward": "rm"}, "config field ppo.reward: 'rm' is not one of"),
    ({"ppo__critic_from_reward": True}, "config field ppo.critic_from_reward"),
    ({"lora__enabled": True}, "config field lora.enabled"),
])
def test_an_unknown_reward_source_or_fields_that_do_not_fit_it_are_named(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        train(ppo_config(**overrides), str(tmp_path), devices=ONE_DEVICE)


def test_the_reward_model_recipe_switched_to_verifiers_names_the_fields_it_lacks(tmp_path):
    config = config_lib.load("configs/rlhf.py:tiny_ppo", ["ppo.reward=verifiers"])
    with pytest.raises(ValueError, match="config fields ppo.suites, ppo.problem_seed, ppo.format_weight"):
        train(config, str(tmp_path), devices=ONE_DEVICE)
