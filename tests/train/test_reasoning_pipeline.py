"""configs/reasoning_pipeline.py: the tiny MoE through pretraining, SFT and GRPO, each stage started from the
one before with init_from, at toy size."""

import jax
import ml_collections
import numpy as np
import pytest

from experiments.rl_runs import policy_params
from experiments.runs import QUICK_MODEL
from research import config as config_lib
from research.train.loop import train
from research.train.metrics import read_metrics
from tests.train.test_loop import ONE_DEVICE

TOY_MOE = QUICK_MODEL + ["model.moe.num_experts=4", "model.moe.expert_hidden_dim=32"]
STAGES = {
    "pretrain": ["train.steps=2", "train.eval_every=0"],
    "sft": ["train.steps=2", "train.eval_every=0", "data.sft.count=8", "data.sft.suites=('arithmetic',)"],
    "grpo": ["train.steps=2", "rl.max_prompt_len=288", "rl.max_new_tokens=6", "rl.prompts_per_step=2", "rl.group_size=2",
             "optimizer.learning_rate=1e-2", "evals.in_domain.count=1", "evals.held_out.count=1",
             "evals.in_domain.max_new_tokens=4", "evals.held_out.max_new_tokens=4", "evals.in_domain.every=0",
             "evals.held_out.every=0"],
}


def router_kernels(workdir, model_config):
    """The routers' parameters of the decoder in the newest checkpoint of `workdir`, by path."""
    leaves = jax.tree_util.tree_flatten_with_path(policy_params(workdir, model_config))[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves if "router" in jax.tree_util.keystr(path)}


def stage_config(stage, workdir_before):
    """The toy config of `stage` started from `workdir_before`; only the last stage (GRPO) evaluates."""
    fields = TOY_MOE + STAGES[stage]
    if workdir_before:
        fields.append(f"init_from.path={workdir_before}")
    config = config_lib.unfrozen(config_lib.load(f"configs/reasoning_pipeline.py:stage={stage},model=moe", fields))
    if stage != "grpo":
        config.evals = ml_collections.ConfigDict()
    return ml_collections.FrozenConfigDict(config)


def test_the_moe_runs_the_chain_with_its_auxiliary_losses_in_sft_and_grpo(tmp_path):
    dirs = {stage: tmp_path / stage for stage in STAGES}
    before = None
    for stage, workdir in dirs.items():
        results = train(stage_config(stage, before), str(workdir), devices=ONE_DEVICE)
        before = workdir
    assert {"held_out_pass@1", "in_domain_pass@1", "held_out_mean_length"} <= set(results)
    for stage in ("sft", "grpo"):
        logged = [r for r in read_metrics(str(dirs[stage])) if "loss" in r]
        assert logged and all(np.isfinite(r["moe_load_balancing_loss"]) and r["moe_load_balancing_loss"] > 0
                              for r in logged)
    rewards = [r["rollout_reward"] for r in read_metrics(str(dirs["grpo"])) if "rollout_reward" in r]
    assert rewards == [0.0, 0.0]  # nothing correct: every advantage is 0, only the MoE losses move the policy
    model_config = stage_config("grpo", None).model
    sft, grpo = router_kernels(dirs["sft"], model_config), router_kernels(dirs["grpo"], model_config)
    assert sft.keys() == grpo.keys() and sft
    assert any(not np.allclose(sft[name], grpo[name]) for name in sft)


@pytest.mark.parametrize("arg, message", [("stage=rlhf", "unknown reasoning_pipeline stage"),
                                          ("stage=sft,model=gpt", "unknown reasoning_pipeline model")])
def test_unknown_stage_or_model_is_named(arg, message):
    with pytest.raises(ValueError, match=message):
        config_lib.load(f"configs/reasoning_pipeline.py:{arg}")


def test_the_ppo_rlvr_stage_is_ppo_with_verifiable_rewards_on_the_grpo_stages_model_and_start():
    ppo, grpo = (config_lib.load(f"configs/reasoning_pipeline.py:stage={stage},model=moe")
                 for stage in ("ppo_rlvr", "grpo"))
    assert ppo.trainer == "ppo" and ppo.ppo.reward == "verifiers"
    assert ppo.model == grpo.model and ppo.model.moe.num_experts > 1
    assert ppo.init_from.path == grpo.init_from.path == "workdir/moe_sft"
