"""PPO's rollouts on verifiable problems (`ppo.reward = "verifiers"`, research/train/trainers/ppo.py).

Each step takes the next `prompts_per_step` problems of `ppo.suites` whose prompts fit in `max_prompt_len`
tokens, in the order GRPO takes them (research/train/rollout_batches.py: `ProblemStream`, `fitting_prompts`),
asks each once in the think-then-answer format, samples the response on the devices (research/rl/rollout.py,
log-probabilities under the policy and the reference) and judges it on the host with GRPO's verifier reward

    s = verifier score of the answer (1 correct, 0 otherwise) + format_weight·[well formed]
        + DAPO's soft overlong punishment (optional)

(`verifier_rewards`). `shape(params, rollout, s, state) -> (batch, state)` then makes the PPO batch on the
devices (ppo.py `shaped_rollouts`: s at each response's last token, the per-token KL shaping, the critic's
values, GAE). The array state is what shaping carries (the running reward statistics and β); the host state
is how many problems were taken. Beside shaping's statistics the batch logs, as GRPO does, the mean reward,
the accuracy (share of responses scored 1), the share of well-formed responses and the prompts skipped.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from research.data.reasoning import stop_ids
from research.rl.rollout import rollout
from research.rl.task_eval import prompt_ids
from research.train.batches import shard_batch
from research.train.rollout_batches import (ProblemStream, fitting_prompts, judge_response, padded_prompts,
                                            response_ids, verifier_rewards)

STATISTICS = ("reward", "accuracy", "format_rate", "skipped_prompts")  # the host's; `shape` logs the rest


class VerifierRewardedRollouts:
    """The BatchSource of PPO on verifiable problems (research/train/batches.py protocol); `init(rng)`
    makes the first shaping state, `shape` as in the module docstring, `shardings` the batch's."""

    def __init__(self, policy_model, tokenizer, ppo, init, shape, shardings):
        self.tokenizer, self.config, self.init = tokenizer, ppo, init
        self.stream = ProblemStream(tuple(ppo.suites), "train", ppo.problem_seed)
        self.sample = jax.jit(functools.partial(
            rollout, policy_model, max_new_tokens=ppo.max_new_tokens, temperature=ppo.temperature, top_p=ppo.top_p,
            stop_ids=stop_ids(tokenizer), pad_id=tokenizer.pad_id))
        on_devices = {**shardings, "statistics": {name: sharding for name, sharding in shardings["statistics"].items()
                                                  if name not in STATISTICS}}
        self.shape = jax.jit(shape, out_shardings=(on_devices, None))
        self.host_shardings = {name: shardings["statistics"][name] for name in STATISTICS}
        self.replicated = jax.sharding.NamedSharding(shardings["tokens"].mesh, jax.sharding.PartitionSpec())

    def host_state(self):
        return {"taken": self.stream.taken}

    def set_host_state(self, position) -> None:
        self.stream.taken = position["taken"]

    def next(self, train_state, source_state, rng):
        c, params = self.config, train_state.params
        problems, skipped = fitting_prompts(self.stream, functools.partial(prompt_ids, self.tokenizer),
                                            c.prompts_per_step, c.max_prompt_len)
        prompts, lengths = padded_prompts([ids for _, ids in problems], c.max_prompt_len, self.tokenizer.pad_id)
        result = self.sample(params["policy"], jnp.asarray(prompts), jnp.asarray(lengths), rng,
                             reference_params=params["reference"])
        responses = response_ids(result)
        judged = [judge_response(self.tokenizer, problem, response)
                  for (problem, _), response in zip(problems, responses)]
        score = np.array([score for score, _ in judged], np.float32)
        well_formed = np.array([formed for _, formed in judged], np.float32)
        rewards = verifier_rewards(score, well_formed, np.array([len(r) for r in responses], np.float32), c)
        batch, source_state = self.shape(params, result, jax.device_put(rewards, self.replicated), source_state)
        statistics = {"reward": rewards.mean(), "accuracy": np.mean(score == 1), "format_rate": well_formed.mean(),
                      "skipped_prompts": skipped}
        batch["statistics"].update(shard_batch({name: np.float32(value) for name, value in statistics.items()},
                                               self.host_shardings))
        return batch, source_state
