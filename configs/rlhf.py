"""Post-training as in LLaMA-2 (Touvron et al., 2023): supervised fine-tuning, then reward models and
reinforcement learning, each stage a run started from the one before with `init_from`.

Variants (the tiny LLaMA; minutes each on a CPU):
    tiny_sft        fine-tuned on worked solutions of the procedural task suites, loss on the answers only
    tiny_rm         a helpfulness reward model on programmatically judged preference pairs (arithmetic,
                    string, format), the ranking loss with LLaMA-2's small margin (`reward_model.margin`)
    tiny_safety_rm  the same for the safety pairs (banned topics: refuse or help)
    tiny_dpo        DPO (β 0.1) on the helpfulness pairs, the policy and its frozen reference from the SFT run
    tiny_orpo       ORPO (λ 0.1) on the same pairs, no reference
    tiny_ppo        vanilla PPO against the helpfulness reward model: clipped surrogate, per-token KL in
                    the reward (β 0.02), GAE (γ 1, λ 0.95), no other tricks
    tiny_ppo_max    PPO-max (MOSS-RLHF): reward normalised and clipped from running statistics,
                    advantages whitened and clipped, value clipping, the critic from the reward model,
                    global gradient clipping, a small buffer with several inner epochs and mini-batches;
                    PPO-ptx (`ppo.ptx_coef` > 0: the pretraining loss mixed in) is a switch of both

Every variant takes LoRA as a switch (`lora.enabled`, research/train/lora_state.py): adapters trained,
the base frozen, read from `lora.base` (e.g. kind "run", path workdir/sft_tiny) and never saved.

Chain from a pretraining run:

    python -m research.run --config configs/llama2.py:tiny --workdir workdir/llama2_tiny
    python -m research.run --config configs/rlhf.py:tiny_sft --workdir workdir/sft_tiny \\
        --config.init_from.kind=run --config.init_from.path=workdir/llama2_tiny
    python -m research.run --config configs/rlhf.py:tiny_rm --workdir workdir/rm_tiny \
        --config.init_from.path=workdir/sft_tiny
    python -m research.run --config configs/rlhf.py:tiny_ppo_max --workdir workdir/ppo_max_tiny
        (the policy from workdir/sft_tiny, the reward model and critic from workdir/rm_tiny by default)

The SFT recipe follows LLaMA-2 §3.1 in shape: a cosine schedule at a learning rate below
pretraining's, weight decay 0.1, packed conversations, loss on the assistant's tokens.
"""

import os

import ml_collections

from research.config import load_module, parse_arg
from research.models.lora import LLAMA_LORA_PATTERNS

LLAMA2 = load_module(os.path.join(os.path.dirname(__file__), "llama2.py"))
VARIANTS = ("tiny_sft", "tiny_rm", "tiny_safety_rm", "tiny_dpo", "tiny_orpo", "tiny_ppo", "tiny_ppo_max")


def sft_data() -> ml_collections.ConfigDict:
    """Conversations for supervised fine-tuning (research/data/sft.py), tokenized as the base model's data."""
    return ml_collections.ConfigDict(dict(
        source="tasks",  # "tasks": the procedural suites' worked solutions; "jsonl": `path` ({split} in it)
        suites=("arithmetic", "countdown", "knights_knaves"),
        count=3000,  # problems per suite
        problem_seed=0,  # the validation split draws with problem_seed + 1
        turns=1,  # problems per conversation (multi-turn when > 1)
        ghost_attention=False,  # one system instruction all answers obey, loss on the last turn only
        loss_on="last",  # "last": the final assistant turn; "all": every assistant turn
        path="",
    ))


def lora_fields(train_fully: tuple[str, ...] = (), into: str = "") -> ml_collections.ConfigDict:
    """LoRA as a switch for every trainer here (research/train/lora_state.py), off by default: adapters of
    `rank` on the weights `patterns` find, scaled α/r, the leaves `train_fully` finds trained whole (a
    new head), the rest frozen and read from `base` ({kind: "none" | "run" | "hf_llama", path, into});
    with LoRA on, `init_from.kind` stays "none"."""
    return ml_collections.ConfigDict(dict(enabled=False, rank=8, alpha=16.0, patterns=LLAMA_LORA_PATTERNS,
                                          train_fully=train_fully, base=dict(kind="none", path="", into=into)))


def tasks_eval(split: str, every: int = 0) -> dict:
    """Greedy accuracy on 32 arithmetic problems of `split`, drawn apart from training's (seed 1)
    (research/train/tasks_evaluator.py)."""
    return dict(kind="tasks", suites=("arithmetic",), split=split, count=32, seed=1, samples=1, temperature=0.0,
                max_new_tokens=128, every=every)


