"""RLHF with PPO and the PPO-max switches (`config.trainer = "ppo"`): LLaMA-2 §3.2.3, "Secrets of RLHF";
and PPO with verifiable rewards on the task suites GRPO trains on (`ppo.reward = "verifiers"`).

Four models: the actor π (trained), the critic V (trained; a decoder with a scalar head), the frozen
reference π_ref and the frozen reward model r (none with verifiable rewards). One loop step:

  rollout   `ppo.reward` "model" (all on the devices): the next `prompts_per_step` helpfulness prompts
            (a table kept in the batch source's state) answered by π (research/rl/rollout.py), scored by
            r at each response's last token;
            "verifiers": the next `prompts_per_step` problems of `ppo.suites` asked once each in the
            think-then-answer format, sampled on the devices, each response scored on the host by GRPO's
            verifier reward s = correct + format_weight·[well formed] + soft overlong punishment
            (research/train/ppo_verifier_rollouts.py), then shaped on the devices as below;
  logged    per rollout: the mean score ("model": `score`; "verifiers": `reward`, `accuracy`,
            `format_rate`, `skipped_prompts`, named as GRPO names them), KL to the reference (summed
            over a response), response length, the truncated share, the policy's perplexity on its own
            responses exp(−mean log π(y_t)) (at the sampling temperature) and distinct-2 of the batch's
            responses (a collapse indicator);
  reward    s the score, then (`normalize_reward`) (s − μ)/σ with running statistics of the scores seen
            so far, clipped to ±`reward_clip`; per token r_t = −β·(log π − log π_ref)_t, plus s at the
            last response token (research/rl/rewards.py); β fixed or adapted toward `kl_target`
            (Ziegler et al.'s controller: β ← β·(1 + clip(KL/target − 1, ±0.2)·B/horizon));
  GAE       Â_t, R_t over the response tokens (γ, λ; research/rl/advantages.py), V_t the critic's value of
            the state before token t; Â whitened over the batch and clipped to ±`advantage_clip` when asked;
  update    `inner_epochs` passes over the batch in `minibatches` mini-batches, each minimising
            L = clipped policy loss(Â) − c_H·entropy + c_V·clipped value loss(R) + γ_ptx·L_LM
            (value clipping and the entropy bonus are switches; research/rl/losses.py; L_LM the mean
            next-token loss of the policy on pretraining rows, PPO-ptx: InstructGPT's
            γ·E_pretrain[log π], on when `ptx_coef` > 0, the rows `config.data`'s corpus packed as the
            LM trainer packs them, `config.train.batch_size` × `seq_len` a step, cut into the same
            mini-batches; research/train/rollouts_with_text.py), one optimizer
            over actor and critic with the critic's learning rate scaled by `critic_lr_scale` and
            one global gradient-norm clip (PPO-max).

Evaluators: `config.evals` of kind "tasks" (research/train/tasks_evaluator.py) on the policy, GRPO's greedy
pass@1 on the in-domain and held-out problems.

Parameters: {"policy", "value", "reference", "reward"} ("verifiers": no "reward"); `init_from` fills them
from earlier runs: the policy from SFT (`into: "policy"`), the reward model from a reward-model run
(`extra`); the critic starts as a copy of the reward model (PPO-max, `critic_from_reward`) or at random,
with verifiable rewards as the policy's decoder under a fresh scalar head (every value 0 at first), unless
loaded; the reference starts as a copy of the policy unless loaded. With LoRA
(research/train/lora_state.py; reward model only) the policy trains adapters over a frozen base from
`lora.base` (the SFT run), the reference is that base with the starting adapters, and `init_from.kind` is
"none" (its `extra` still loads the reward model and critic).
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
from research.train.batches import IteratorBatches, OnPolicyBatches
from research.train.flops import flops_per_token
from research.train.lora_state import adapted, adapter_optimizer, lora_enabled, lora_task, merged_params
from research.train.ppo_verifier_rollouts import STATISTICS as VERIFIER_STATISTICS, VerifierRewardedRollouts
from research.train.rollouts_with_text import RolloutsWithText
from research.train.state import TrainState
from research.train.task import Task
from research.train.tasks_evaluator import tasks_evaluator
from research.train.trainers.lm import corpus_batches, lm_batch_spec, loss_sums, minibatch_epochs, model_tokenizer

PTX = "ptx"  # the batch entry of the pretraining rows
REWARDS = ("model", "verifiers")  # ppo.reward: the reward model's score, or the verifiers' on the task suites
VERIFIER_FIELDS = ("suites", "problem_seed", "format_weight", "soft_overlong")  # what ppo.reward "verifiers" reads
SHAPING_STATISTICS = ("kl", "kl_coef", "response_length", "truncated", "perplexity", "distinct_2")

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


def distinct_bigram_share(tokens, mask):
    """Distinct-2 of a batch of responses: distinct bigrams (both tokens on `mask`) over all such bigrams,
    1 when every bigram is new, near 0 when the responses repeat one another (a collapse indicator).
    A bigram (u, v) is the int32 u·(max id + 1) + v: exact for vocabularies up to 46,340 tokens."""
    pairs = mask[:, :-1] & mask[:, 1:]
    ids = jnp.where(pairs, tokens[:, :-1] * (jnp.max(tokens) + 1) + tokens[:, 1:], -1).ravel()
    ordered = jnp.sort(ids)
    distinct = jnp.sum((ordered[1:] != ordered[:-1]) & (ordered[1:] >= 0)) + (ordered[0] >= 0)
    return distinct / jnp.maximum(jnp.sum(pairs), 1)


def adapted_kl_coef(coef, kl, ppo, batch_size: int):
    """Ziegler et al.'s adaptive KL coefficient (fixed when `kl_target` is 0)."""
    if not ppo.kl_target:
        return coef
    error = jnp.clip(kl / ppo.kl_target - 1.0, -0.2, 0.2)
    return coef * (1.0 + error * batch_size / ppo.kl_horizon)


