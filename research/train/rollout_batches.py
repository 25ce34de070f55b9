"""Batches of policy rollouts on verifiable problems, rewarded by programs (RL with verifiable rewards).

Each step takes the next `prompts_per_step` problems of the task suites (research/data/tasks, their
order fixed by the seed; or, with `sampling` "curriculum" or "prioritized", draws them from a pool of
`pool_size` problems by research/rl/prompt_sampling.py, its running success counts the batch source's
array state, checkpointed), asks each `group_size` times in the think-then-answer format, samples the
responses on the devices (research/rl/rollout.py; with `tools`, multi-turn with the sandboxed `python`
tool, research/rl/agentic_rollout.py, the answer of the last turn judged), and judges them on the host:

    reward r = verifier score of the answer (research/rl/verifiers: 1 correct, 0 otherwise)
               + format_weight · [the response is well formed]
               + DAPO's soft overlong punishment (optional)
               + Kimi k1.5's length reward within the group, weighted after a warm-up (optional)
               − β·Σ_t k1_t (optional: the KL to the reference folded into the reward)

With `long2short` the advantage of each response is instead its long2short weight (research/rl/long2short.py:
1 for the shortest correct response of its group, 0 otherwise): the policy fine-tunes on those.

Dynamic sampling (DAPO): a group whose rewards are all equal carries no signal under group-relative
advantages; it is dropped and replaced by the groups of further problems, up to `max_refills` extra
rollouts per step; if the batch is still short, dropped groups fill it (advantage 0) and are counted.
Prompts longer than `max_prompt_len` tokens are skipped and counted, never cut.

The batch carries what the loss needs (tokens, response mask, log-probs under the sampling policy and
the reference, the reward and the group advantage of each response) and scalar statistics that the
train step logs: mean reward, accuracy, response length, truncated share, tool calls per response, the
mean normalised difficulty of the problems, and the counts above.
The host position (how many problems were taken) is saved with each checkpoint. The problem order, the
prompts that fit, the judging and the verifier reward are functions here that PPO's rollouts on the same
problems share (research/train/ppo_verifier_rollouts.py).
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
from research.data.tasks.suites import SUITES
from research.rl.advantages import group_advantages
from research.rl.agentic_rollout import agentic_rollout
from research.rl.long2short import shortest_correct_weights
from research.rl.prompt_sampling import draw_problems, normalised_difficulty, sampling_probabilities, updated_counts
from research.rl.rewards import kimi_length_reward, length_reward_weight, soft_overlong_punishment
from research.rl.rollout import rollout
from research.rl.task_eval import prompt_ids
from research.rl.tool_calls import run_python, tools_prompt_ids
from research.rl.verifiers import format_score, problem_score
from research.train.batches import shard_batch

STATISTICS = ("reward", "accuracy", "format_rate", "response_length", "truncated", "tool_calls", "difficulty",
              "kept_groups", "skipped_prompts", "refills")


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


def fitting_prompts(stream: ProblemStream, prompt_ids, count: int, max_prompt_len: int) -> tuple[list, int]:
    """The next `count` (problem, prompt ids) of `stream` whose prompts (`prompt_ids(problem)`) have at most
    `max_prompt_len` tokens, and how many it skipped: a prompt is skipped, never cut."""
    kept, skipped = [], 0
    while len(kept) < count:
        for problem in stream.take(count - len(kept)):
            ids = prompt_ids(problem)
            if len(ids) <= max_prompt_len:
                kept.append((problem, ids))
            else:
                skipped += 1
    return kept, skipped


def padded_prompts(prompts: list, length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(prompts right-padded with `pad_id` to `[B, length]` int32, their lengths `[B]` int32)."""
    padded = np.full((len(prompts), length), pad_id, np.int32)
    for row, ids in enumerate(prompts):
        padded[row, :len(ids)] = ids
    return padded, np.array([len(ids) for ids in prompts], np.int32)


def response_ids(result) -> list[np.ndarray]:
    """Each row's response token ids (its mask's tokens) of the Rollout `result`, gathered from every process."""
    tokens = np.asarray(multihost_utils.process_allgather(result.tokens, tiled=True))
    mask = np.asarray(multihost_utils.process_allgather(result.response_mask, tiled=True))
    return [tokens[row][mask[row]] for row in range(tokens.shape[0])]


def judge_response(tokenizer, problem, response) -> tuple[float, bool]:
    """(verifier score, well formed) of one response's token ids to `problem`; never raises on model text."""
    parsed = parse_completion(tokenizer, response)
    return problem_score(problem, parsed.answer).score, format_score("<think>" + tokenizer.decode(response)).correct


def verifier_rewards(score, well_formed, lengths, config) -> np.ndarray:
    """r = score + format_weight·well_formed + DAPO's soft overlong punishment of the response lengths (when
    `config.soft_overlong.enabled`): float32 `[B]`, from host arrays `[B]` (the shared part of every
    verifiable reward; `config` is a trainer's `rl` or `ppo` fields)."""
    rewards = score + config.format_weight * well_formed
    if config.soft_overlong.enabled:
        rewards = rewards + np.asarray(soft_overlong_punishment(
            jnp.asarray(lengths), max_length=config.soft_overlong.max_length,
            cache_length=config.soft_overlong.cache_length))
    return np.asarray(rewards, np.float32)


