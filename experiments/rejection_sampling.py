"""Rejection sampling as LLaMA-2 §3.2.3 runs it, and the reward gained by sampling more (its Figure 7 in
shape): K responses per prompt from the SFT policy, each scored by the reward model; the best becomes a
fine-tuning example, and the table shows the reward of the best of n samples against a typical one.

The policy and the reward model are the chain of experiments/runs.py (tiny LLaMA → tiny_sft → tiny_rm).
The table gives max@n, median@n and their gap for n = 1, 2, 4, ..., K (research/rl/rejection_sampling.py);
`best.jsonl` in the run's directory holds one conversation per prompt with its best response, ready for
the SFT trainer (`--config.data.sft.source=jsonl --config.data.sft.path=.../best.jsonl`: rejection-sampling
fine-tuning). Prompts are the helpfulness preference prompts (research/data/tasks/preferences.py) with a
seed apart from the reward model's training pairs.
"""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments.metadata import DOES_NOT_HOLD, HOLDS, HOLDS_IN_PART, Claim, Experiment, Outcome, Verdict
from experiments.runs import rlhf_chain
from research.data.reasoning import format_prompt, parse_completion, stop_ids
from research.data.tasks.preferences import preference_prompts
from research.data.tokenizer import get_tokenizer
from research.decoding.sampling import generate
from research.models import abstract_params, make_model
from research.models.value_model import last_values
from research.rl.rejection_sampling import best_of, reward_gain
from research.train.checkpoint import Checkpointer

PROMPT_SEED = 7  # apart from the reward model's pairs (seeds 0 and 1)
FULL = dict(k=8, prompts=64, temperature=1.0, max_new_tokens=48)
QUICK = dict(k=4, prompts=3, temperature=1.0, max_new_tokens=6)

EXPERIMENT = Experiment(
    name="rejection_sampling",
    title="Rejection sampling: the reward of the best of n samples (LLaMA-2 Figure 7 in shape)",
    paper="LLaMA-2 (Touvron et al., 2023)", arxiv="2307.09288", reproduces="Figure 7",
    claims=(Claim("gain", "the best of K samples scores above the median sample"),
            Claim("grows", "the gap between the best and the median grows with the number of samples")),
    full_scale="the chain on configs/llama2.py:7b (SFT, then a reward model from it), sampling on v5p-8",
    cpu_minutes=15,
)


def run_config(workdir: str) -> ml_collections.FrozenConfigDict:
    """The resolved config a run wrote into its workdir."""
    return ml_collections.FrozenConfigDict(json.loads((Path(workdir) / "config.json").read_text()))


def run_params(workdir: str, model_config):
    """The newest checkpoint's parameters of the run in `workdir`, on the first device."""
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                            abstract_params(model_config))
    with Checkpointer(Path(workdir) / "checkpoints", read_only=True) as reader:
        return reader.restore_params(reader.newest_step(), abstract)


def sample_and_score(policy_dir: Path, reward_dir: Path, settings: dict, seed: int):
    """(prompts, tokenizer, responses [prompts][K] as token lists, scores [prompts, K])."""
    args = ml_collections.ConfigDict(settings)
    policy_config, reward_config = run_config(policy_dir), run_config(reward_dir)
    tokenizer = get_tokenizer(policy_config.data)
    policy, reward = make_model(policy_config.model), make_model(reward_config.model)
    policy_params, reward_params = run_params(policy_dir, policy_config.model), run_params(reward_dir, reward_config.model)
    prompts = preference_prompts(args.prompts, PROMPT_SEED + seed, ("arithmetic", "string", "format"))
    encoded = [[tokenizer.bos_id] + tokenizer.encode(format_prompt(p.prompt)) for p in prompts]
    rows = [ids for ids in encoded for _ in range(args.k)]
    tokens = np.asarray(generate(policy, policy_params, rows, max_new_tokens=args.max_new_tokens,
                                 temperature=args.temperature, rng=jax.random.key(seed), eos_id=stop_ids(tokenizer),
                                 pad_id=tokenizer.pad_id))
    responses = []
    for row, ids in zip(tokens, rows):
        response = row[len(ids):len(ids) + args.max_new_tokens]
        stops = np.flatnonzero(np.isin(response, stop_ids(tokenizer)))
        responses.append(response[:stops[0] + 1] if stops.size else response)
    lengths = jnp.asarray([len(ids) + len(r) for ids, r in zip(rows, responses)])
    scores = last_values(jax.jit(reward.apply)({"params": reward_params}, jnp.asarray(tokens)), lengths)
    responses = [responses[i:i + args.k] for i in range(0, len(responses), args.k)]
    return prompts, tokenizer, responses, np.asarray(scores).reshape(len(prompts), args.k)


def write_best(path: Path, prompts, tokenizer, responses, scores) -> int:
    """The best response of each prompt as an SFT conversation in `path` (JSON lines), skipping those not
    well formed (a stray tag would break the chat template); the number written."""
    written = 0
    with open(path, "w") as examples:
        for prompt, candidates, best in zip(prompts, responses, best_of(scores)):
            parsed = parse_completion(tokenizer, candidates[best])
            if not parsed.well_formed:
                continue
            messages = [{"role": "user", "content": prompt.prompt},
                        {"role": "assistant", "content": parsed.answer, "reasoning": parsed.thinking}]
            examples.write(json.dumps({"messages": messages}) + "\n")
            written += 1
    return written


def run(out_dir: Path, *, quick: bool, seed: int) -> Outcome:
    settings = QUICK if quick else FULL
    dirs = rlhf_chain(out_dir / "chain", quick=quick, seed=seed)
    prompts, tokenizer, responses, scores = sample_and_score(dirs["sft"], dirs["reward"], settings, seed)
    written = write_best(out_dir / "best.jsonl", prompts, tokenizer, responses, scores)
    table = reward_gain(scores)
    rows = [{"n": n, **row} for n, row in table.items()]
    lines = [f"{settings['prompts']} helpfulness prompts, K = {settings['k']} samples each at temperature "
             f"{settings['temperature']}, {settings['max_new_tokens']} new tokens at most; policy tiny_sft, reward "
             "model tiny_rm (experiments/runs.py).", "", "| n | max@n | median@n | gain |", "|---|---|---|---|"]
    lines += [f"| {n} | {row['max']:.3f} | {row['median']:.3f} | {row['gain']:.3f} |" for n, row in table.items()]
    lines += ["", f"{written} of {len(prompts)} best responses were well formed and written to best.jsonl for "
              "fine-tuning."]
    ns = sorted(table)
    headline = {"gain_at_k": table[ns[-1]]["gain"], "gain_at_2": table[ns[1]]["gain"],
                "well_formed_best": written / len(prompts)}
    return Outcome(headline=headline, rows=rows, markdown="\n".join(lines))


def judge(headline: dict) -> dict:
    """Gain: max@K above median@K by more than the seeds' spread. Growth: the gain at K above the gain at 2."""
    gain, small = headline["gain_at_k"], headline["gain_at_2"]
    gain_verdict = (HOLDS if gain.mean > max(gain.std, 0.0) else HOLDS_IN_PART if gain.mean > 0 else DOES_NOT_HOLD)
    grows = gain.mean - small.mean
    return {"gain": Verdict(gain_verdict, f"best of K minus median: {gain.mean:.3f} ± {gain.std:.3f}"),
            "grows": Verdict(HOLDS if grows > 0 else DOES_NOT_HOLD,
                             f"gain at n = 2 {small.mean:.3f}, at n = K {gain.mean:.3f}")}
