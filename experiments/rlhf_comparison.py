"""Rejection sampling against PPO and DPO from one SFT policy, on the same preference data and prompts.

LLaMA-2 (§3.2.3) improves its chat model by rejection-sampling fine-tuning and by PPO against its
reward model; DPO (Rafailov et al., 2023) learns from the preference pairs without a reward model.
Here all three start from the tiny SFT run and are scored on held-out helpfulness prompts whose answers
a program judges (research/data/tasks/preferences.py):

    sft                 the SFT policy itself
    rejection_sampling  K samples per training prompt from the SFT policy, the best by the reward model
                        kept when well formed (research/rl/rejection_sampling.py), then SFT on those
    ppo                 PPO-max against the reward model (the ppo_max experiment's arm, reused)
    dpo                 DPO (β 0.1) on the reward model's training pairs (configs/rlhf.py:tiny_dpo)

Each policy answers every held-out prompt once at temperature 1 (the distribution it was trained to
be); per arm: the reward model's mean score, the judge's mean score in [0, 1] of the parsed answers
(a response that does not close its thinking answers nothing), and the KL to the SFT policy,
estimated as the mean over responses of Σ_t log π(y_t) − log π_SFT(y_t) on its own samples.

    python -m experiments run rlhf_comparison [--quick]
"""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import ppo_max
from experiments.metadata import DOES_NOT_HOLD, HOLDS, HOLDS_IN_PART, Claim, Estimate, Experiment, Outcome, Verdict
from experiments.runs import train_or_reuse
from research import config as config_lib
from research.data.reasoning import format_prompt, parse_completion, stop_ids
from research.data.tasks.preferences import judge as judge_answer, preference_prompts
from research.data.tokenizer import get_tokenizer
from research.models import abstract_params, make_model
from research.models.value_model import last_values
from research.rl.rejection_sampling import best_of
from research.rl.rollout import rollout
from research.train.checkpoint import Checkpointer
from research.train.trainers.ppo import value_config

ARMS = ("sft", "rejection_sampling", "ppo", "dpo")
KINDS = ("arithmetic", "string", "format")
TRAIN_PROMPT_SEED, EVAL_PROMPT_SEED = 11, 12  # apart from the reward model's pairs (0, 1) and PPO's prompts (2)
FULL = dict(rs_prompts=128, k=4, eval_prompts=64, rs_steps=["train.steps=60"], dpo_steps=["train.steps=100"])
QUICK = dict(rs_prompts=8, k=2, eval_prompts=8, rs_steps=["train.steps=2"], dpo_steps=["train.steps=2"])

EXPERIMENT = Experiment(
    name="rlhf_comparison",
    title="Rejection sampling, PPO and DPO from one SFT policy: reward, judged accuracy and KL",
    paper="Llama 2: Open Foundation and Fine-Tuned Chat Models (Touvron et al., 2023), with DPO "
          "(Rafailov et al., 2023)",
    arxiv="2307.09288",
    reproduces="§3.2.3 (rejection sampling and PPO) beside DPO, as one table",
    claims=(
        Claim("reward", "Rejection sampling, PPO and DPO each raise the reward-model score of the SFT policy."),
        Claim("judged", "The gains are real, not reward hacking: a method that raises the reward-model score "
                        "also raises the held-out judge's score."),
    ),
    full_scale="configs/rlhf.py at model=7b: SFT and reward model on a v5p-64 slice, K=10 rejection samples "
               "from the 70B model as LLaMA-2 does",
    cpu_minutes=7.3,  # measured on the medium scale (experiments/results/rlhf_comparison.md), the SFT, RM and PPO
    #                   runs reused from experiments/ppo_max.py, at a machine load of ~30
)


def run_config(workdir: Path) -> ml_collections.FrozenConfigDict:
    return ml_collections.FrozenConfigDict(json.loads((workdir / "config.json").read_text()))


def newest_params(workdir: Path, abstract):
    """The newest checkpoint's parameters of the run in `workdir`, laid out as `abstract`, on one device."""
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    placed = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract)
    with Checkpointer(workdir / "checkpoints", read_only=True) as reader:
        return reader.restore_params(reader.newest_step(), placed)


def policy_of(arm: str, workdir: Path, model_config):
    """The policy parameters an arm's run saved: the whole tree (SFT) or its "policy" subtree (DPO, PPO)."""
    policy = abstract_params(model_config)
    if arm in ("sft", "rejection_sampling"):
        return newest_params(workdir, policy)
    value = abstract_params(value_config(model_config))
    tree = {"policy": policy, "reference": policy} | ({"value": value, "reward": value} if arm == "ppo" else {})
    return newest_params(workdir, tree)["policy"]


