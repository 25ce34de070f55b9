"""Group-relative policy optimisation on verifiable problems (`config.trainer = "grpo"`): GRPO
(DeepSeekMath), with DAPO's and Dr. GRPO's switches, GSPO's sequence ratio, and Kimi k1.5's loss.

One loop step = one batch of rollouts (research/train/rollout_batches.py: G responses to each of
`prompts_per_step` problems, rewarded by verifiers, group advantages Â_i = (r_i − mean_g)/(std_g + floor),
or r_i − mean_g with `scale_by_std=False`), then `inner_epochs` (μ) passes over it in `minibatches`
strided mini-batches, each an optimizer update of

    "grpo":  L = aggregate_t(−min(ρ_t·Â, clip(ρ_t, 1 − ε_low, 1 + ε_high)·Â)) + β·aggregate_t(KL̂_t)
             ρ_t = π_θ(y_t)/π_old(y_t) (or GSPO's length-normalised sequence ratio), KL̂ to the frozen
             reference by estimator k1, k2 or k3 (or β·k1 folded into the reward instead: `kl_in_reward`);
             aggregate: "seq_mean_token_mean" (DeepSeekMath), "token_mean" (DAPO), or
             "seq_mean_token_sum_norm" (Dr. GRPO: token sums over the constant max_new_tokens)
    "kimi":  Kimi k1.5's L = mean_j (r_j − r̄ − τ·log π_θ(y_j)/π_old(y_j))², no critic, the optimizer
             state reset at every step when `reset_optimizer`

(research/rl/losses.py, aggregation.py, kl.py). DAPO's overlong filtering drops truncated responses
from the loss; its soft overlong punishment and dynamic sampling act on the rewards and the batch.
The batch source's switches need nothing here: `tools` (multi-turn rollouts with the python tool, the loss
on the model's own tokens by the response mask), `sampling` (curriculum or prioritized prompts) and
`long2short` (the shortest correct response of each group as the only one with a weight).

Parameters: {"policy": the trained decoder, "reference": the frozen one (only when β > 0)}; start the
policy from an SFT run with `init_from = {kind: "run", path: <sft workdir>, into: "policy"}`; the
reference, unless loaded too (`init_from.extra`), starts as a copy of the policy.
"""

import functools

import jax
import jax.numpy as jnp
import optax

from research.models import count_params, make_model
from research.models.moe import MOE_COLLECTION
from research.optim import make_optimizer, make_schedule
from research.rl.aggregation import aggregate
from research.rl.kl import kl_estimate
from research.rl.log_probs import token_log_probs
from research.rl.losses import clipped_policy_loss, kimi_surrogate_loss
from research.rl.prompt_sampling import SAMPLINGS
from research.rl.rewards import overlong_filter_mask
from research.train.flops import flops_per_token
from research.train.moe_aux import auxiliary_loss, layer_statistics, moe_metrics
from research.train.rollout_batches import VerifiableRollouts, rollout_batch_spec
from research.train.state import TrainState
from research.train.task import Task
from research.train.tasks_evaluator import tasks_evaluator
from research.train.trainers.lm import minibatch_epochs, model_tokenizer

LOSSES = ("grpo", "kimi")


def uses_reference(rl) -> bool:
    """Whether the run keeps a frozen reference model (a KL term in the loss or in the reward)."""
    return rl.kl_coef > 0


def log_probs_and_moe_statistics(model, params, tokens, temperature: float):
    """research/rl/rollout.py's `policy_log_probs` `[B, T]` and, from the same forward pass, the MoE
    layers' statistics (research/train/moe_aux.py; {} for a dense model)."""
    logits, variables = model.apply({"params": params}, tokens[:, :-1], mutable=[MOE_COLLECTION])
    logits = logits.astype(jnp.float32) / (temperature if temperature > 0 else 1.0)
    log_probs = jnp.pad(token_log_probs(logits, tokens[:, 1:]), ((0, 0), (1, 0)))
    return log_probs, layer_statistics(variables.get(MOE_COLLECTION, {}))


def policy_objective(model, rl, policy, batch):
    """(loss, metrics) of one mini-batch under the current policy parameters; a mixture-of-experts
    policy adds its auxiliary losses (research/train/moe_aux.py) and logs its routing metrics."""
    log_probs, moe_statistics = log_probs_and_moe_statistics(model, policy, batch["tokens"], rl.temperature)
    mask = batch["response_mask"]
    if rl.overlong_filter:
        mask = overlong_filter_mask(mask, batch["truncated"] > 0)
    if rl.loss == "kimi":
        loss, metrics = kimi_surrogate_loss(log_probs, batch["old_log_probs"], batch["rewards"], mask,
                                            tau=rl.kimi_tau, group_size=rl.group_size)
    else:
        loss, metrics = clipped_policy_loss(
            log_probs, batch["old_log_probs"], batch["advantages"], mask, clip_low=rl.clip_low,
            clip_high=rl.clip_high, aggregation=rl.aggregation, ratio_level=rl.ratio_level,
            constant_normaliser=rl.max_new_tokens)
    kl = aggregate(kl_estimate(log_probs, batch["ref_log_probs"], estimator=rl.kl_estimator), mask, "token_mean")
    if uses_reference(rl) and not rl.kl_in_reward:
        loss = loss + rl.kl_coef * kl
    if moe_statistics:
        loss = loss + auxiliary_loss(moe_statistics, model.config.moe)
    return loss, {**metrics, "kl": kl, **moe_metrics(moe_statistics)}


