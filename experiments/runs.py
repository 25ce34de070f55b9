"""Runs an experiment trains: each in its own workdir, reused when finished, resumed when interrupted;
and the chain of runs the post-training experiments start from (pretrain → SFT → reward model)."""

import json
from pathlib import Path

import jax

from research import config as config_lib
from research.train import loop

# the quick chain's model: byte tokenizer, 2 layers of width 32 (a minute on 2 cores for all three runs)
QUICK_MODEL = ["model.dim=32", "model.num_layers=2", "model.num_heads=4", "model.num_kv_heads=2",
               "model.hidden_dim=64", "model.vocab_size=265", "data.tokenizer=byte", "optimizer.warmup_steps=2",
               "train.log_every=1", "train.checkpoint_every=0"]
QUICK_STAGES = {"pretrain": ["train.steps=4", "train.eval_every=0", "evals.samples.prompts=()"],
                "sft": ["train.steps=4", "train.eval_every=0", "data.sft.count=40", "evals.held_out.count=4",
                        "evals.in_domain.count=4", "evals.held_out.max_new_tokens=8", "evals.in_domain.max_new_tokens=8"],
                "reward": ["train.steps=4", "evals.preferences.batches=1"]}


def train_or_reuse(config, workdir: Path) -> dict:
    """results.json of the run in `workdir`, training (or resuming) it first unless it finished, on one
    device; ValueError for a workdir written by another config."""
    written = workdir / "config.json"
    if written.exists() and json.loads(written.read_text()) != json.loads(json.dumps(config.to_dict(), default=str)):
        raise ValueError(f"{workdir} holds a run of another config; use another --workdir")
    results = workdir / "results.json"
    if results.exists():
        return json.loads(results.read_text())
    return loop.train(config, str(workdir), devices=jax.devices()[:1])


def stage_config(spec: str, stage: str, *, quick: bool, seed: int, overrides=()):
    """`spec`'s config for one stage of the chain with the seed set; quick: the tiny model, few steps."""
    fields = [f"seed={seed}", *overrides]
    if quick:
        fields = QUICK_MODEL + QUICK_STAGES[stage] + fields
    return config_lib.load(spec, fields)


def rlhf_chain(work: Path, *, quick: bool, seed: int) -> dict[str, Path]:
    """The tiny LLaMA pretrained, fine-tuned on conversations (configs/rlhf.py:tiny_sft) and the
    helpfulness reward model started from it (tiny_rm), each trained once in work/<stage>; their workdirs."""
    dirs = {stage: work / stage for stage in ("pretrain", "sft", "reward")}
    train_or_reuse(stage_config("configs/llama2.py:tiny", "pretrain", quick=quick, seed=seed), dirs["pretrain"])
    train_or_reuse(stage_config("configs/rlhf.py:tiny_sft", "sft", quick=quick, seed=seed, overrides=[
        "init_from.kind=run", f"init_from.path={dirs['pretrain']}"]), dirs["sft"])
    train_or_reuse(stage_config("configs/rlhf.py:tiny_rm", "reward", quick=quick, seed=seed, overrides=[
        f"init_from.path={dirs['sft']}"]), dirs["reward"])
    return dirs
