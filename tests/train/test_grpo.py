"""research/train/trainers/grpo.py and rollout_batches.py: RL on verifiable problems through the loop."""

import ml_collections
import numpy as np
import pytest

from research import config as config_lib
from research.config import unfrozen
from research.train.loop import train
from research.train.metrics import read_metrics
from research.train.rollout_batches import VerifiableRollouts
from tests.train.test_loop import ONE_DEVICE

TINY = {
    "model.dim": 32, "model.num_layers": 2, "model.num_heads": 4, "model.num_kv_heads": 2, "model.hidden_dim": 64,
    "model.vocab_size": 265, "data.tokenizer": "byte", "init_from.kind": "none", "init_from.path": "",
    "init_from.into": "", "rl.max_prompt_len": 288, "rl.max_new_tokens": 8, "rl.prompts_per_step": 4,
    "rl.group_size": 4, "train.steps": 4, "train.log_every": 1, "train.checkpoint_every": 0,
    "evals.in_domain.count": 1, "evals.held_out.count": 1, "evals.in_domain.max_new_tokens": 4,
    "evals.held_out.max_new_tokens": 4, "evals.in_domain.every": 0, "evals.held_out.every": 0,
}


def grpo_config(variant="tiny_grpo", evaluate=False, **overrides):
    """A tiny run of `variant` (without its accuracy evaluators unless `evaluate`: they compile decoders)."""
    fields = {**TINY, **{key.replace("__", "."): value for key, value in overrides.items()}}
    config = unfrozen(config_lib.load(f"configs/rlvr.py:{variant}", [f"{key}={value}" for key, value in fields.items()]))
    if not evaluate:
        config.evals = ml_collections.ConfigDict()
    return ml_collections.FrozenConfigDict(config)


def share_of_target(self, problem, response):
    """A dense stand-in reward a random model can climb: the share of its response tokens with an even id."""
    return float(np.mean(np.asarray(response) % 2 == 0)) if len(response) else 0.0, False


def rewards_by_step(workdir):
    return [(r["step"], r["rollout_reward"]) for r in read_metrics(str(workdir)) if "rollout_reward" in r]


def test_grpo_raises_a_reward_the_policy_can_reach(tmp_path, monkeypatch):
    monkeypatch.setattr(VerifiableRollouts, "judge", share_of_target)
    config = grpo_config(evaluate=True, train__steps=12, optimizer__learning_rate=0.03, rl__kl_coef=0.0)
    results = train(config, str(tmp_path), devices=ONE_DEVICE)
    rewards = [reward for _, reward in rewards_by_step(tmp_path)]
    assert len(rewards) == 12
    assert np.mean(rewards[-3:]) > np.mean(rewards[:3]) + 0.15
    assert {"held_out_pass@1", "in_domain_mean_length", "held_out_format_rate"} <= set(results)


@pytest.mark.parametrize("variant", ["tiny_dapo", "tiny_kimi"])  # the trainer's own switches; the losses' are
# tested in tests/rl
def test_every_variant_trains_a_step_with_finite_metrics(tmp_path, monkeypatch, variant):
    monkeypatch.setattr(VerifiableRollouts, "judge", share_of_target)
    train(grpo_config(variant, train__steps=1, rl__soft_overlong__max_length=8, rl__soft_overlong__cache_length=4),
          str(tmp_path), devices=ONE_DEVICE)
    (logged,) = [r for r in read_metrics(str(tmp_path)) if "loss" in r]
    assert np.isfinite(logged["loss"]) and np.isfinite(logged["grad_norm"])
    if variant == "tiny_kimi":  # no dynamic sampling: one rollout, no refill
        assert logged["rollout_refills"] == 0


def test_dynamic_sampling_refills_groups_without_signal_and_counts_what_it_could_not(tmp_path, monkeypatch):
    calls = []

    def only_later_groups_differ(self, problem, response):
        calls.append(problem.id)
        index = int(problem.id.rsplit("/", 1)[1])
        return (float(len(calls) % 2) if index >= 4 else 0.0), False  # problems 0-3: all rewards equal

    monkeypatch.setattr(VerifiableRollouts, "judge", only_later_groups_differ)
    train(grpo_config("tiny_dapo", train__steps=1, rl__max_refills=1), str(tmp_path), devices=ONE_DEVICE)
    (logged,) = [r for r in read_metrics(str(tmp_path)) if "rollout_kept_groups" in r]
    assert logged["rollout_refills"] == 1 and logged["rollout_kept_groups"] == 4
    assert len(calls) == 2 * 4 * 4  # two rounds of 4 problems x 4 responses


