"""RLHF with PPO and the PPO-max switches (`config.trainer = "ppo"`): LLaMA-2 §3.2.3, "Secrets of RLHF".

Four models: the actor π (trained), the critic V (trained; a decoder with a scalar head), the frozen
reference π_ref and the frozen reward model r. One loop step, all on the devices:

  rollout   the next `prompts_per_step` prompts (a table kept in the batch source's state) answered by
            π (research/rl/rollout.py), scored by r at each response's last token;
  reward    s = r(x, y), then (`normalize_reward`) (s − μ)/σ with running statistics of the scores seen
            so far, clipped to ±`reward_clip`; per token r_t = −β·(log π − log π_ref)_t, plus s at the
            last response token (research/rl/rewards.py); β fixed or adapted toward `kl_target`
            (Ziegler et al.'s controller: β ← β·(1 + clip(KL/target − 1, ±0.2)·B/horizon));
  GAE       Â_t, R_t over the response tokens (γ, λ; research/rl/advantages.py), V_t the critic's value of
            the state before token t; Â whitened over the batch and clipped to ±`advantage_clip` when asked;
  update    `inner_epochs` passes over the batch in `minibatches` mini-batches, each minimising
            L = clipped policy loss(Â) − c_H·entropy + c_V·clipped value loss(R)
            (value clipping and the entropy bonus are switches; research/rl/losses.py), one optimizer
            over actor and critic with the critic's learning rate scaled by `critic_lr_scale` and
            one global gradient-norm clip (PPO-max).

Parameters: {"policy", "value", "reference", "reward"}; `init_from` fills them from earlier runs:
the policy from SFT (`into: "policy"`), the reward model and (PPO-max) the critic from a reward-model
run (`extra`); the reference starts as a copy of the policy unless loaded.
"""

import functools

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from research.config import unfrozen
from research.data.reasoning import format_prompt, stop_ids
from research.data.tasks.preferences import preference_prompts
from research.models import count_params, make_model
from research.models.value_model import last_values
from research.optim import make_optimizer, make_schedule
from research.rl.advantages import gae, masked_mean, masked_whiten
from research.rl.log_probs import entropy, token_log_probs
from research.rl.losses import clipped_policy_loss, clipped_value_loss
from research.rl.rewards import clip_reward, kl_penalised_rewards
from research.rl.rollout import rollout
from research.rl.running_stats import RunningStats, init_running_stats, normalise_and_clip, update_running_stats
from research.train.batches import OnPolicyBatches
from research.train.flops import flops_per_token
from research.train.state import TrainState
from research.train.task import Task
from research.train.trainers.lm import minibatch_epochs, model_tokenizer

@flax.struct.dataclass
class SourceState:
    """What the rollouts carry from step to step (saved with each checkpoint)."""

    prompts: jax.Array  # [N, P] int32, right-padded
    prompt_lengths: jax.Array  # [N]
    cursor: jax.Array  # the next prompt
    reward_stats: RunningStats
    kl_coef: jax.Array


def value_config(model_config):
    """The critic's and reward model's config: the policy's decoder with a scalar head."""
    config = unfrozen(model_config)
    config.family = "value"
    return ml_collections.FrozenConfigDict(config)


def shifted_values(critic, params, tokens):
    """V_t = the critic's output at position t − 1, the state before token t (0 at t = 0): `[B, T]`."""
    values = critic.apply({"params": params}, tokens[:, :-1])
    return jnp.pad(values, ((0, 0), (1, 0)))


def score_responses(critic, reward_params, tokens, lengths, response_mask):
    """The reward model's score of each response: its value at the response's last token `[B]`."""
    return last_values(critic.apply({"params": reward_params}, tokens), lengths)


def adapted_kl_coef(coef, kl, ppo, batch_size: int):
    """Ziegler et al.'s adaptive KL coefficient (fixed when `kl_target` is 0)."""
    if not ppo.kl_target:
        return coef
    error = jnp.clip(kl / ppo.kl_target - 1.0, -0.2, 0.2)
    return coef * (1.0 + error * batch_size / ppo.kl_horizon)


