"""Medusa heads training (`config.trainer = "medusa"`; Cai et al., 2024), on the LM trainer's data.

Head k (k = 0, ..., K−1) at position t predicts x_{t+k+2}: its target is the LM target k + 1
positions later, counted where that position is a trained token of the same packed document
(`head_targets`). With CE_k the mean over head k's counted tokens of −log p_k(target):

    Medusa-1 (medusa.stage 1):  L = Σ_k λ_k·CE_k,  λ_k = medusa.head_decay^k (0.8^k)
    Medusa-2 (medusa.stage 2):  L = L_LM + λ0·Σ_k λ_k·CE_k,  λ0 = medusa.heads_weight

In stage 1 the backbone is frozen: the loss reads it through `stop_gradient` and its update is
`optax.set_to_zero`, which keeps no optimizer state, so the state holds Adam moments for the
heads only and the backbone stays bitwise unchanged. In stage 2 the backbone trains with the
same optimizer at learning rate × medusa.backbone_lr_scale. (Each part clips its own gradient norm.)
A step of `grad_accum_steps` micro-batches divides by the whole batch's token counts, so it equals
one step on the whole batch.

Start from a pretrained LM run: `init_from = {kind: "run", path: <its workdir>, parts: "params",
into: "backbone"}` hands `init_state` {"backbone": its parameters}; the heads start fresh (own LM
heads copied from the backbone's lm_head).

Evaluator kind "heads" (`config.evals`): on the validation split, each head's top-1 accuracy and
loss (`head<k+1>_top1`, `head<k+1>_loss`, numbered 1..K as in the paper), the base model's
`lm_loss` and the objective's heads part `loss`.
"""

import functools

import jax
import jax.numpy as jnp
import optax

from research.config import unfrozen
from research.models import count_params, make_model
from research.models.medusa import fresh_heads
from research.optim import make_optimizer, make_schedule
from research.parallel.grad_sync import data_parallel
from research.parallel.mesh import accumulation_steps
from research.train.batches import IteratorBatches
from research.train.evaluators import summed_evaluator
from research.train.flops import flops_per_token
from research.train.losses import token_nll, weighted_nll_sum
from research.train.state import TrainState
from research.train.task import Task
from research.train.trainers.lm import (corpus_batches, lm_batch_spec, model_tokenizer, optimizer_update,
                                        split_microbatches)

STAGES = (1, 2)
EVAL_KINDS = ("heads",)


def head_targets(batch: dict, num_heads: int):
    """(targets, weights), each `[K, b, s]`: head k's target at t is `targets[t + k + 1]`, weighted by
    that position's weight where it lies in the same packed document as t (0 past the row's end)."""

    def later(x, k):
        return jnp.pad(x[:, k + 1:], ((0, 0), (0, k + 1)))

    segments = batch["segment_ids"]
    targets = jnp.stack([later(batch["targets"], k) for k in range(num_heads)])
    weights = jnp.stack([later(batch["weights"].astype(jnp.float32), k) * (later(segments, k) == segments)
                         for k in range(num_heads)])
    return targets, weights


def head_sums(medusa_logits, targets, weights):
    """Per head `[K]`: Σ w·nll, Σ w·[argmax = target], Σ w over the batch."""
    nll = token_nll(medusa_logits, targets)
    correct = (jnp.argmax(medusa_logits, axis=-1) == targets).astype(jnp.float32)
    return (jnp.sum(weights * nll, axis=(1, 2)), jnp.sum(weights * correct, axis=(1, 2)),
            jnp.sum(weights, axis=(1, 2)))


def batch_sums(model, params, batch):
    """The sums of one (micro-)batch: heads' (`head_sums`) and the base model's Σ w·nll, Σ w."""
    logits, medusa_logits = model.apply({"params": params}, batch["inputs"], positions=batch["positions"],
                                        segment_ids=batch["segment_ids"])
    nll, correct, weight = head_sums(medusa_logits, *head_targets(batch, medusa_logits.shape[0]))
    lm_nll, lm_weight = weighted_nll_sum(logits, batch["targets"], batch["weights"])
    return {"nll": nll, "correct": correct, "weight": weight, "lm_nll": lm_nll, "lm_weight": lm_weight}