def make_rollouts(policy_model, critic, ppo, tokenizer_stop_ids, pad_id, as_plain=lambda params: params):
    """`make(train_state, source_state, rng) -> (batch, source_state)`: the jitted rollout and GAE;
    `as_plain` turns the state's parameters into the plain models' (LoRA: adapters merged)."""

    def make(train_state, source, rng):
        params = as_plain(train_state.params)
        count = ppo.prompts_per_step
        index = (source.cursor + jnp.arange(count)) % source.prompts.shape[0]
        result = rollout(policy_model, params["policy"], source.prompts[index], source.prompt_lengths[index], rng,
                         max_new_tokens=ppo.max_new_tokens, temperature=ppo.temperature, top_p=ppo.top_p,
                         stop_ids=tokenizer_stop_ids, pad_id=pad_id, reference_params=params["reference"])
        lengths = source.prompt_lengths[index] + result.response_lengths
        scores = score_responses(critic, params["reward"], result.tokens, lengths, result.response_mask)
        batch, stats, kl_coef = shaped_rollouts(critic, ppo, params, result, scores, source.reward_stats,
                                                source.kl_coef)
        batch["statistics"]["score"] = jnp.mean(scores)
        source = source.replace(cursor=(source.cursor + count) % source.prompts.shape[0], reward_stats=stats,
                                kl_coef=kl_coef)
        return batch, source

    return make


def shaped_rollouts(critic, ppo, params, result, scores, reward_stats, kl_coef):
    """(batch, reward_stats, kl_coef) of the Rollout `result` whose responses scored `scores [B]`: s
    normalised and clipped as the module docstring says (the running statistics updated with `scores`),
    r_t = −β·(log π − log π_ref)_t on every response token plus s at its last one, V_t from the critic
    `params["value"]`, GAE's Â_t and R_t (Â whitened and clipped when asked), the rollout statistics
    (SHAPING_STATISTICS) and the next β (`adapted_kl_coef`)."""
    mask = result.response_mask
    stats = update_running_stats(reward_stats, scores)
    shaped = normalise_and_clip(scores, stats, clip=ppo.reward_clip) if ppo.normalize_reward else scores
    if not ppo.normalize_reward and ppo.reward_clip:
        shaped = clip_reward(shaped, ppo.reward_clip)
    kl = jnp.where(mask, result.log_probs - result.ref_log_probs, 0.0)
    rewards = kl_penalised_rewards(shaped, kl, mask, beta=kl_coef)
    values = jnp.where(mask, shifted_values(critic, params["value"], result.tokens), 0.0)
    advantages, returns = gae(rewards, values, mask, gamma=ppo.gamma, lam=ppo.lam)
    if ppo.normalize_advantage:
        advantages = masked_whiten(advantages, mask)
    if ppo.advantage_clip:
        advantages = jnp.clip(advantages, -ppo.advantage_clip, ppo.advantage_clip)
    sequence_kl = jnp.mean(jnp.sum(kl, axis=1))
    mean_log_prob = jnp.sum(jnp.where(mask, result.log_probs, 0.0)) / jnp.maximum(jnp.sum(mask), 1)
    batch = {"tokens": result.tokens, "response_mask": mask.astype(jnp.float32), "old_log_probs": result.log_probs,
             "old_values": values, "advantages": advantages, "returns": returns, "statistics": {
                 "kl": sequence_kl, "kl_coef": kl_coef,
                 "response_length": jnp.mean(result.response_lengths.astype(jnp.float32)),
                 "truncated": jnp.mean(result.truncated.astype(jnp.float32)),
                 "perplexity": jnp.exp(-mean_log_prob), "distinct_2": distinct_bigram_share(result.tokens, mask)}}
    return batch, stats, adapted_kl_coef(kl_coef, sequence_kl, ppo, scores.shape[0])


