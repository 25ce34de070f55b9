"""Reinforcement learning with verifiable rewards on the procedural task suites: GRPO (DeepSeekMath)
and its DAPO, Dr. GRPO and GSPO variants, and Kimi k1.5, each started from an SFT run.

Variants (the tiny LLaMA; minutes per stage on a CPU):
    tiny_grpo   DeepSeekMath: β 0.04 (k3 in the loss), ε 0.2, per-sequence then per-batch mean, std-scaled
    tiny_dapo   DAPO: β 0, ε_low 0.2 / ε_high 0.28, token-level mean, dynamic sampling, overlong
                filtering and soft overlong punishment
    tiny_drgrpo Dr. GRPO: no std scaling, token sums over a constant normaliser
    tiny_gspo   GSPO: the length-normalised sequence ratio, clipped at 3e-4 / 4e-4
    tiny_kimi   Kimi k1.5: the squared surrogate with τ, optimizer reset each step, the length reward
    tiny_ppo    PPO (configs/rlhf.py:tiny_ppo's vanilla recipe) on the same problems: one response to each
                of 32 problems a step (GRPO's 4 x 8 samples), the verifier reward at the last token, the
                per-token KL to the reference in the reward (β 0.02), a critic from the SFT decoder, GAE
    tiny_long2short  Kimi k1.5's long2short by shortest rejection sampling: 8 samples per prompt from the
                k1.5 policy, fine-tuning on the shortest correct one; chains after tiny_kimi:

    python -m research.run --config configs/rlvr.py:tiny_long2short --workdir workdir/long2short_tiny \\
        --config.init_from.path=workdir/kimi_tiny

Switches of every variant: `rl.tools` (multi-turn rollouts with the sandboxed python tool, up to
`rl.max_tool_turns` calls; the tool_tasks suite is where it helps), `rl.sampling` ("curriculum",
"prioritized": Kimi k1.5's prompt sampling).

Chain after SFT (configs/rlhf.py:tiny_sft):

    python -m research.run --config configs/rlvr.py:tiny_grpo --workdir workdir/grpo_tiny \\
        --config.init_from.path=workdir/sft_tiny
"""

import os

import ml_collections

from research.config import load_module, parse_arg

LLAMA2 = load_module(os.path.join(os.path.dirname(__file__), "llama2.py"))
RLHF = load_module(os.path.join(os.path.dirname(__file__), "rlhf.py"))
VARIANTS = ("tiny_grpo", "tiny_dapo", "tiny_drgrpo", "tiny_gspo", "tiny_kimi", "tiny_ppo", "tiny_long2short")


def rl_config() -> ml_collections.ConfigDict:
    """GRPO as DeepSeekMath ran it, scaled down (research/train/trainers/grpo.py)."""
    return ml_collections.ConfigDict(dict(
        suites=("arithmetic",), problem_seed=0,
        prompts_per_step=4, group_size=8,  # G responses to each prompt
        max_prompt_len=128, max_new_tokens=128, temperature=1.0, top_p=1.0,
        loss="grpo",  # or "kimi"
        clip_low=0.2, clip_high=0.2, ratio_level="token", aggregation="seq_mean_token_mean",
        kl_coef=0.04, kl_estimator="k3", kl_in_reward=False,
        scale_by_std=True, std_floor=1e-3,
        inner_epochs=1, minibatches=1,  # μ passes over each batch, in this many updates each
        dynamic_sampling=False, max_refills=3,
        overlong_filter=False,
        soft_overlong=dict(enabled=False, max_length=128, cache_length=32),
        format_weight=0.0,
        kimi_tau=0.1, reset_optimizer=False,
        length_reward=dict(weight=0.0, warmup_steps=0),
        tools=False, max_tool_turns=2, tool_timeout_s=2.0,  # multi-turn rollouts with the sandboxed python tool
        sampling="uniform",  # or "curriculum" (easy to hard by curriculum_steps), "prioritized" (∝ 1 − success)
        pool_size=256, curriculum_steps=40,  # the problems "curriculum" and "prioritized" draw from
        long2short=False,  # fine-tune on the shortest correct response of each group (Kimi k1.5's long2short)
    ))


def ppo_config(config) -> ml_collections.ConfigDict:
    """PPO with verifiable rewards (research/train/trainers/ppo.py, `ppo.reward = "verifiers"`): vanilla PPO's
    fields, GRPO's sampling budget (prompts_per_step x group_size responses a step, one to each problem),
    its problems, lengths, temperature and reward (correctness + format weight + optional soft overlong)."""
    rl = rl_config()
    config = RLHF.ppo_config(config, ppo_max=False)
    config.ppo.update(reward="verifiers", prompts_per_step=rl.prompts_per_step * rl.group_size,
                      max_prompt_len=rl.max_prompt_len, max_new_tokens=rl.max_new_tokens,
                      temperature=rl.temperature, top_p=rl.top_p)
    for name in ("prompt_kinds", "num_prompts", "prompt_seed"):  # the helpfulness prompts: not read here
        del config.ppo[name]
    config.ppo.suites, config.ppo.problem_seed = rl.suites, rl.problem_seed
    config.ppo.format_weight, config.ppo.soft_overlong = rl.format_weight, rl.soft_overlong
    return config


def with_stage_fields(config) -> ml_collections.ConfigDict:
    """What every variant shares: 60 steps, greedy pass@1 on in-domain and held-out arithmetic every 20
    steps, the policy from the SFT run."""
    config.train.update(steps=60, log_every=5, checkpoint_every=20)
    config.evals = ml_collections.ConfigDict(dict(in_domain=RLHF.tasks_eval("train", every=20),
                                                  held_out=RLHF.tasks_eval("held_out", every=20)))
    config.init_from = ml_collections.ConfigDict(dict(kind="run", path="workdir/sft_tiny", parts="params",
                                                      into="policy"))
    return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_arg(arg, variant="tiny_grpo")
    if args.variant not in VARIANTS:
        raise ValueError(f"unknown rlvr variant {args.variant!r}; known: {VARIANTS}")
    config = LLAMA2.get_config("tiny")
    if args.variant == "tiny_ppo":
        return with_stage_fields(ppo_config(config))
    config.trainer = "grpo"
    config.rl = rl_config()
    with_stage_fields(config)
    config.optimizer.learning_rate = 1e-5
    config.optimizer.warmup_steps = 0
    config.optimizer.schedule = "constant"
    config.optimizer.weight_decay = 0.0
    rl = config.rl
    if args.variant == "tiny_dapo":
        rl.update(kl_coef=0.0, clip_high=0.28, aggregation="token_mean", dynamic_sampling=True, overlong_filter=True)
        rl.soft_overlong.enabled = True
    elif args.variant == "tiny_drgrpo":
        rl.update(kl_coef=0.0, scale_by_std=False, aggregation="seq_mean_token_sum_norm")
    elif args.variant == "tiny_gspo":
        rl.update(kl_coef=0.0, ratio_level="sequence", clip_low=3e-4, clip_high=4e-4)
    elif args.variant == "tiny_kimi":
        rl.update(loss="kimi", kl_coef=0.0, reset_optimizer=True)
        rl.length_reward.update(weight=0.5, warmup_steps=10)
    elif args.variant == "tiny_long2short":
        rl.update(long2short=True, kl_coef=0.0)
        config.train.steps = 20
        config.init_from.path = "workdir/kimi_tiny"
    return config
