"""Batches of policy rollouts on verifiable problems, rewarded by programs (RL with verifiable rewards).

Each step takes the next `prompts_per_step` problems of the task suites (research/data/tasks, their
order fixed by the seed), asks each `group_size` times in the think-then-answer format, samples the
responses on the devices (research/rl/rollout.py), and judges them on the host:

    reward r = verifier score of the answer (research/rl/verifiers: 1 correct, 0 otherwise)
               + format_weight · [the response is well formed]
               + DAPO's soft overlong punishment (optional)
               + Kimi k1.5's length reward within the group, weighted after a warm-up (optional)
               − β·Σ_t k1_t (optional: the KL to the reference folded into the reward)

Dynamic sampling (DAPO): a group whose rewards are all equal carries no signal under group-relative
advantages; it is dropped and replaced by the groups of further problems, up to `max_refills` extra
rollouts per step; if the batch is still short, dropped groups fill it (advantage 0) and are counted.
Prompts longer than `max_prompt_len` tokens are skipped and counted, never cut.

The batch carries what the loss needs (tokens, response mask, log-probs under the sampling policy and
the reference, the reward and the group advantage of each response) and scalar statistics that the
train step logs: mean reward, accuracy, response length, truncated share, and the counts above.
The host position (how many problems were taken) is saved with each checkpoint.
"""

import dataclasses
import functools
from collections import Counter

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from research.data.reasoning import parse_completion, stop_ids
from research.data.tasks import generate_problem
from research.rl.advantages import group_advantages
from research.rl.rewards import kimi_length_reward, length_reward_weight, soft_overlong_punishment
from research.rl.rollout import rollout
from research.rl.task_eval import prompt_ids
from research.rl.verifiers import format_score, problem_score
from research.train.batches import shard_batch

STATISTICS = ("reward", "accuracy", "format_rate", "response_length", "truncated", "kept_groups", "skipped_prompts",
              "refills")


def rollout_batch_spec(batch_size: int, length: int) -> dict:
    """The global batch: per-token fields `[B, T]` and per-response fields `[B]` over the data axes,
    statistics as replicated scalars."""
    def leaf(shape, dtype, axes):
        return nn.LogicallyPartitioned(jax.ShapeDtypeStruct(shape, dtype), axes)
    per_token = {name: leaf((batch_size, length), dtype, ("batch", None)) for name, dtype in (
        ("tokens", jnp.int32), ("response_mask", jnp.float32), ("old_log_probs", jnp.float32),
        ("ref_log_probs", jnp.float32))}
    per_response = {name: leaf((batch_size,), jnp.float32, ("batch",)) for name in ("rewards", "advantages",
                                                                                     "truncated", "correct")}
    return {**per_token, **per_response, "statistics": {name: leaf((), jnp.float32, ()) for name in STATISTICS}}