def verifier_shaping(critic, ppo):
    """`shape(params, result, scores, state) -> (batch, state)` of the verifier rollouts
    (research/train/ppo_verifier_rollouts.py), `state` {"reward_stats", "kl_coef"}."""

    def shape(params, result, scores, state):
        batch, stats, kl_coef = shaped_rollouts(critic, ppo, params, result, scores, state["reward_stats"],
                                                state["kl_coef"])
        return batch, {"reward_stats": stats, "kl_coef": kl_coef}

    return shape


def pretraining_loss(policy_model, policy_params, rows):
    """L_LM = Σ w·nll / Σ w: the policy's mean next-token loss on packed pretraining rows."""
    nll_sum, weight, _ = loss_sums(policy_model, policy_params, rows)
    return nll_sum / jnp.maximum(weight, 1.0)


def ppo_objective(policy_model, critic, ppo, trained, batch):
    """(loss, metrics) of one mini-batch: clipped policy loss − c_H·entropy + c_V·value loss, plus
    γ_ptx·L_LM when the batch holds pretraining rows and `ppo.ptx_coef` > 0."""
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
    metrics = {"policy_loss": policy_loss, "value_loss": value_loss, "entropy": token_entropy,
               "clip_fraction": policy_metrics["clip_fraction"], "approx_kl": policy_metrics["approx_kl"],
               "value_clip_fraction": value_metrics["clip_fraction"]}
    if ppo.ptx_coef and PTX in batch:
        metrics["ptx_loss"] = pretraining_loss(policy_model, trained["policy"], batch[PTX])
        loss = loss + ppo.ptx_coef * metrics["ptx_loss"]
    return loss, metrics


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


def critic_from_policy(policy_params, fresh_critic_params) -> dict:
    """The critic's parameters with the policy's decoder as its backbone and the fresh critic's scalar
    head (w = 0: every value starts at 0)."""
    return {"backbone": policy_params, "head": fresh_critic_params["head"]}


def check_reward_source(config) -> None:
    """ValueError naming the field when `config.ppo.reward` is unknown or its fields do not fit it."""
    ppo = config.ppo
    if ppo.reward not in REWARDS:
        raise ValueError(f"config field ppo.reward: {ppo.reward!r} is not one of {REWARDS}")
    if ppo.reward == "model":
        return
    missing = [name for name in VERIFIER_FIELDS if name not in ppo]
    if missing:
        raise ValueError(f"config fields {', '.join('ppo.' + name for name in missing)}: missing, and ppo.reward "
                         "'verifiers' reads them (configs/rlvr.py:tiny_ppo sets them)")
    if ppo.critic_from_reward:
        raise ValueError("config field ppo.critic_from_reward: ppo.reward 'verifiers' has no reward model; the "
                         "critic starts from the policy")
    if lora_enabled(config):
        raise ValueError("config field lora.enabled: ppo.reward 'verifiers' starts the critic from the policy's "
                         "weights, which LoRA keeps out of the train state")


