"""Post-training as in LLaMA-2 (Touvron et al., 2023): supervised fine-tuning, then reward models and
reinforcement learning, each stage a run started from the one before with `init_from`.

Variants: `tiny_sft` (the tiny LLaMA fine-tuned on worked solutions of the procedural task suites,
loss on the answers only; minutes on a CPU). Chain from a pretraining run:

    python -m research.run --config configs/llama2.py:tiny --workdir workdir/llama2_tiny
    python -m research.run --config configs/rlhf.py:tiny_sft --workdir workdir/sft_tiny \\
        --config.init_from.kind=run --config.init_from.path=workdir/llama2_tiny

The SFT recipe follows LLaMA-2 §3.1 in shape: a cosine schedule at a learning rate below
pretraining's, weight decay 0.1, packed conversations, loss on the assistant's tokens.
"""

import os

import ml_collections

from research.config import load_module, parse_arg

LLAMA2 = load_module(os.path.join(os.path.dirname(__file__), "llama2.py"))
VARIANTS = ("tiny_sft",)


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


def tasks_eval(split: str, every: int = 0) -> dict:
    """Greedy accuracy on 32 arithmetic problems of `split`, drawn apart from training's (seed 1)
    (research/train/tasks_evaluator.py)."""
    return dict(kind="tasks", suites=("arithmetic",), split=split, count=32, seed=1, samples=1, temperature=0.0,
                max_new_tokens=128, every=every)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_arg(arg, variant="tiny_sft")
    if args.variant not in VARIANTS:
        raise ValueError(f"unknown rlhf variant {args.variant!r}; known: {VARIANTS}")
    config = LLAMA2.get_config("tiny")
    config.trainer = "sft"
    config.data.sft = sft_data()
    config.train.steps = 300
    config.train.seq_len = 512  # a worked solution with its prompt is up to ~400 tokens
    config.train.eval_every = 100
    config.evals = ml_collections.ConfigDict(dict(
        eval=config.evals.eval.to_dict(), in_domain=tasks_eval("train"), held_out=tasks_eval("held_out")))
    config.optimizer.learning_rate = 1e-3
    config.optimizer.warmup_steps = 20
    return config
