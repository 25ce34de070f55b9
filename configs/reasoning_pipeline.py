"""The reasoning pipeline in miniature (Seed-Thinking-v1.5, DeepSeekMath, DAPO, Kimi k1.5): one config
per stage, each started from the one before with `init_from`.

    pretrain   next-token pretraining on the bundled CPython docs (configs/seed_thinking.py:tiny for the
               MoE, configs/llama2.py:tiny for the dense LLaMA)
    sft        supervised fine-tuning on worked solutions in the think-then-answer format
               (configs/rlhf.py:tiny_sft), from the pretraining run
    grpo, dapo, drgrpo, gspo, kimi
               RL with verifiable rewards from the SFT run (configs/rlvr.py's variants)
    ppo_rlvr   PPO with the same verifiable rewards and sampling budget from the SFT run, a critic from
               the SFT decoder (configs/rlvr.py:tiny_ppo)
    rm, ppo    the helpfulness reward model from the SFT run, then vanilla PPO against it (configs/rlhf.py)
    eval       no training: pass@1, pass@8, maj@8 (8 samples at temperature 1) and the mean response
               length on the in-domain and held-out-difficulty arithmetic problems of an RL run's policy

Arguments: `stage` (above) and `model` ("moe" or "llama"). Workdirs default to workdir/<model>_<stage>,
each stage reading the one before (eval reads <model>_grpo; `--config.init_from.path=...` picks another):

    python -m research.run --config configs/reasoning_pipeline.py:stage=pretrain --workdir workdir/moe_pretrain
    python -m research.run --config configs/reasoning_pipeline.py:stage=sft --workdir workdir/moe_sft
    python -m research.run --config configs/reasoning_pipeline.py:stage=grpo --workdir workdir/moe_grpo
    python -m research.run --config configs/reasoning_pipeline.py:stage=eval --workdir workdir/moe_eval

The mixture of experts adds its load-balancing and router z-losses (research/train/moe_aux.py) to the
SFT and GRPO objectives (PPO's objective, in "ppo" and "ppo_rlvr", leaves them out: its routers train without
them).
"""

import os

import ml_collections

from research.config import load_module, parse_arg

HERE = os.path.dirname(__file__)
LLAMA2 = load_module(os.path.join(HERE, "llama2.py"))
SEED_THINKING = load_module(os.path.join(HERE, "seed_thinking.py"))
RLHF = load_module(os.path.join(HERE, "rlhf.py"))
RLVR = load_module(os.path.join(HERE, "rlvr.py"))
RL_STAGES = ("grpo", "dapo", "drgrpo", "gspo", "kimi")
STAGES = ("pretrain", "sft", *RL_STAGES, "ppo_rlvr", "rm", "ppo", "eval")
MODELS = ("moe", "llama")
EVAL_SAMPLES = 8


def pretrain_config(model: str) -> ml_collections.ConfigDict:
    return SEED_THINKING.get_config("tiny") if model == "moe" else LLAMA2.get_config("tiny")


def with_model(config, model: str) -> ml_collections.ConfigDict:
    """`config` with its decoder replaced by `model`'s tiny one, keeping the stage's model family
    ("value" for a reward model), the tokenizer's vocabulary tied to the new decoder's."""
    decoder = pretrain_config(model).model
    decoder.family = config.model.family
    config.model = decoder
    config.data.vocab_size = decoder.get_ref("vocab_size")  # the tokenizer follows the model's vocabulary
    return config


def sampled_eval(split: str) -> dict:
    """pass@1, pass@k, maj@k over k = EVAL_SAMPLES samples at temperature 1 on 32 arithmetic problems of `split`."""
    return {**RLHF.tasks_eval(split), "samples": EVAL_SAMPLES, "temperature": 1.0}


def eval_config(model: str) -> ml_collections.ConfigDict:
    """No training steps: the final evaluation of an RL run's policy, read whole from its workdir."""
    config = with_model(RLVR.get_config("tiny_grpo"), model)
    config.rl.kl_coef = 0.0  # no reference: the parameters are the policy alone
    config.train.steps = 0
    config.evals = ml_collections.ConfigDict(dict(in_domain=sampled_eval("train"), held_out=sampled_eval("held_out")))
    config.init_from = ml_collections.ConfigDict(dict(kind="run", path=f"workdir/{model}_grpo", parts="params",
                                                      into=""))
    return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_arg(arg, stage="pretrain", model="moe")
    if args.stage not in STAGES:
        raise ValueError(f"unknown reasoning_pipeline stage {args.stage!r}; known: {STAGES}")
    if args.model not in MODELS:
        raise ValueError(f"unknown reasoning_pipeline model {args.model!r}; known: {MODELS}")
    model = args.model
    if args.stage == "pretrain":
        return pretrain_config(model)
    if args.stage == "eval":
        return eval_config(model)
    if args.stage in (*RL_STAGES, "ppo_rlvr"):
        variant = "tiny_ppo" if args.stage == "ppo_rlvr" else f"tiny_{args.stage}"
        config = with_model(RLVR.get_config(variant), model)
        config.init_from.path = f"workdir/{model}_sft"
        return config
    if args.stage == "sft":
        config = with_model(RLHF.get_config("tiny_sft"), model)
        config.init_from = ml_collections.ConfigDict(dict(kind="run", path=f"workdir/{model}_pretrain",
                                                          parts="params", into=""))
        return config
    config = with_model(RLHF.get_config(f"tiny_{args.stage}"), model)
    config.init_from.path = f"workdir/{model}_sft"
    if args.stage == "ppo":
        config.init_from.extra.reward.path = f"workdir/{model}_rm"
    return config