def make_train_step(model, rl, optimizer, schedule):
    """`train_step(state, batch, rng)`: μ epochs × M mini-batches of updates on one rollout batch."""
    grad_fn = jax.value_and_grad(functools.partial(policy_objective, model, rl), has_aux=True)

    def train_step(state, batch, rng):
        statistics = batch["statistics"]
        rows = {name: value for name, value in batch.items() if name != "statistics"}
        opt_state = optimizer.init(state.params["policy"]) if rl.reset_optimizer else state.opt_state

        def update(carry, minibatch):
            policy, opt_state = carry
            (loss, metrics), grads = grad_fn(policy, minibatch)
            updates, opt_state = optimizer.update(grads, opt_state, policy)
            metrics = {**metrics, "loss": loss, "grad_norm": optax.global_norm(grads)}
            return (optax.apply_updates(policy, updates), opt_state), metrics

        epochs = minibatch_epochs(rows, rl.minibatches, rl.inner_epochs)
        (policy, opt_state), metrics = jax.lax.scan(update, (state.params["policy"], opt_state), epochs)
        metrics = jax.tree.map(jnp.mean, metrics)
        params = {**state.params, "policy": policy}
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), {
            **metrics, "learning_rate": schedule(state.step * rl.inner_epochs * rl.minibatches),
            **{f"rollout_{name}": value for name, value in statistics.items()}}

    return train_step


def updates_per_step(rl) -> int:
    return rl.inner_epochs * rl.minibatches


def build(config, mesh) -> Task:
    """The GRPO / k1.5 Task for `config` (configs/rlvr.py)."""
    rl = config.rl
    if rl.loss not in LOSSES:
        raise ValueError(f"config field rl.loss: {rl.loss!r} is not one of {LOSSES}")
    if rl.sampling not in SAMPLINGS:
        raise ValueError(f"config field rl.sampling: {rl.sampling!r} is not one of {SAMPLINGS}")
    if rl.group_size < 1 or rl.prompts_per_step < 1:
        raise ValueError(f"config fields rl.group_size and rl.prompts_per_step must be >= 1, got "
                         f"{rl.group_size} and {rl.prompts_per_step}")
    batch_size = rl.prompts_per_step * rl.group_size
    if batch_size % rl.minibatches:
        raise ValueError(f"config field rl.minibatches: {rl.minibatches} does not divide the batch of "
                         f"{rl.prompts_per_step} prompts x {rl.group_size} responses")
    length = rl.max_prompt_len + rl.max_new_tokens
    if length > config.model.max_seq_len:
        raise ValueError(f"config fields rl.max_prompt_len + rl.max_new_tokens = {length} exceed "
                         f"model.max_seq_len {config.model.max_seq_len}")
    model = make_model(config.model, mesh)
    total_updates = config.train.steps * updates_per_step(rl)
    optimizer = make_optimizer(config.optimizer, total_updates)
    schedule = make_schedule(config.optimizer, total_updates)
    tokenizer = functools.cache(lambda: model_tokenizer(config))

    def init_state(rng, params=None):
        params = params or {}
        policy = params.get("policy") or model.init(rng, jnp.zeros((1, length), jnp.int32))["params"]
        state_params = {"policy": policy}
        if uses_reference(rl):
            state_params["reference"] = params.get("reference", policy)
        return TrainState(step=jnp.zeros((), jnp.int32), params=state_params,
                          opt_state=optimizer.init(policy))

    def evaluators(shardings):
        return {name: tasks_evaluator(c, model, tokenizer(), config.seed, lambda params: params["policy"])
                for name, c in config.evals.items()}

    matmul_params = count_params(config.model)["active"] - config.model.vocab_size * config.model.dim
    return Task(
        init_state=init_state,
        train_step=make_train_step(model, rl, optimizer, schedule),
        batch_spec=rollout_batch_spec(batch_size, length),
        batches=lambda shardings: VerifiableRollouts(model, tokenizer(), rl, shardings),
        evaluators=evaluators,
        tokens_per_step=batch_size * length * updates_per_step(rl),
        flops_per_token=flops_per_token(config.model, length, matmul_params),
    )