def make_rollouts(policy_model, critic, ppo, tokenizer_stop_ids, pad_id):
    """`make(train_state, source_state, rng) -> (batch, source_state)`: the jitted rollout and GAE."""

    def make(train_state, source, rng):
        params = train_state.params
        count = ppo.prompts_per_step
        index = (source.cursor + jnp.arange(count)) % source.prompts.shape[0]
        result = rollout(policy_model, params["policy"], source.prompts[index], source.prompt_lengths[index], rng,
                         max_new_tokens=ppo.max_new_tokens, temperature=ppo.temperature, top_p=ppo.top_p,
                         stop_ids=tokenizer_stop_ids, pad_id=pad_id, reference_params=params["reference"])
        mask = result.response_mask
        lengths = source.prompt_lengths[index] + result.response_lengths
        scores = score_responses(critic, params["reward"], result.tokens, lengths, mask)
        stats = update_running_stats(source.reward_stats, scores)
        shaped = normalise_and_clip(scores, stats, clip=ppo.reward_clip) if ppo.normalize_reward else scores
        if not ppo.normalize_reward and ppo.reward_clip:
            shaped = clip_reward(shaped, ppo.reward_clip)
        kl = jnp.where(mask, result.log_probs - result.ref_log_probs, 0.0)
        rewards = kl_penalised_rewards(shaped, kl, mask, beta=source.kl_coef)
        values = jnp.where(mask, shifted_values(critic, params["value"], result.tokens), 0.0)
        advantages, returns = gae(rewards, values, mask, gamma=ppo.gamma, lam=ppo.lam)
        if ppo.normalize_advantage:
            advantages = masked_whiten(advantages, mask)
        if ppo.advantage_clip:
            advantages = jnp.clip(advantages, -ppo.advantage_clip, ppo.advantage_clip)
        sequence_kl = jnp.mean(jnp.sum(kl, axis=1))
        batch = {"tokens": result.tokens, "response_mask": mask.astype(jnp.float32),
                 "old_log_probs": result.log_probs, "old_values": values, "advantages": advantages,
                 "returns": returns, "statistics": {
                     "score": jnp.mean(scores), "kl": sequence_kl, "kl_coef": source.kl_coef,
                     "response_length": jnp.mean(result.response_lengths.astype(jnp.float32)),
                     "truncated": jnp.mean(result.truncated.astype(jnp.float32))}}
        source = source.replace(cursor=(source.cursor + count) % source.prompts.shape[0], reward_stats=stats,
                                kl_coef=adapted_kl_coef(source.kl_coef, sequence_kl, ppo, count))
        return batch, source

    return make


def ppo_objective(policy_model, critic, ppo, trained, batch):
    """(loss, metrics) of one mini-batch: clipped policy loss − c_H·entropy + c_V·value loss."""
    mask = batch["response_mask"]
    tokens = batch["tokens"]
    logits = policy_model.apply({"params": trained["policy"]}, tokens[:, :-1]).astype(jnp.float32) / ppo.temperature
    log_probs = jnp.pad(token_log_probs(logits, tokens[:, 1:]), ((0, 0), (1, 0)))  # as rollout.policy_log_probs
    policy_loss, policy_metrics = clipped_policy_loss(log_probs, batch["old_log_probs"], batch["advantages"], mask,
                                                      clip_low=ppo.clip, clip_high=ppo.clip)
    token_entropy = masked_mean(jnp.pad(entropy(logits), ((0, 0), (1, 0))), mask)
    values = shifted_values(critic, trained["value"], tokens)
    value_loss, value_metrics = clipped_value_loss(values, batch["old_values"], batch["returns"], mask,
                                                   clip=ppo.value_clip or None)
    loss = policy_loss - ppo.entropy_coef * token_entropy + ppo.value_coef * value_loss
    return loss, {"policy_loss": policy_loss, "value_loss": value_loss, "entropy": token_entropy,
                  "clip_fraction": policy_metrics["clip_fraction"], "approx_kl": policy_metrics["approx_kl"],
                  "value_clip_fraction": value_metrics["clip_fraction"]}


def make_optimizer_of(config, total_updates: int):
    """One global gradient-norm clip, then the actor's and the critic's optimizers (the critic's
    learning rate scaled by `ppo.critic_lr_scale`)."""
    actor = unfrozen(config.optimizer)
    clip_norm = actor.grad_clip_norm
    actor.grad_clip_norm = 0.0
    critic = ml_collections.ConfigDict(actor.to_dict())
    critic.learning_rate = actor.learning_rate * config.ppo.critic_lr_scale
    parts = {"policy": make_optimizer(actor, total_updates), "value": make_optimizer(critic, total_updates)}
    split = optax.multi_transform(parts, {"policy": "policy", "value": "value"})
    return optax.chain(optax.clip_by_global_norm(clip_norm), split) if clip_norm else split


def make_train_step(policy_model, critic, ppo, optimizer, schedule):
    grad_fn = jax.value_and_grad(functools.partial(ppo_objective, policy_model, critic, ppo), has_aux=True)

    def train_step(state, batch, rng):
        statistics = batch["statistics"]
        rows = {name: value for name, value in batch.items() if name != "statistics"}
        epochs = minibatch_epochs(rows, ppo.minibatches, ppo.inner_epochs)
        trained = {role: state.params[role] for role in ("policy", "value")}

        def update(carry, minibatch):
            trained, opt_state = carry
            (loss, metrics), grads = grad_fn(trained, minibatch)
            updates, opt_state = optimizer.update(grads, opt_state, trained)
            metrics = {**metrics, "loss": loss, "grad_norm": optax.global_norm(grads)}
            return (optax.apply_updates(trained, updates), opt_state), metrics

        (trained, opt_state), metrics = jax.lax.scan(update, (trained, state.opt_state), epochs)
        updates = ppo.inner_epochs * ppo.minibatches
        return TrainState(step=state.step + 1, params={**state.params, **trained}, opt_state=opt_state), {
            **jax.tree.map(jnp.mean, metrics), "learning_rate": schedule(state.step * updates),
            **{f"rollout_{name}": value for name, value in statistics.items()}}

    return train_step