class Sampler:
    """Responses of a policy to encoded prompts, their reward-model scores and their log-probs under the SFT policy."""

    def __init__(self, sft: Path, rm: Path, max_new_tokens: int, max_prompt_len: int):
        config = run_config(sft)
        self.model_config, self.tokenizer = config.model, get_tokenizer(config.data)
        self.policy, self.critic = make_model(config.model), make_model(run_config(rm).model)
        self.sft_params = policy_of("sft", sft, config.model)
        self.reward_params = newest_params(rm, abstract_params(run_config(rm).model))
        self.max_new_tokens, self.max_prompt_len = max_new_tokens, max_prompt_len
        self.sample = jax.jit(self.sample_and_score)

    def encode(self, prompts):
        """(kept prompts, table [N, P], lengths [N]): those of at most `max_prompt_len` tokens."""
        rows = [(p, [self.tokenizer.bos_id] + self.tokenizer.encode(format_prompt(p.prompt))) for p in prompts]
        rows = [(p, ids) for p, ids in rows if len(ids) <= self.max_prompt_len]
        table = np.full((len(rows), self.max_prompt_len), self.tokenizer.pad_id, np.int32)
        for index, (_, ids) in enumerate(rows):
            table[index, :len(ids)] = ids
        return [p for p, _ in rows], jnp.asarray(table), jnp.asarray([len(ids) for _, ids in rows], jnp.int32)

    def sample_and_score(self, params, table, lengths, rng):
        result = rollout(self.policy, params, table, lengths, rng, max_new_tokens=self.max_new_tokens,
                         stop_ids=stop_ids(self.tokenizer), pad_id=self.tokenizer.pad_id,
                         reference_params=self.sft_params)
        scores = last_values(self.critic.apply({"params": self.reward_params}, result.tokens),
                             lengths + result.response_lengths)
        kl = jnp.sum(jnp.where(result.response_mask, result.log_probs - result.ref_log_probs, 0.0), axis=1)
        return result.tokens, scores, kl

    def responses(self, tokens, lengths):
        """Each row's parsed response (research/data/reasoning.py `parse_completion`)."""
        return [parse_completion(self.tokenizer, row[start:start + self.max_new_tokens])
                for row, start in zip(np.asarray(tokens), np.asarray(lengths))]


def rejection_sampling_run(sampler: Sampler, root: Path, *, quick: bool, seed: int) -> Path:
    """SFT on the reward model's best of K samples per training prompt, the well-formed ones; the run's workdir."""
    scale = QUICK if quick else FULL
    workdir = root / "rejection_sampling"
    data = root / "rejection_sampling_{split}.jsonl"
    prompts, table, lengths = sampler.encode(preference_prompts(scale["rs_prompts"], TRAIN_PROMPT_SEED, KINDS))
    repeated = jnp.repeat(table, scale["k"], axis=0), jnp.repeat(lengths, scale["k"])
    tokens, scores, _ = sampler.sample(sampler.sft_params, *repeated, jax.random.key(seed))
    responses = sampler.responses(tokens, repeated[1])
    lines = []
    for index, (prompt, best) in enumerate(zip(prompts, best_of(np.asarray(scores).reshape(len(prompts), -1)))):
        parsed = responses[index * scale["k"] + best]
        if parsed.well_formed:
            lines.append(json.dumps({"messages": [{"role": "user", "content": prompt.prompt}, {
                "role": "assistant", "content": parsed.answer, "reasoning": parsed.thinking}]}))
    if not lines:
        return root / "sft"  # nothing well formed to fine-tune on: the arm is the SFT policy
    for split in ("train", "validation"):
        Path(str(data).format(split=split)).write_text("\n".join(lines) + "\n")
    overrides = ppo_max.scale(quick)["model"] + ppo_max.scale(quick)["sft"] + scale["rs_steps"] + [
        f"seed={seed}", "data.sft.source=jsonl", f"data.sft.path={data}", "init_from.kind=run",
        f"init_from.path={root / 'sft'}", "optimizer.learning_rate=1e-4", "optimizer.warmup_steps=0",
        "train.checkpoint_every=0", f"train.batch_size={min(len(lines), 8)}"]
    train_or_reuse(config_lib.load("configs/rlhf.py:tiny_sft", overrides), workdir)
    return workdir


def dpo_run(root: Path, *, quick: bool, seed: int) -> Path:
    scale = QUICK if quick else FULL
    overrides = ppo_max.scale(quick)["model"] + ppo_max.scale(quick)["rm"] + scale["dpo_steps"] + [
        f"seed={seed}", f"init_from.path={root / 'sft'}", "train.checkpoint_every=0"]
    workdir = root / "dpo"
    train_or_reuse(config_lib.load("configs/rlhf.py:tiny_dpo", overrides), workdir)
    return workdir


