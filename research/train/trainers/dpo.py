"""Preference optimisation without a reward model (`config.trainer = "dpo"`): DPO and ORPO.

On the preference pairs of research/data/preference_batches.py, with log π(y) = Σ_t log π(y_t | x, y_<t)
over the response's tokens (after the prompt, up to and including its end-of-turn):

    "dpo"   L = −log σ(β·[(log π(y_c) − log π_ref(y_c)) − (log π(y_r) − log π_ref(y_r))])   (Rafailov et al.)
            π_ref the frozen starting policy; its log-probs are computed in the same step (no extra
            pass over the data; they do not change)
    "orpo"  L = NLL(y_c) + λ·(−log σ(log odds(y_c) − log odds(y_r))), odds(y) = p/(1 − p) with p the
            length-normalised probability exp((1/|y|)·log π(y))                          (Hong et al.)

Parameters: {"policy"} and, for DPO, {"reference"} (a copy of the starting policy unless loaded with
`init_from.extra`). Start from an SFT run: `init_from = {kind: "run", path: <sft>, into: "policy"}`.
Evaluator kind "preferences": the share of held-out pairs the policy prefers as judged (DPO's implicit
reward margin > 0; ORPO's odds ratio > 0).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from research.models import make_model
from research.optim import make_optimizer, make_schedule
from research.rl.log_probs import sequence_log_probs
from research.rl.preference_losses import dpo_loss, orpo_loss
from research.rl.rollout import policy_log_probs
from research.train.lora_state import adapted, adapter_optimizer, lora_task
from research.train.state import TrainState
from research.train.task import Task
from research.train.trainers.lm import model_tokenizer, optimizer_update
from research.train.trainers.reward_model import preference_task

LOSSES = ("dpo", "orpo")


def response_mask(batch, name: str):
    """1 on the tokens of response `name` ("chosen" or "rejected"): from the prompt's end to its length."""
    positions = jnp.arange(batch[name].shape[1])[None, :]
    return (positions >= batch["prompt_length"][:, None]) & (positions < batch[f"{name}_length"][:, None])


def response_log_probs(model, params, batch):
    """{name: (Σ_t log π, mean_t log π) `[B]`} of both responses, in one forward pass."""
    tokens = jnp.concatenate([batch["chosen"], batch["rejected"]])
    mask = jnp.concatenate([response_mask(batch, "chosen"), response_mask(batch, "rejected")])
    token_logps = policy_log_probs(model, params, tokens)
    total, mean = sequence_log_probs(token_logps, mask), sequence_log_probs(token_logps, mask, average=True)
    return {name: (t, m) for name, t, m in zip(("chosen", "rejected"), jnp.split(total, 2), jnp.split(mean, 2))}


def preference_objective(model, method, params, batch):
    """(loss, metrics) of `method` on one batch; params {"policy", "reference"?}."""
    policy = response_log_probs(model, params["policy"], batch)
    if method.loss == "orpo":
        nll = -policy["chosen"][1]
        return orpo_loss(policy["chosen"][1], policy["rejected"][1], nll, lam=method.orpo_lambda)
    reference = jax.lax.stop_gradient(response_log_probs(model, params["reference"], batch))
    return dpo_loss(policy["chosen"][0], policy["rejected"][0], reference["chosen"][0], reference["rejected"][0],
                    beta=method.beta)


def build(config, mesh) -> Task:
    """The DPO / ORPO Task for `config` (configs/rlhf.py:tiny_dpo)."""
    method = config.preference
    if method.loss not in LOSSES:
        raise ValueError(f"config field preference.loss: {method.loss!r} is not one of {LOSSES}")
    model = make_model(config.model, mesh)
    train_cfg = config.train
    optimizer = adapter_optimizer(make_optimizer(config.optimizer, train_cfg.steps), config)
    schedule = make_schedule(config.optimizer, train_cfg.steps)
    tokenizer = functools.cache(lambda: model_tokenizer(config))
    # LoRA: the policy and its reference (a copy with the starting adapters) adapted; evaluators see them merged
    trained_model = adapted(model, config)
    objective = functools.partial(preference_objective, trained_model, method)

    def init_state(rng, params=None):
        params = params or {}
        dummy = jnp.zeros((1, train_cfg.seq_len), jnp.int32)
        policy = params.get("policy") or trained_model.init(rng, dummy)["params"]
        state_params = {"policy": policy}
        if method.loss == "dpo":
            state_params["reference"] = params.get("reference", policy)
        return TrainState(step=jnp.zeros((), jnp.int32), params=state_params, opt_state=optimizer.init(policy))

    def train_step(state, batch, rng):
        def policy_objective(policy):
            return objective({**state.params, "policy": policy}, batch)
        (loss, metrics), grads = jax.value_and_grad(policy_objective, has_aux=True)(state.params["policy"])
        policy, opt_state = optimizer_update(optimizer, state.params["policy"], state.opt_state, grads)
        return TrainState(step=state.step + 1, params={**state.params, "policy": policy}, opt_state=opt_state), {
            "loss": loss, "learning_rate": schedule(state.step), **metrics}

    def eval_step(params, batch):
        _, metrics = preference_objective(model, method, params, batch)
        accuracy = metrics["reward_accuracy" if method.loss == "dpo" else "accuracy"]
        pairs = jnp.asarray(batch["chosen"].shape[0], jnp.float32)
        return {"preferred": accuracy * pairs, "pairs": pairs}

    def summarize(sums):
        return {"accuracy": float(np.asarray(sums["preferred"] / sums["pairs"]))}

    return lora_task(preference_task(config, tokenizer, init_state=init_state, train_step=train_step,
                                     eval_step=eval_step, summarize=summarize), config)