def prompt_table(ppo, tokenizer):
    """(prompts [N, P], lengths [N]) of the helpfulness prompts, as one user turn each; those over
    `max_prompt_len` tokens are left out."""
    rows = [[tokenizer.bos_id] + tokenizer.encode(format_prompt(p.prompt))
            for p in preference_prompts(ppo.num_prompts, ppo.prompt_seed, tuple(ppo.prompt_kinds))]
    rows = [row for row in rows if len(row) <= ppo.max_prompt_len]
    if not rows:
        raise ValueError(f"config field ppo.max_prompt_len: no prompt fits in {ppo.max_prompt_len} tokens")
    table = np.full((len(rows), ppo.max_prompt_len), tokenizer.pad_id, np.int32)
    for index, row in enumerate(rows):
        table[index, :len(row)] = row
    return jnp.asarray(table), jnp.asarray([len(row) for row in rows], jnp.int32)


def build(config, mesh) -> Task:
    """The PPO Task for `config` (configs/rlhf.py:tiny_ppo)."""
    ppo = config.ppo
    batch_size, length = ppo.prompts_per_step, ppo.max_prompt_len + ppo.max_new_tokens
    if batch_size % ppo.minibatches:
        raise ValueError(f"config field ppo.minibatches: {ppo.minibatches} does not divide ppo.prompts_per_step "
                         f"{batch_size}")
    if length > config.model.max_seq_len:
        raise ValueError(f"config fields ppo.max_prompt_len + ppo.max_new_tokens = {length} exceed "
                         f"model.max_seq_len {config.model.max_seq_len}")
    policy_model, critic = make_model(config.model, mesh), make_model(value_config(config.model), mesh)
    total_updates = config.train.steps * ppo.inner_epochs * ppo.minibatches
    optimizer = make_optimizer_of(config, total_updates)
    schedule = make_schedule(config.optimizer, total_updates)
    tokenizer = functools.cache(lambda: model_tokenizer(config))

    def init_state(rng, params=None):
        params = params or {}
        dummy = jnp.zeros((1, length), jnp.int32)
        policy = params.get("policy") or policy_model.init(jax.random.fold_in(rng, 0), dummy)["params"]
        reward = params.get("reward") or critic.init(jax.random.fold_in(rng, 1), dummy)["params"]
        state_params = {"policy": policy, "value": params.get("value", reward), "reference": params.get("reference", policy),
                        "reward": reward}
        trained = {role: state_params[role] for role in ("policy", "value")}
        return TrainState(step=jnp.zeros((), jnp.int32), params=state_params, opt_state=optimizer.init(trained))

    def source_init(rng):
        prompts, lengths = prompt_table(ppo, tokenizer())
        return SourceState(prompts=prompts, prompt_lengths=lengths, cursor=jnp.zeros((), jnp.int32),
                           reward_stats=init_running_stats(), kl_coef=jnp.asarray(ppo.kl_coef, jnp.float32))

    def batch_spec():
        def leaf(shape, dtype, axes):
            return nn.LogicallyPartitioned(jax.ShapeDtypeStruct(shape, dtype), axes)
        per_token = {name: leaf((batch_size, length), jnp.float32, ("batch", None)) for name in (
            "response_mask", "old_log_probs", "old_values", "advantages", "returns")}
        statistics = {name: leaf((), jnp.float32, ()) for name in (
            "score", "kl", "kl_coef", "response_length", "truncated")}
        return {"tokens": leaf((batch_size, length), jnp.int32, ("batch", None)), **per_token, "statistics": statistics}

    matmul_params = count_params(config.model)["active"] - config.model.vocab_size * config.model.dim
    return Task(
        init_state=init_state,
        train_step=make_train_step(policy_model, critic, ppo, optimizer, schedule),
        batch_spec=batch_spec(),
        batches=lambda shardings: OnPolicyBatches(source_init, make_rollouts(
            policy_model, critic, ppo, stop_ids(tokenizer()), tokenizer().pad_id), shardings),
        evaluators=lambda shardings: {},
        tokens_per_step=batch_size * length * ppo.inner_epochs * ppo.minibatches,
        flops_per_token=2 * flops_per_token(config.model, length, matmul_params),  # actor and critic
    )