def test_a_batch_that_cannot_be_filled_keeps_groups_without_signal(tmp_path, monkeypatch):
    monkeypatch.setattr(VerifiableRollouts, "judge", lambda self, problem, response: (0.0, False))
    train(grpo_config("tiny_dapo", train__steps=1, rl__max_refills=1), str(tmp_path), devices=ONE_DEVICE)
    (logged,) = [r for r in read_metrics(str(tmp_path)) if "rollout_kept_groups" in r]
    assert logged["rollout_kept_groups"] == 0 and logged["rollout_reward"] == 0.0
    assert logged["loss"] == pytest.approx(0.0, abs=1e-6)  # zero advantages: nothing to learn


@pytest.mark.parametrize("overrides, message", [
    ({"rl__loss": "ppo"}, "rl.loss: 'ppo' is not one of"),
    ({"rl__minibatches": 3}, "rl.minibatches: 3 does not divide"),
    ({"rl__max_prompt_len": 1020}, "exceed model.max_seq_len"),
])
def test_bad_rl_fields_are_named(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        train(grpo_config(**overrides), str(tmp_path), devices=ONE_DEVICE)


def scripted_tool_turns(*args, **kwargs):
    """A stand-in for agentic_rollout.policy_turns: every row calls `print(7)`, then answers what the tool printed."""
    tokenizer = args[2]

    def sample(sequences, rooms):
        calls = ["python output" in tokenizer.decode(sequence) for sequence in sequences]
        texts = ["seen</think>7<|end|>" if called else 'run</think>{"name":"python","arguments":{"code":"print(7)"}}<|end|>'
                 for called in calls]
        return [tokenizer.encode(text)[:room] for text, room in zip(texts, rooms)]

    return sample


def test_tool_rollouts_prioritized_sampling_and_long2short_train_and_resume_with_the_samplers_counts(tmp_path,
                                                                                                   monkeypatch):
    monkeypatch.setattr("research.rl.agentic_rollout.policy_turns", scripted_tool_turns)
    judged, seen_counts = [], []
    monkeypatch.setattr(VerifiableRollouts, "judge", lambda self, problem, response: judged.append(
        self.tokenizer.decode(response)) or (1.0, True))
    prompts = VerifiableRollouts.prompts
    monkeypatch.setattr(VerifiableRollouts, "prompts", lambda self, count, counts, step, draw: seen_counts.append(
        (step, {name: value.copy() for name, value in counts.items()})) or prompts(self, count, counts, step, draw))
    config = dict(rl__tools=True, rl__suites="('tool_tasks',)", rl__max_prompt_len=400, rl__max_new_tokens=64,
                  rl__prompts_per_step=2, rl__group_size=2, rl__sampling="prioritized", rl__pool_size=8,
                  rl__kl_coef=0.0, rl__long2short=True, train__checkpoint_every=1)
    train(grpo_config(train__steps=1, **config), str(tmp_path), devices=ONE_DEVICE)
    (logged,) = [r for r in read_metrics(str(tmp_path)) if "rollout_tool_calls" in r]
    assert logged["rollout_tool_calls"] == 1.0
    assert logged["loss"] < 0  # all rewards equal: group advantages would be 0, long2short weights are not
    assert judged == ["seen</think>7<|end|>"] * 4  # the answer after the tool's turn is what is judged
    (_, first), = seen_counts
    assert first["attempts"].sum() == 0
    train(grpo_config(train__steps=2, **config), str(tmp_path), devices=ONE_DEVICE)
    step, resumed = seen_counts[-1]
    assert step == 1 and resumed["attempts"].sum() == 4  # the first step's two groups of two, restored
    np.testing.assert_array_equal(resumed["successes"], resumed["attempts"])  # every answer judged correct