def head_decays(medusa_config, num_heads: int):
    """λ_k = head_decay^k for k = 0..K−1."""
    return medusa_config.head_decay ** jnp.arange(num_heads, dtype=jnp.float32)


def objective(model, medusa_config, params, batch, totals):
    """(L, metrics) of a (micro-)batch, each sum divided by the whole batch's `totals` (module docstring)."""
    if medusa_config.stage == 1:
        params = {**params, "backbone": jax.lax.stop_gradient(params["backbone"])}
    sums = batch_sums(model, params, batch)
    head_losses = sums["nll"] / totals["weight"]
    heads_loss = jnp.sum(head_decays(medusa_config, head_losses.shape[0]) * head_losses)
    lm_loss = sums["lm_nll"] / totals["lm_weight"]
    loss = heads_loss if medusa_config.stage == 1 else lm_loss + medusa_config.heads_weight * heads_loss
    metrics = {"loss": loss, "medusa_loss": heads_loss, "lm_loss": lm_loss}
    for k in range(head_losses.shape[0]):
        metrics[f"head{k + 1}_loss"] = head_losses[k]
        metrics[f"head{k + 1}_top1"] = sums["correct"][k] / totals["weight"][k]
    return loss, metrics


def accumulated_gradients(loss_fn, params, batch, totals, num_micro: int):
    """(grads, metrics) of `loss_fn(params, batch, totals) -> (loss, metrics)` summed over `num_micro`
    micro-batches (`split_microbatches`); each term is already divided by the whole batch's totals."""
    grad_fn = jax.grad(loss_fn, has_aux=True)
    if num_micro == 1:
        return grad_fn(params, batch, totals)
    micro_batches = split_microbatches(batch, num_micro)

    def accumulate(carry, micro):
        return jax.tree.map(jnp.add, carry, grad_fn(params, micro, totals)), None

    shapes = jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro_batches), totals)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    return jax.lax.scan(accumulate, zeros, micro_batches)[0]


def batch_totals(batch, num_heads: int) -> dict:
    """The whole batch's token counts: per head `[K]` and the base model's (at least 1)."""
    head_weights = jnp.sum(head_targets(batch, num_heads)[1], axis=(1, 2))
    return {"weight": jnp.maximum(head_weights, 1.0),
            "lm_weight": jnp.maximum(jnp.sum(batch["weights"].astype(jnp.float32)), 1.0)}


def medusa_optimizer(config) -> optax.GradientTransformation:
    """The configured optimizer for the heads; for the backbone nothing (stage 1: updates set to zero,
    no state) or the same optimizer at learning rate × backbone_lr_scale (stage 2)."""
    steps = config.train.steps
    if config.medusa.stage == 1:
        backbone = optax.set_to_zero()
    else:
        scaled = unfrozen(config.optimizer)
        scaled.learning_rate = config.optimizer.learning_rate * config.medusa.backbone_lr_scale
        backbone = make_optimizer(scaled, steps)
    return optax.multi_transform({"heads": make_optimizer(config.optimizer, steps), "backbone": backbone},
                                 {"backbone": "backbone", "medusa": "heads"})


def make_init_state(model, optimizer, seq_len: int):
    """`(rng, params=None) -> TrainState`: fresh parameters; or {"backbone": ...} (init_from into
    "backbone") with fresh heads for that backbone; or complete parameters as given."""

    def init_state(rng, params=None):
        if params is None:
            params = model.init(rng, jnp.zeros((1, seq_len), jnp.int32))["params"]
        elif "medusa" not in params:
            params = {"backbone": params["backbone"], "medusa": fresh_heads(model.config, rng, params["backbone"])}
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))

    return init_state


