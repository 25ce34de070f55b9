"""Reward-model training on preference pairs (`config.trainer = "reward_model"`), as LLaMA-2 §3.2.2.

The model is the decoder with a scalar head (research/models/value_model.py); a response's reward
r = v at its last token. Loss: the binary ranking loss with a margin by preference strength,

    L = −log σ(r_chosen − r_rejected − m(strength))

m from LLaMA-2's tables (`reward_model.margin`: "none"; "small" 1, 2/3, 1/3, 0; "large" 3, 2, 1, 0 for
significantly better .. negligibly better). Data: the programmatically judged pairs of
research/data/tasks/preferences.py, `kinds` choosing a helpfulness model (arithmetic, string, format)
or a safety model ("safety"). Evaluator kind "preferences": accuracy (r_chosen > r_rejected) on other
prompts, overall and per strength (LLaMA-2 Tables 7 and 8 report it so). Start the backbone from an
SFT run: `init_from = {kind: "run", path: <sft workdir>, into: "backbone"}`.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.data.preference_batches import make_preference_batches
from research.data.tasks.preferences import STRENGTHS
from research.models import count_params, make_model
from research.models.value_model import last_values
from research.optim import make_optimizer, make_schedule
from research.rl.preference_losses import LLAMA2_MARGINS, ranking_loss
from research.train.batches import IteratorBatches
from research.train.evaluators import summed_evaluator
from research.train.flops import flops_per_token
from research.train.lora_state import adapted, adapter_optimizer, lora_task
from research.train.state import TrainState
from research.train.task import Task
from research.train.trainers.lm import model_tokenizer, optimizer_update

MARGINS = ("none", *LLAMA2_MARGINS)


def pair_rewards(model, params, batch):
    """(r_chosen, r_rejected) `[B]`: each response's value at its last token, both in one forward pass."""
    tokens = jnp.concatenate([batch["chosen"], batch["rejected"]])
    lengths = jnp.concatenate([batch["chosen_length"], batch["rejected_length"]])
    rewards = last_values(model.apply({"params": params}, tokens), lengths)
    return jnp.split(rewards, 2)


def margins_of(strength, margin: str):
    """m(strength) of the `margin` table (zeros for "none")."""
    if margin == "none":
        return jnp.zeros(strength.shape, jnp.float32)
    return jnp.asarray(LLAMA2_MARGINS[margin], jnp.float32)[strength]


def preference_batches(config, tokenizer, split: str, num_epochs: int | None, seed: int):
    """This process's batches of preference pairs of `split` ("train" or "validation")."""
    return make_preference_batches(
        config.data.preferences, tokenizer, split=split, batch_size=config.train.batch_size // jax.process_count(),
        seq_len=config.train.seq_len, seed=seed, process_index=jax.process_index(),
        process_count=jax.process_count(), num_epochs=num_epochs)


def preference_spec(batch_size: int, seq_len: int) -> dict:
    """Global batch: sequences `[B, T]` and per-pair fields `[B]`, rows over the data axes."""
    def leaf(shape, axes):
        return nn.LogicallyPartitioned(jax.ShapeDtypeStruct(shape, jnp.int32), axes)
    return {"chosen": leaf((batch_size, seq_len), ("batch", None)),
            "rejected": leaf((batch_size, seq_len), ("batch", None)),
            **{name: leaf((batch_size,), ("batch",)) for name in (
                "chosen_length", "rejected_length", "prompt_length", "strength", "unsafe")}}


def preference_task(config, tokenizer, *, init_state, train_step, eval_step, summarize) -> Task:
    """The Task of a trainer on preference pairs (reward model, DPO): the pairs of `config.data.preferences`
    as batches, and each `config.evals` entry summing `eval_step(params, batch)` over held-out pairs into
    `summarize(sums)`. `tokenizer()` gives the (cached) tokenizer."""
    train_cfg = config.train

    def batches(split, num_epochs, seed):
        return preference_batches(config, tokenizer(), split, num_epochs, seed)

    def evaluators(shardings):
        return {name: summed_evaluator(c.every, eval_step, lambda: batches("validation", 1, 0), c.batches, shardings,
                                       summarize) for name, c in config.evals.items()}

    matmul_params = count_params(config.model)["active"] - config.model.vocab_size * config.model.dim
    return Task(
        init_state=init_state,
        train_step=train_step,
        batch_spec=preference_spec(train_cfg.batch_size, train_cfg.seq_len),
        batches=lambda shardings: IteratorBatches(batches("train", None, config.seed), shardings),
        evaluators=evaluators,
        tokens_per_step=2 * train_cfg.batch_size * train_cfg.seq_len,
        flops_per_token=flops_per_token(config.model, train_cfg.seq_len, matmul_params),
    )


def build(config, mesh) -> Task:
    """The reward-model Task for `config` (configs/rlhf.py:tiny_rm)."""
    rm = config.reward_model
    if rm.margin not in MARGINS:
        raise ValueError(f"config field reward_model.margin: {rm.margin!r} is not one of {MARGINS}")
    for name, evaluator_config in config.evals.items():
        if evaluator_config.kind != "preferences":
            raise ValueError(f"config field evals.{name}.kind: {evaluator_config.kind!r} is not 'preferences'")
    model = make_model(config.model, mesh)
    trained_model = adapted(model, config)  # LoRA: adapters and the head trained, evaluators see the merged model
    train_cfg = config.train
    optimizer = adapter_optimizer(make_optimizer(config.optimizer, train_cfg.steps), config)
    schedule = make_schedule(config.optimizer, train_cfg.steps)
    tokenizer = functools.cache(lambda: model_tokenizer(config))

    def init_state(rng, params=None):
        fresh = trained_model.init(rng, jnp.zeros((1, train_cfg.seq_len), jnp.int32))["params"]
        params = {**fresh, **(params or {})}
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))

    def objective(params, batch):
        chosen, rejected = pair_rewards(trained_model, params, batch)
        loss = ranking_loss(chosen, rejected, margins_of(batch["strength"], rm.margin))
        return loss, {"accuracy": jnp.mean(chosen > rejected), "reward_gap": jnp.mean(chosen - rejected)}

    def train_step(state, batch, rng):
        (loss, metrics), grads = jax.value_and_grad(objective, has_aux=True)(state.params, batch)
        params, opt_state = optimizer_update(optimizer, state.params, state.opt_state, grads)
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), {
            "loss": loss, "learning_rate": schedule(state.step), **metrics}

    def eval_step(params, batch):
        chosen, rejected = pair_rewards(model, params, batch)
        by_strength = jax.nn.one_hot(batch["strength"], len(STRENGTHS))
        return {"correct": jnp.sum(by_strength * (chosen > rejected)[:, None], axis=0),
                "pairs": jnp.sum(by_strength, axis=0)}

    def summarize(sums):
        correct, pairs = np.asarray(sums["correct"]), np.asarray(sums["pairs"])
        per_strength = {f"accuracy_{name.split()[0]}": float(c / p) for name, c, p in zip(STRENGTHS, correct, pairs) if p}
        return {"accuracy": float(correct.sum() / max(pairs.sum(), 1)), **per_strength}

    return lora_task(preference_task(config, tokenizer, init_state=init_state, train_step=train_step,
                                     eval_step=eval_step, summarize=summarize), config)