def difficulty_of(problems) -> np.ndarray:
    """Each problem's normalised difficulty (research/rl/prompt_sampling.py) among its suite's training levels."""
    return normalised_difficulty([p.difficulty for p in problems],
                                 [SUITES[p.suite].DIFFICULTIES["train"] for p in problems])


class VerifiableRollouts:
    """The BatchSource of RL on verifiable problems (research/train/batches.py protocol)."""

    def __init__(self, model, tokenizer, rl_config, shardings):
        self.model, self.tokenizer, self.config, self.shardings = model, tokenizer, rl_config, shardings
        self.stream = ProblemStream(tuple(rl_config.suites), "train", rl_config.problem_seed)
        self.batch_size = rl_config.prompts_per_step * rl_config.group_size
        self.prompt_ids = functools.partial(tools_prompt_ids if rl_config.tools else prompt_ids, tokenizer)
        self.sample = jax.jit(functools.partial(
            rollout, model, max_new_tokens=rl_config.max_new_tokens, temperature=rl_config.temperature,
            top_p=rl_config.top_p, stop_ids=stop_ids(tokenizer), pad_id=tokenizer.pad_id))
        self.pool = self.problem_pool() if rl_config.sampling != "uniform" else None
        self.pool_difficulty = None if self.pool is None else difficulty_of([problem for problem, _ in self.pool])

    def problem_pool(self) -> list:
        """(problem, prompt ids) of the first `pool_size` problems of the stream whose prompts fit."""
        pool = [(problem, self.prompt_ids(problem)) for problem in ProblemStream(
            tuple(self.config.suites), "train", self.config.problem_seed).take(self.config.pool_size)]
        pool = [(problem, ids) for problem, ids in pool if len(ids) <= self.config.max_prompt_len]
        if not pool:
            raise ValueError(f"config field rl.pool_size: none of its {self.config.pool_size} problems has a prompt "
                             f"within rl.max_prompt_len {self.config.max_prompt_len}")
        return pool

    def init(self, rng) -> dict:
        """The running success counts of the pool's problems (none when sampling the stream uniformly)."""
        if self.pool is None:
            return {}
        return {"attempts": jnp.zeros(len(self.pool), jnp.float32), "successes": jnp.zeros(len(self.pool), jnp.float32)}

    def host_state(self):
        return {"taken": self.stream.taken}

    def set_host_state(self, position) -> None:
        self.stream.taken = position["taken"]

    def prompts(self, count: int, counts: dict, step: int, draw: int):
        """`count` (problem, prompt ids, pool index or None) whose prompts fit, and how many were skipped:
        the next of the stream, or drawn from the pool with the running `counts` at `step`."""
        if self.pool is not None:
            c = self.config
            probabilities = sampling_probabilities(
                c.sampling, difficulty=self.pool_difficulty, step=step,
                curriculum_steps=c.curriculum_steps, attempts=counts["attempts"], successes=counts["successes"])
            indices = draw_problems(probabilities, count, seed=c.problem_seed, step=step, draw=draw)
            return [(*self.pool[index], index) for index in indices], 0
        kept, skipped = fitting_prompts(self.stream, self.prompt_ids, count, self.config.max_prompt_len)
        return [(problem, ids, None) for problem, ids in kept], skipped

    def rollouts(self, params, problems, rng):
        """(per-response host arrays, per-token device arrays) of `group_size` rollouts of each problem."""
        group = self.config.group_size
        prompts = [ids for _, ids, _ in problems for _ in range(group)]
        result, answered, tool_calls = (self.multi_turn if self.config.tools else self.single_turn)(params, prompts, rng)
        mask = np.asarray(multihost_utils.process_allgather(result.response_mask, tiled=True))
        judged = [self.judge(problems[row // group][0], response) for row, response in enumerate(answered)]
        host = {"score": np.array([j[0] for j in judged], np.float32),
                "well_formed": np.array([j[1] for j in judged], np.float32),
                "length": mask.sum(axis=1).astype(np.float32),
                "truncated": np.asarray(result.truncated, np.float32), "tool_calls": tool_calls,
                "difficulty": np.repeat(difficulty_of([problem for problem, _, _ in problems]), group)}
        return host, result

    def single_turn(self, params, prompts, rng):
        """(Rollout, each row's response token ids, tool calls: none) of one sampled turn per prompt."""
        padded, lengths = padded_prompts(prompts, self.config.max_prompt_len, self.tokenizer.pad_id)
        result = self.sample(params["policy"], jnp.asarray(padded), jnp.asarray(lengths), rng,
                             reference_params=params.get("reference"))
        return result, response_ids(result), np.zeros(len(prompts), np.float32)

    def multi_turn(self, params, prompts, rng):
        """(Rollout, each row's last model turn, tool calls per row) of the prompts answered with the tool."""
        c = self.config
        result, episodes = agentic_rollout(
            self.model, params["policy"], self.tokenizer, prompts, rng, max_length=c.max_prompt_len + c.max_new_tokens,
            turn_tokens=c.max_new_tokens, max_tool_turns=c.max_tool_turns, temperature=c.temperature, top_p=c.top_p,
            reference_params=params.get("reference"), run_tools=functools.partial(run_python, timeout_s=c.tool_timeout_s))
        return (result, [episode.final_turn for episode in episodes],
                np.array([episode.tool_calls for episode in episodes], np.float32))

    def judge(self, problem, response) -> tuple[float, bool]:
        """(verifier score, well formed) of one response's token ids; never raises on model text."""
        return judge_response(self.tokenizer, problem, response)

    def rewards(self, host, result, step: int) -> np.ndarray:
        """Each response's reward at train step `step` (see the module docstring)."""
        c = self.config
        rewards = verifier_rewards(host["score"], host["well_formed"], host["length"], c)
        if c.length_reward.weight:
            weight = length_reward_weight(step, warmup_steps=c.length_reward.warmup_steps, weight=c.length_reward.weight)
            rewards += np.asarray(weight * kimi_length_reward(jnp.asarray(host["length"]),
                                                              jnp.asarray(host["score"] == 1), c.group_size))
        if c.kl_in_reward and result.ref_log_probs is not None:
            kl = np.asarray(jnp.sum(result.log_probs - result.ref_log_probs, axis=1))
            rewards -= c.kl_coef * kl
        return rewards.astype(np.float32)

    def next(self, train_state, source_state, rng):
        c, group, step = self.config, self.config.group_size, int(train_state.step)
        counts = {name: np.asarray(value) for name, value in source_state.items()}
        kept, pool, skipped, refills = [], [], 0, 0
        while True:
            problems, skipped_now = self.prompts(c.prompts_per_step - len(kept), counts, step, refills)
            skipped += skipped_now
            host, result = self.rollouts(train_state.params, problems, jax.random.fold_in(rng, refills))
            rewards = self.rewards(host, result, step)
            if self.pool is not None:
                counts["attempts"], counts["successes"] = updated_counts(
                    counts["attempts"], counts["successes"], [index for _, _, index in problems],
                    (host["score"] == 1).reshape(len(problems), group))
            for index in range(len(problems)):
                rows = slice(index * group, (index + 1) * group)
                informative = np.ptp(rewards[rows]) > 0 or not c.dynamic_sampling
                (kept if informative else pool).append((rows, host, result, rewards))
            if len(kept) >= c.prompts_per_step or refills >= c.max_refills:
                break
            refills += 1  # a rollout of further problems for the groups dynamic sampling dropped
        chosen = (kept + pool)[:c.prompts_per_step]
        batch = self.assemble(chosen)
        batch["statistics"] = self.statistics(batch, min(len(kept), c.prompts_per_step), skipped, refills)
        source_state = {name: jax.device_put(counts[name], value.sharding) for name, value in source_state.items()}
        return shard_batch(batch, self.shardings), source_state

    def assemble(self, chosen) -> dict:
        """The batch of the chosen groups, with group advantages over their rewards."""
        def rows_of(field):
            return np.concatenate([np.asarray(getattr(result, field))[rows] for rows, _, result, _ in chosen])

        def host_rows(field):
            return np.concatenate([host[field][rows] for rows, host, _, _ in chosen])
        rewards = np.concatenate([rewards[rows] for rows, _, _, rewards in chosen])
        reference = rows_of("ref_log_probs") if chosen[0][2].ref_log_probs is not None else rows_of("log_probs")
        if self.config.long2short:
            advantages = shortest_correct_weights(host_rows("length"), host_rows("score") == 1, self.config.group_size)
        else:
            advantages = group_advantages(jnp.asarray(rewards), self.config.group_size,
                                          scale_by_std=self.config.scale_by_std, std_floor=self.config.std_floor)
        return {
            "tokens": rows_of("tokens"), "response_mask": rows_of("response_mask").astype(np.float32),
            "old_log_probs": rows_of("log_probs"), "ref_log_probs": reference,
            "rewards": rewards, "advantages": np.asarray(advantages, np.float32),
            "truncated": host_rows("truncated"), "correct": (host_rows("score") == 1).astype(np.float32),
            "well_formed": host_rows("well_formed"), "tool_calls": host_rows("tool_calls"),
            "difficulty": host_rows("difficulty"),
        }

    def statistics(self, batch, kept_groups: int, skipped: int, refills: int) -> dict:
        well_formed, tool_calls, difficulty = (batch.pop(name) for name in ("well_formed", "tool_calls", "difficulty"))
        return {name: np.float32(value) for name, value in Counter({
            "reward": batch["rewards"].mean(), "accuracy": batch["correct"].mean(), "format_rate": well_formed.mean(),
            "response_length": batch["response_mask"].sum(axis=1).mean(), "truncated": batch["truncated"].mean(),
            "tool_calls": tool_calls.mean(), "difficulty": difficulty.mean(),
            "kept_groups": kept_groups, "skipped_prompts": skipped, "refills": refills}).items()}