def evaluate(sampler: Sampler, params, prompts, table, lengths, seed: int) -> dict[str, float]:
    tokens, scores, kl = sampler.sample(params, table, lengths, jax.random.key(seed + 1))
    judged = [judge_answer(p.kind, p.spec, r.answer) for p, r in zip(prompts, sampler.responses(tokens, lengths))]
    return {"reward": float(np.mean(scores)), "judge": float(np.mean(judged)), "kl": float(np.mean(kl))}


def run(out_dir: Path, *, quick: bool, seed: int) -> Outcome:
    """Trains (or reuses) the runs of every arm, then scores each policy on the held-out prompts."""
    out_dir = Path(out_dir)
    root = out_dir / "runs" if quick else ppo_max.WORKDIR / f"rlhf_seed{seed}"
    sft, rm = ppo_max.sft_and_reward_runs(root, quick=quick, seed=seed)
    ppo = root / "ppo_ppo_max"
    train_or_reuse(ppo_max.arm_config("ppo_max", quick=quick, seed=seed, sft=sft, rm=rm), ppo)
    ppo_config = run_config(ppo).ppo
    sampler = Sampler(sft, rm, ppo_config.max_new_tokens, ppo_config.max_prompt_len)
    workdirs = {"sft": sft, "rejection_sampling": rejection_sampling_run(sampler, root, quick=quick, seed=seed),
                "ppo": ppo, "dpo": dpo_run(root, quick=quick, seed=seed)}
    scale = QUICK if quick else FULL
    prompts, table, lengths = sampler.encode(preference_prompts(scale["eval_prompts"], EVAL_PROMPT_SEED, KINDS))
    results = {arm: evaluate(sampler, policy_of("sft" if workdirs[arm] == sft else arm, workdirs[arm],
                                                sampler.model_config), prompts, table, lengths, seed)
               for arm in ARMS}
    headline = {f"{arm}_{name}": value for arm, numbers in results.items() for name, value in numbers.items()}
    rows = [{"arm": arm, **numbers} for arm, numbers in results.items()]
    return Outcome(headline=headline, rows=rows, markdown=markdown(results, len(prompts), quick=quick))


def markdown(results: dict, prompts: int, *, quick: bool) -> str:
    setting = "quick: 2-layer byte-level model, a few steps per run" if quick else "the tiny LLaMA"
    lines = ["# Rejection sampling vs PPO vs DPO from one SFT policy", "",
             f"Setting: {setting}; {prompts} held-out helpfulness prompts (arithmetic, string, format), one "
             "response each at temperature 1. Reward: the reward model's mean score; judge: the programmatic "
             "judge's mean score in [0, 1]; KL: mean Σ_t log π − log π_SFT over the responses (nats).", "",
             "| method | reward | judge | KL to SFT |", "|---|---|---|---|"]
    lines += [f"| {arm} | {r['reward']:.3f} | {r['judge']:.3f} | {r['kl']:.3f} |" for arm, r in results.items()]
    return "\n".join(lines) + "\n"


def judge(headline: dict[str, Estimate]) -> dict[str, Verdict]:
    methods = ARMS[1:]
    gains = {m: headline[f"{m}_reward"].mean - headline["sft_reward"].mean for m in methods}
    judged = {m: headline[f"{m}_judge"].mean - headline["sft_judge"].mean for m in methods}
    listed = ", ".join(f"{m} {gains[m]:+.3f}" for m in methods)
    raised = [m for m in methods if gains[m] > 0]
    reward = Verdict(HOLDS if len(raised) == len(methods) else HOLDS_IN_PART if raised else DOES_NOT_HOLD,
                     f"reward-model score over SFT's {headline['sft_reward'].mean:.3f}: {listed}")
    carried = [m for m in raised if judged[m] > 0]
    judge_text = ", ".join(f"{m} reward {gains[m]:+.3f} / judge {judged[m]:+.3f}" for m in methods)
    if not raised:
        judged_verdict = Verdict(DOES_NOT_HOLD, f"no method raised the reward-model score: {judge_text}")
    else:
        status = HOLDS if len(carried) == len(raised) else HOLDS_IN_PART if carried else DOES_NOT_HOLD
        judged_verdict = Verdict(status, f"{len(carried)} of {len(raised)} methods with a reward gain also raised the "
                                         f"judge's score over SFT's {headline['sft_judge'].mean:.3f}: {judge_text}")
    return {"reward": reward, "judged": judged_verdict}
