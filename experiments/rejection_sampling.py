"""Rejection sampling as LLaMA-2 §3.2.3 runs it, and the reward gained by sampling more (its Figure 7 in
shape): K responses per prompt from the SFT policy, each scored by the reward model; the best becomes a
fine-tuning example, and the table shows the reward of the best of n samples against a typical one.

    python -m experiments.rejection_sampling --policy SFT_WORKDIR --reward RM_WORKDIR [--k 8]
        [--prompts 64] [--temperature 1.0] [--max-new-tokens 48] [--output PATH]

Writes <output>.md (max@n, median@n and their gap for n = 1, 2, 4, ..., K; research/rl/rejection_sampling.py)
and <output>.jsonl: one conversation per prompt with its best response, ready for the SFT trainer
(`--config.data.sft.source=jsonl --config.data.sft.path=<output>.jsonl`: rejection-sampling fine-tuning).
Prompts are the helpfulness preference prompts (research/data/tasks/preferences.py) with a seed apart
from the reward model's training pairs.
"""

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from research.data.reasoning import format_prompt, parse_completion, stop_ids
from research.data.tasks.preferences import preference_prompts
from research.data.tokenizer import get_tokenizer
from research.decoding.sampling import generate
from research.models import abstract_params, make_model
from research.models.value_model import last_values
from research.rl.rejection_sampling import best_of, reward_gain
from research.train.checkpoint import Checkpointer

PROMPT_SEED = 7  # apart from the reward model's pairs (seeds 0 and 1)


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


def sample_and_score(args):
    """(prompts, responses [prompts][K] as token lists, scores [prompts, K])."""
    policy_config, reward_config = run_config(args.policy), run_config(args.reward)
    tokenizer = get_tokenizer(policy_config.data)
    policy, reward = make_model(policy_config.model), make_model(reward_config.model)
    policy_params, reward_params = run_params(args.policy, policy_config.model), run_params(args.reward, reward_config.model)
    prompts = preference_prompts(args.prompts, PROMPT_SEED, ("arithmetic", "string", "format"))
    encoded = [[tokenizer.bos_id] + tokenizer.encode(format_prompt(p.prompt)) for p in prompts]
    rows = [ids for ids in encoded for _ in range(args.k)]
    tokens = np.asarray(generate(policy, policy_params, rows, max_new_tokens=args.max_new_tokens,
                                 temperature=args.temperature, rng=jax.random.key(0), eos_id=stop_ids(tokenizer),
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


def report(table: dict, args) -> str:
    lines = ["# Rejection sampling: the reward of the best of n samples (LLaMA-2 Figure 7 in shape)", "",
             f"Policy {args.policy}, reward model {args.reward}; {args.prompts} helpfulness prompts, K = {args.k} "
             f"samples each at temperature {args.temperature}, {args.max_new_tokens} new tokens at most.", "",
             "| n | max@n | median@n | gain |", "|---|---|---|---|"]
    lines += [f"| {n} | {row['max']:.3f} | {row['median']:.3f} | {row['gain']:.3f} |" for n, row in table.items()]
    k = max(table)
    lines += ["", f"Verdict: the best of {k} samples scores {table[k]['gain']:.3f} above the median sample "
              f"({'a gain, as LLaMA-2 reports' if table[k]['gain'] > 0 else 'no gain'}); LLaMA-2 reports the gap "
              "growing with the number of samples."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", required=True, help="the SFT run's workdir")
    parser.add_argument("--reward", required=True, help="the reward model run's workdir")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--output", default="experiments/results/rejection_sampling")
    args = parser.parse_args(argv)
    prompts, tokenizer, responses, scores = sample_and_score(args)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(output.with_suffix(".jsonl"), "w") as examples:
        for prompt, candidates, best in zip(prompts, responses, best_of(scores)):
            parsed = parse_completion(tokenizer, candidates[best])
            if not parsed.well_formed:  # a stray tag would break the chat template: not a training example
                continue
            messages = [{"role": "user", "content": prompt.prompt},
                        {"role": "assistant", "content": parsed.answer, "reasoning": parsed.thinking}]
            examples.write(json.dumps({"messages": messages}) + "\n")
            written += 1
    text = report(reward_gain(scores), args) + f"\n{written} of {len(prompts)} best responses were well formed " \
        f"and written to {output.with_suffix('.jsonl')} for fine-tuning.\n"
    output.with_suffix(".md").write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