def make_train_step(model, config, optimizer, mesh=None):
    """`train_step(state, batch, rng) -> (state, metrics)`: one optimizer update on the batch."""
    num_heads = config.model.medusa.num_heads
    schedule = make_schedule(config.optimizer, config.train.steps)
    loss_fn = functools.partial(objective, model, config.medusa)
    gradients = data_parallel(
        functools.partial(accumulated_gradients, loss_fn, num_micro=accumulation_steps(
            config.train, {} if mesh is None else mesh.shape)),
        mesh, config.parallel.grad_reduce)

    def train_step(state, batch, rng):
        del rng
        grads, metrics = gradients(state.params, batch, batch_totals(batch, num_heads))
        params, opt_state = optimizer_update(optimizer, state.params, state.opt_state, grads)
        metrics = {**metrics, "grad_norm": optax.global_norm(grads["medusa"] if config.medusa.stage == 1 else grads),
                   "learning_rate": schedule(state.step)}
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def summarize_heads(medusa_config, sums) -> dict:
    """The "heads" evaluator's metrics from its summed `batch_sums`."""
    weight = jnp.maximum(sums["weight"], 1.0)
    head_losses = sums["nll"] / weight
    metrics = {"loss": float(jnp.sum(head_decays(medusa_config, len(weight)) * head_losses)),
               "lm_loss": float(sums["lm_nll"] / max(float(sums["lm_weight"]), 1.0))}
    for k in range(len(weight)):
        metrics[f"head{k + 1}_loss"] = float(head_losses[k])
        metrics[f"head{k + 1}_top1"] = float(sums["correct"][k] / weight[k])
    return metrics


def medusa_flops_per_token(config) -> float:
    """Backbone FLOPs (forward + backward in stage 2; forward only, a third, in stage 1) plus 6·N
    for the heads' N matmul parameters K·(d² + d) (+ K·d·V for own LM heads)."""
    model = config.model
    heads = model.medusa.num_heads * (model.dim ** 2 + model.dim
                                      + (0 if model.medusa.shared_lm_head else model.dim * model.vocab_size))
    backbone_matmuls = count_params(model)["total"] - heads - model.vocab_size * model.dim
    backbone = flops_per_token(model, config.train.seq_len, backbone_matmuls)
    return (backbone if config.medusa.stage == 2 else backbone / 3) + 6 * heads


def build(config, mesh) -> Task:
    """Model, optimizer, data and steps of Medusa training for `config` (configs/medusa.py)."""
    if config.medusa.stage not in STAGES:
        raise ValueError(f"config field medusa.stage: {config.medusa.stage!r} is not one of {STAGES}")
    for name, evaluator_config in config.evals.items():
        if evaluator_config.kind not in EVAL_KINDS:
            raise ValueError(f"config field evals.{name}.kind: {evaluator_config.kind!r} is not one of {EVAL_KINDS}")
    model = make_model(config.model, mesh if config.parallel.grad_reduce == "auto" else None)
    optimizer = medusa_optimizer(config)

    tokenizer = functools.cache(lambda: model_tokenizer(config))

    def heads_evaluator(evaluator_config, shardings):
        return summed_evaluator(
            evaluator_config.every, functools.partial(batch_sums, model),
            lambda: corpus_batches(config, tokenizer(), split="validation", num_epochs=1, seed=0),
            evaluator_config.batches, shardings, functools.partial(summarize_heads, config.medusa))

    def train_rows():
        return corpus_batches(config, tokenizer(), split="train", num_epochs=None, seed=config.seed)

    return Task(
        init_state=make_init_state(model, optimizer, config.train.seq_len),
        train_step=make_train_step(model, config, optimizer, mesh),
        batch_spec=lm_batch_spec(config.train.batch_size, config.train.seq_len),
        batches=lambda shardings: IteratorBatches(train_rows(), shardings),
        evaluators=lambda shardings: {name: heads_evaluator(c, shardings) for name, c in config.evals.items()},
        tokens_per_step=config.train.batch_size * config.train.seq_len,
        flops_per_token=medusa_flops_per_token(config),
    )