def reward_model_config(config, kinds: tuple[str, ...]) -> ml_collections.ConfigDict:
    """A reward model from the SFT run's decoder (LLaMA-2 §3.2.2: one epoch, a lower learning rate)."""
    config.trainer = "reward_model"
    config.model.family = "value"
    config.data.preferences = ml_collections.ConfigDict(dict(kinds=kinds, count=1500, seed=0))
    config.reward_model = ml_collections.ConfigDict(dict(margin="small"))  # "none", "small", "large"
    config.train.update(steps=150, seq_len=128, batch_size=16, eval_every=50)
    config.evals = ml_collections.ConfigDict(dict(preferences=dict(kind="preferences", every=50, batches=16)))
    config.init_from = ml_collections.ConfigDict(dict(kind="run", path="workdir/sft_tiny", parts="params",
                                                      into="backbone"))
    config.optimizer.update(learning_rate=3e-4, warmup_steps=10)
    config.lora = lora_fields(train_fully=(r"^head/",), into="backbone")  # the scalar head is new: trained whole
    return config


def preference_config(config, loss: str) -> ml_collections.ConfigDict:
    """DPO or ORPO on the helpfulness pairs (research/train/trainers/dpo.py), the policy from the SFT run."""
    config = reward_model_config(config, ("arithmetic", "string", "format"))
    config.trainer = "dpo"
    config.model.family = "llama"
    del config.reward_model
    config.preference = ml_collections.ConfigDict(dict(loss=loss, beta=0.1, orpo_lambda=0.1))
    config.init_from.into = "policy"
    config.optimizer.learning_rate = 5e-5
    config.lora = lora_fields()
    return config


def ppo_config(config, ppo_max: bool) -> ml_collections.ConfigDict:
    """PPO on the helpfulness prompts (research/train/trainers/ppo.py); every PPO-max trick a switch,
    on in `ppo_max` with MOSS-RLHF's values (its config_ppo.py), off in vanilla PPO."""
    config.trainer = "ppo"
    config.ppo = ml_collections.ConfigDict(dict(
        reward="model",  # the reward model's score; "verifiers": the task suites' (configs/rlvr.py:tiny_ppo)
        prompt_kinds=("arithmetic", "string", "format"), num_prompts=512, prompt_seed=2,
        prompts_per_step=16, max_prompt_len=64, max_new_tokens=32, temperature=0.8, top_p=0.9,
        kl_coef=0.02, kl_target=0.0, kl_horizon=10000, gamma=1.0, lam=0.95, clip=0.2,
        value_coef=1.0, critic_lr_scale=3.0, critic_from_reward=ppo_max,
        normalize_reward=ppo_max, reward_clip=10.0 if ppo_max else 0.0,
        normalize_advantage=ppo_max, advantage_clip=0.5 if ppo_max else 0.0,
        value_clip=0.2 if ppo_max else 0.0, entropy_coef=0.0,
        ptx_coef=0.0,  # PPO-ptx: + ptx_coef × the LM loss on train.batch_size rows of config.data's corpus
        inner_epochs=2 if ppo_max else 1, minibatches=2 if ppo_max else 1,
    ))
    config.train.update(steps=60, log_every=5, checkpoint_every=20, eval_every=0)
    config.evals = ml_collections.ConfigDict()
    extra = dict(reward=dict(kind="run", path="workdir/rm_tiny", into="reward"))
    config.init_from = ml_collections.ConfigDict(dict(kind="run", path="workdir/sft_tiny", parts="params",
                                                      into="policy", extra=extra))
    config.optimizer.update(learning_rate=1e-5, warmup_steps=0, schedule="constant", weight_decay=0.0,
                            b2=0.95, eps=1e-6, grad_clip_norm=1.0 if ppo_max else 0.0)
    config.lora = lora_fields()
    return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_arg(arg, variant="tiny_sft")
    if args.variant not in VARIANTS:
        raise ValueError(f"unknown rlhf variant {args.variant!r}; known: {VARIANTS}")
    config = LLAMA2.get_config("tiny")
    if args.variant == "tiny_rm":
        return reward_model_config(config, ("arithmetic", "string", "format"))
    if args.variant == "tiny_safety_rm":
        return reward_model_config(config, ("safety",))
    if args.variant in ("tiny_ppo", "tiny_ppo_max"):
        return ppo_config(config, args.variant == "tiny_ppo_max")
    if args.variant in ("tiny_dpo", "tiny_orpo"):
        return preference_config(config, args.variant.removeprefix("tiny_"))
    config.trainer = "sft"
    config.data.sft = sft_data()
    config.train.steps = 300
    config.train.seq_len = 512  # a worked solution with its prompt is up to ~400 tokens
    config.train.eval_every = 100
    config.evals = ml_collections.ConfigDict(dict(
        eval=config.evals.eval.to_dict(), in_domain=tasks_eval("train"), held_out=tasks_eval("held_out")))
    config.optimizer.learning_rate = 1e-3
    config.optimizer.warmup_steps = 20
    config.lora = lora_fields()
    return config