def build(config, mesh) -> Task:
    """The PPO Task for `config` (configs/rlhf.py:tiny_ppo, configs/rlvr.py:tiny_ppo)."""
    ppo = config.ppo
    check_reward_source(config)
    verifiers = ppo.reward == "verifiers"
    batch_size, length = ppo.prompts_per_step, ppo.max_prompt_len + ppo.max_new_tokens
    if batch_size % ppo.minibatches:
        raise ValueError(f"config field ppo.minibatches: {ppo.minibatches} does not divide ppo.prompts_per_step "
                         f"{batch_size}")
    if ppo.ptx_coef and config.train.batch_size % ppo.minibatches:
        raise ValueError(f"config field train.batch_size: {config.train.batch_size} pretraining rows "
                         f"(ppo.ptx_coef > 0) do not split into ppo.minibatches {ppo.minibatches}")
    if length > config.model.max_seq_len:
        raise ValueError(f"config fields ppo.max_prompt_len + ppo.max_new_tokens = {length} exceed "
                         f"model.max_seq_len {config.model.max_seq_len}")
    policy_model, critic = make_model(config.model, mesh), make_model(value_config(config.model), mesh)
    trained_policy = adapted(policy_model, config)  # LoRA: the policy's (and reference's) adapters; rollouts merge
    total_updates = config.train.steps * ppo.inner_epochs * ppo.minibatches
    optimizer = adapter_optimizer(make_optimizer_of(config, total_updates), config)
    schedule = make_schedule(config.optimizer, total_updates)
    tokenizer = functools.cache(lambda: model_tokenizer(config))

    def init_state(rng, params=None):
        params = params or {}
        dummy = jnp.zeros((1, length), jnp.int32)
        policy = params.get("policy") or trained_policy.init(jax.random.fold_in(rng, 0), dummy)["params"]
        if verifiers:
            judged = {"value": params.get("value") or critic_from_policy(
                policy, critic.init(jax.random.fold_in(rng, 2), dummy)["params"])}
        else:
            reward = params.get("reward") or critic.init(jax.random.fold_in(rng, 1), dummy)["params"]
            judged = {"reward": reward, "value": params.get("value") or (
                reward if ppo.critic_from_reward else critic.init(jax.random.fold_in(rng, 2), dummy)["params"])}
        state_params = {"policy": policy, "reference": params.get("reference", policy), **judged}
        trained = {role: state_params[role] for role in ("policy", "value")}
        return TrainState(step=jnp.zeros((), jnp.int32), params=state_params, opt_state=optimizer.init(trained))

    def shaping_init(rng):
        return {"reward_stats": init_running_stats(), "kl_coef": jnp.asarray(ppo.kl_coef, jnp.float32)}

    def source_init(rng):
        prompts, lengths = prompt_table(ppo, tokenizer())
        return SourceState(prompts=prompts, prompt_lengths=lengths, cursor=jnp.zeros((), jnp.int32),
                           reward_stats=init_running_stats(), kl_coef=jnp.asarray(ppo.kl_coef, jnp.float32))

    def batch_spec():
        def leaf(shape, dtype, axes):
            return nn.LogicallyPartitioned(jax.ShapeDtypeStruct(shape, dtype), axes)
        per_token = {name: leaf((batch_size, length), jnp.float32, ("batch", None)) for name in (
            "response_mask", "old_log_probs", "old_values", "advantages", "returns")}
        names = SHAPING_STATISTICS + (VERIFIER_STATISTICS if verifiers else ("score",))
        statistics = {name: leaf((), jnp.float32, ()) for name in names}
        spec = {"tokens": leaf((batch_size, length), jnp.int32, ("batch", None)), **per_token, "statistics": statistics}
        return {**spec, PTX: lm_batch_spec(config.train.batch_size, config.train.seq_len)} if ppo.ptx_coef else spec

    def batches(shardings):
        rollout_shardings = {name: value for name, value in shardings.items() if name != PTX}
        if verifiers:
            rollouts = VerifierRewardedRollouts(policy_model, tokenizer(), ppo, shaping_init,
                                                verifier_shaping(critic, ppo), rollout_shardings)
        else:
            rollouts = OnPolicyBatches(source_init, make_rollouts(policy_model, critic, ppo, stop_ids(tokenizer()),
                                                                  tokenizer().pad_id,
                                                                  lambda params: merged_params(params, config)),
                                       rollout_shardings)
        if not ppo.ptx_coef:
            return rollouts
        text = corpus_batches(config, tokenizer(), split="train", num_epochs=None, seed=config.seed)
        return RolloutsWithText(rollouts, IteratorBatches(text, shardings[PTX]), PTX)

    def evaluators(shardings):
        return {name: tasks_evaluator(c, policy_model, tokenizer(), config.seed, lambda params: params["policy"])
                for name, c in config.evals.items()}

    matmul_params = count_params(config.model)["active"] - config.model.vocab_size * config.model.dim
    return lora_task(Task(
        init_state=init_state,
        train_step=make_train_step(trained_policy, critic, ppo, optimizer, schedule),
        batch_spec=batch_spec(),
        batches=batches,
        evaluators=evaluators,
        tokens_per_step=batch_size * length * ppo.inner_epochs * ppo.minibatches,
        flops_per_token=2 * flops_per_token(config.model, length, matmul_params),  # actor and critic
    ), config)