@dataclasses.dataclass
class ProblemStream:
    """Problems of `suites` in turn, problem i of suite s being `generate_problem(s, split, seed, i)`."""

    suites: tuple[str, ...]
    split: str
    seed: int
    taken: int = 0

    def take(self, count: int) -> list:
        problems = [generate_problem(self.suites[i % len(self.suites)], self.split, self.seed, i // len(self.suites))
                    for i in range(self.taken, self.taken + count)]
        self.taken += count
        return problems


class VerifiableRollouts:
    """The BatchSource of RL on verifiable problems (research/train/batches.py protocol)."""

    def __init__(self, model, tokenizer, rl_config, shardings):
        self.model, self.tokenizer, self.config, self.shardings = model, tokenizer, rl_config, shardings
        self.stream = ProblemStream(tuple(rl_config.suites), "train", rl_config.problem_seed)
        self.batch_size = rl_config.prompts_per_step * rl_config.group_size
        self.sample = jax.jit(functools.partial(
            rollout, model, max_new_tokens=rl_config.max_new_tokens, temperature=rl_config.temperature,
            top_p=rl_config.top_p, stop_ids=stop_ids(tokenizer), pad_id=tokenizer.pad_id))

    def init(self, rng) -> dict:
        return {}

    def host_state(self):
        return {"taken": self.stream.taken}

    def set_host_state(self, position) -> None:
        self.stream.taken = position["taken"]

    def prompts(self, count: int):
        """The next `count` problems whose prompts fit, and how many were skipped."""
        kept, skipped = [], 0
        while len(kept) < count:
            for problem in self.stream.take(count - len(kept)):
                ids = prompt_ids(self.tokenizer, problem)
                if len(ids) <= self.config.max_prompt_len:
                    kept.append((problem, ids))
                else:
                    skipped += 1
        return kept, skipped

    def rollouts(self, params, problems, rng):
        """(per-response host arrays, per-token device arrays) of `group_size` rollouts of each problem."""
        group = self.config.group_size
        prompts = np.full((len(problems) * group, self.config.max_prompt_len), self.tokenizer.pad_id, np.int32)
        lengths = np.zeros(len(problems) * group, np.int32)
        for index, (_, ids) in enumerate(problems):
            prompts[index * group:(index + 1) * group, :len(ids)] = ids
            lengths[index * group:(index + 1) * group] = len(ids)
        result = self.sample(params["policy"], jnp.asarray(prompts), jnp.asarray(lengths), rng,
                             reference_params=params.get("reference"))
        tokens = np.asarray(multihost_utils.process_allgather(result.tokens, tiled=True))
        mask = np.asarray(multihost_utils.process_allgather(result.response_mask, tiled=True))
        judged = [self.judge(problems[row // group][0], tokens[row][mask[row]]) for row in range(len(tokens))]
        host = {"score": np.array([j[0] for j in judged], np.float32),
                "well_formed": np.array([j[1] for j in judged], np.float32),
                "length": mask.sum(axis=1).astype(np.float32),
                "truncated": np.asarray(result.truncated, np.float32)}
        return host, result

    def judge(self, problem, response) -> tuple[float, bool]:
        """(verifier score, well formed) of one response's token ids; never raises on model text."""
        parsed = parse_completion(self.tokenizer, response)
        return problem_score(problem, parsed.answer).score, format_score(
            "<think>" + self.tokenizer.decode(response)).correct

    def rewards(self, host, result, step: int) -> np.ndarray:
        """Each response's reward at train step `step` (see the module docstring)."""
        c = self.config
        rewards = host["score"] + c.format_weight * host["well_formed"]
        if c.length_reward.weight:
            weight = length_reward_weight(step, warmup_steps=c.length_reward.warmup_steps, weight=c.length_reward.weight)
            rewards += np.asarray(weight * kimi_length_reward(jnp.asarray(host["length"]),
                                                              jnp.asarray(host["score"] == 1), c.group_size))
        if c.soft_overlong.enabled:
            rewards += np.asarray(soft_overlong_punishment(
                jnp.asarray(host["length"]), max_length=c.soft_overlong.max_length,
                cache_length=c.soft_overlong.cache_length))
        if c.kl_in_reward and result.ref_log_probs is not None:
            kl = np.asarray(jnp.sum(result.log_probs - result.ref_log_probs, axis=1))
            rewards -= c.kl_coef * kl
        return rewards.astype(np.float32)

    def next(self, train_state, source_state, rng):
        c, group = self.config, self.config.group_size
        kept, pool, skipped, refills = [], [], 0, 0
        while len(kept) < c.prompts_per_step:
            problems, skipped_now = self.prompts(c.prompts_per_step - len(kept))
            skipped += skipped_now
            host, result = self.rollouts(train_state.params, problems, jax.random.fold_in(rng, refills))
            rewards = self.rewards(host, result, int(train_state.step))
            for index in range(len(problems)):
                rows = slice(index * group, (index + 1) * group)
                informative = np.ptp(rewards[rows]) > 0 or not c.dynamic_sampling
                (kept if informative else pool).append((rows, host, result, rewards))
            if refills >= c.max_refills:
                break
            refills += 1
        chosen = (kept + pool)[:c.prompts_per_step]
        batch = self.assemble(chosen)
        batch["statistics"] = self.statistics(batch, min(len(kept), c.prompts_per_step), skipped, refills)
        return shard_batch(batch, self.shardings), source_state

    def assemble(self, chosen) -> dict:
        """The batch of the chosen groups, with group advantages over their rewards."""
        def rows_of(field):
            return np.concatenate([np.asarray(getattr(result, field))[rows] for rows, _, result, _ in chosen])
        rewards = np.concatenate([rewards[rows] for rows, _, _, rewards in chosen])
        reference = rows_of("ref_log_probs") if chosen[0][2].ref_log_probs is not None else rows_of("log_probs")
        advantages = group_advantages(jnp.asarray(rewards), self.config.group_size,
                                      scale_by_std=self.config.scale_by_std, std_floor=self.config.std_floor)
        return {
            "tokens": rows_of("tokens"), "response_mask": rows_of("response_mask").astype(np.float32),
            "old_log_probs": rows_of("log_probs"), "ref_log_probs": reference,
            "rewards": rewards, "advantages": np.asarray(advantages, np.float32),
            "truncated": np.concatenate([host["truncated"][rows] for rows, host, _, _ in chosen]),
            "correct": np.concatenate([(host["score"][rows] == 1).astype(np.float32) for rows, host, _, _ in chosen]),
            "well_formed": np.concatenate([host["well_formed"][rows] for rows, host, _, _ in chosen]),
        }

    def statistics(self, batch, kept_groups: int, skipped: int, refills: int) -> dict:
        well_formed = batch.pop("well_formed")
        return {name: np.float32(value) for name, value in Counter({
            "reward": batch["rewards"].mean(), "accuracy": batch["correct"].mean(), "format_rate": well_formed.mean(),
            "response_length": batch["response_mask"].sum(axis=1).mean(), "truncated": batch["truncated"].mean(),
            "kept_groups": kept_groups, "skipped_prompts": skipped, "refills": refills}).items()}
