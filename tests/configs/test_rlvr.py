"""configs/rlvr.py: tiny_ppo is PPO with verifiable rewards on tiny_grpo's problems and sampling budget."""

from research import config as config_lib

SHARED_SAMPLING = ("suites", "problem_seed", "max_prompt_len", "max_new_tokens", "temperature", "top_p",
                   "format_weight", "soft_overlong")


def test_tiny_ppo_samples_tiny_grpos_budget_with_its_verifier_reward_from_the_sft_run():
    grpo, ppo = (config_lib.load(f"configs/rlvr.py:{variant}") for variant in ("tiny_grpo", "tiny_ppo"))
    assert ppo.trainer == "ppo" and ppo.ppo.reward == "verifiers"
    assert ppo.ppo.prompts_per_step == grpo.rl.prompts_per_step * grpo.rl.group_size  # one response to each problem
    assert {name: ppo.ppo[name] for name in SHARED_SAMPLING} == {name: grpo.rl[name] for name in SHARED_SAMPLING}
    assert ppo.optimizer.learning_rate == grpo.optimizer.learning_rate
    assert ppo.evals == grpo.evals and ppo.init_from == grpo.init_from  # no reward model to load
    assert "prompt_kinds" not in ppo.ppo and not ppo.ppo.critic_from_reward
