"""Next-token language-model training (`config.trainer = "lm"`).

Loss: the mean over real target tokens of −log p(x_{t+1} | x_≤t), with packed documents
kept apart by `segment_ids`. A step of `grad_accum_steps` micro-batches sums the
micro-batch gradients of Σ w·nll / Σ_batch w, so it equals one step on the whole batch.

Evaluators (`config.evals`, research/train/evaluators.py): kind "loss" (the loss and perplexity on
the validation split, summed over `batches` batches) and kind "samples" (continuations of
`prompts`, decoded).

Mixture-of-experts models add their auxiliary losses (research/train/moe_aux.py) to the objective,
each micro-batch's weighted by its share of the batch's tokens, Σ_m w / Σ_batch w; the logged
`loss` stays the NLL, and the MoE metrics are the same token-weighted means.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.data.pipeline import make_lm_batches
from research.data.tokenizer import get_tokenizer
from research.decoding.sampling import generate
from research.models import count_params, make_model
from research.models.moe import MOE_COLLECTION
from research.optim import make_optimizer, make_schedule
from research.parallel.grad_sync import data_parallel
from research.parallel.mesh import accumulation_steps, token_batch_axes
from research.train.batches import IteratorBatches
from research.train.evaluators import Evaluator, summed_evaluator
from research.train.flops import flops_per_token
from research.train.lora_state import adapted, adapter_optimizer, lora_task
from research.train.losses import weighted_nll_sum
from research.train.moe_aux import METRICS, auxiliary_loss, layer_statistics, moe_metrics
from research.train.state import TrainState
from research.train.task import Task

BATCH_FIELDS = {"inputs": jnp.int32, "targets": jnp.int32, "positions": jnp.int32, "segment_ids": jnp.int32,
                "weights": jnp.float32}  # research/data/pipeline.py
EVAL_KINDS = ("loss", "samples")


def loss_sums(model, params, batch, rng=None):
    """(Σ w·nll, Σ w, per-layer MoE statistics) of one (micro-)batch; `rng` drives router jitter."""
    logits, variables = model.apply(
        {"params": params}, batch["inputs"], positions=batch["positions"], segment_ids=batch["segment_ids"],
        rngs={} if rng is None else {"jitter": rng}, mutable=[MOE_COLLECTION])
    nll_sum, weight = weighted_nll_sum(logits, batch["targets"], batch["weights"])
    return nll_sum, weight, layer_statistics(variables.get(MOE_COLLECTION, {}))


def split_microbatches(batch: dict, num_micro: int) -> dict:
    """`[B, ...]` → `[num_micro, B/num_micro, ...]`, micro-batch m taking rows m, m+A, m+2A, ...

    (strided, so every device keeps holding an equal share of every micro-batch).
    """
    return jax.tree.map(lambda x: x.reshape(x.shape[0] // num_micro, num_micro, *x.shape[1:]).swapaxes(0, 1), batch)


def minibatch_epochs(batch: dict, num_minibatches: int, epochs: int) -> dict:
    """`[B, ...]` → `[epochs · num_minibatches, B/num_minibatches, ...]`: the strided mini-batches of
    `split_microbatches`, repeated for `epochs` passes (the updates a `lax.scan` runs in order)."""
    minibatches = split_microbatches(batch, num_minibatches)
    return jax.tree.map(lambda x: jnp.concatenate([x] * epochs), minibatches)


def accumulated_gradients(model, params, batch, total_weight, rng, num_micro: int):
    """(loss, grads, metrics) of `batch`: sums over micro-batches of Σ_m w·nll / W, of the gradient
    of that plus the micro-batch's share Σ_m w / W of the MoE auxiliary loss, and of the MoE metrics
    weighted by the same share. W = `total_weight` (the whole global batch's, so partial results
    add up, also across data-parallel shards)."""
    moe = model.config.get("moe")

    def micro_objective(p, micro, micro_rng):
        nll_sum, weight, statistics = loss_sums(model, p, micro, micro_rng)
        share = weight / total_weight
        loss = nll_sum / total_weight
        metrics = {name: share * value for name, value in moe_metrics(statistics).items()}
        return loss + share * auxiliary_loss(statistics, moe), (loss, metrics)

    grad_fn = jax.grad(micro_objective, has_aux=True)
    if num_micro == 1:
        grads, (loss, metrics) = grad_fn(params, batch, rng)
        return loss, grads, metrics

    def accumulate(carry, micro_and_rng):
        grads, (loss, metrics) = grad_fn(params, *micro_and_rng)
        return jax.tree.map(jnp.add, carry, (loss, grads, metrics)), None

    zero = jnp.zeros((), jnp.float32)
    zeros = (zero, jax.tree.map(jnp.zeros_like, params), {name: zero for name in (METRICS if moe else ())})
    rngs = jax.random.split(rng, num_micro)
    (loss, grads, metrics), _ = jax.lax.scan(accumulate, zeros, (split_microbatches(batch, num_micro), rngs))
    return loss, grads, metrics


def make_init_state(model, optimizer, seq_len: int):
    """`(rng, params=None) -> TrainState`: fresh boxed (logically partitioned) parameters, or the
    given ones, and a fresh optimizer state."""

    def init_state(rng, params=None):
        if params is None:
            params = model.init(rng, jnp.zeros((1, seq_len), jnp.int32))["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))

    return init_state


def lm_batch_spec(batch_size: int, seq_len: int) -> dict:
    """The global LM batch: every field `[batch, seq]`, rows over the data axes, the sequence over `context`."""
    return {name: nn.LogicallyPartitioned(jax.ShapeDtypeStruct((batch_size, seq_len), dtype), token_batch_axes())
            for name, dtype in BATCH_FIELDS.items()}


def optimizer_update(optimizer, params, opt_state, grads):
    """One optimizer step: (new params, new optimizer state)."""
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def make_train_step(model, optimizer, schedule, num_micro: int, mesh=None, grad_reduce: str = "auto"):
    """`train_step(state, batch, rng) -> (state, metrics)`: one optimizer update on the batch,
    gradients synchronised over the data axis as `grad_reduce` says (research/parallel/grad_sync.py)."""
    gradients = data_parallel(functools.partial(accumulated_gradients, model, num_micro=num_micro), mesh,
                              grad_reduce)

    def train_step(state, batch, rng):
        total_weight = jnp.maximum(jnp.sum(batch["weights"].astype(jnp.float32)), 1.0)
        loss, grads, moe = gradients(state.params, batch, total_weight, rng)
        params, opt_state = optimizer_update(optimizer, state.params, state.opt_state, grads)
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), "learning_rate": schedule(state.step), **moe}
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def sample_texts(model, tokenizer, prompts, *, max_new_tokens: int, temperature: float, top_k: int | None, rng):
    """`run(params)` of a samples evaluator: each prompt (after BOS) continued, decoded with its prompt."""
    encoded = [[tokenizer.bos_id] + tokenizer.encode(p) for p in prompts]

    def run(params):
        if not encoded:
            return {"text": []}
        tokens = generate(model, params, encoded, max_new_tokens=max_new_tokens, temperature=temperature,
                          top_k=top_k, rng=rng, eos_id=tokenizer.eos_id)
        return {"text": [tokenizer.decode(row) for row in np.asarray(tokens).tolist()]}

    return run


def model_tokenizer(config):
    """The tokenizer `config.data` names; ValueError if its vocabulary exceeds the model's."""
    loaded = get_tokenizer(config.data)
    if loaded.vocab_size > config.model.vocab_size:
        raise ValueError(f"config field model.vocab_size: {config.model.vocab_size} is smaller than the "
                         f"tokenizer's vocabulary ({loaded.vocab_size})")
    return loaded


def corpus_batches(config, tokenizer, *, split: str, num_epochs: int | None, seed: int):
    """This process's packed rows of the text corpus `config.data` names."""
    return make_lm_batches(
        config.data, tokenizer, split=split, batch_size=config.train.batch_size // jax.process_count(),
        seq_len=config.train.seq_len, seed=seed, process_index=jax.process_index(),
        process_count=jax.process_count(), num_epochs=num_epochs)


def build(config, mesh) -> Task:
    """Model, optimizer, data and steps of LM training for `config`."""
    return build_lm_task(config, mesh, corpus_batches)


def build_lm_task(config, mesh, rows, more_evaluators=None) -> Task:
    """Next-token training of `config.model` on the rows `rows(config, tokenizer, *, split, num_epochs,
    seed)` iterates ("train" and "validation" splits; the LM fields of research/data/packing.py, whose
    `weights` choose the trained tokens). `more_evaluators` maps further evaluator kinds to
    `make(evaluator_config, model, tokenizer) -> Evaluator`."""
    more_evaluators = more_evaluators or {}
    kinds = EVAL_KINDS + tuple(more_evaluators)
    for name, evaluator_config in config.evals.items():
        if evaluator_config.kind not in kinds:
            raise ValueError(f"config field evals.{name}.kind: {evaluator_config.kind!r} is not one of {kinds}")
    # Inside the data-parallel shard_map of a hand-rolled gradient reduction the model sees its own
    # rows only (that mesh is data-parallel alone), so it gets no mesh to pin activations to.
    model = make_model(config.model, mesh if config.parallel.grad_reduce == "auto" else None)
    train_cfg = config.train
    trained_model = adapted(model, config)  # LoRA: adapters trained, evaluators see the merged model
    optimizer = adapter_optimizer(make_optimizer(config.optimizer, train_cfg.steps), config)
    schedule = make_schedule(config.optimizer, train_cfg.steps)

    tokenizer = functools.cache(lambda: model_tokenizer(config))

    def eval_step(params, batch):
        nll_sum, weight, statistics = loss_sums(model, params, batch)
        weighted = {f"{name}_sum": weight * value for name, value in moe_metrics(statistics).items()}
        return {"nll_sum": nll_sum, "tokens": weight, **weighted}

    def summarize_eval(sums):
        tokens = max(float(sums["tokens"]), 1.0)
        loss = float(sums["nll_sum"]) / tokens
        moe = {name.removesuffix("_sum"): float(value) / tokens for name, value in sums.items()
               if name.startswith("moe_")}
        return {"loss": loss, "perplexity": float(np.exp(loss)), **moe}

    def batches(split, num_epochs, seed):
        return rows(config, tokenizer(), split=split, num_epochs=num_epochs, seed=seed)

    def evaluator(evaluator_config, shardings) -> Evaluator:
        if evaluator_config.kind == "loss":
            return summed_evaluator(evaluator_config.every, eval_step, lambda: batches("validation", 1, 0),
                                    evaluator_config.batches, shardings, summarize_eval)
        if evaluator_config.kind == "samples":
            return Evaluator(evaluator_config.every, sample_texts(
                model, tokenizer(), evaluator_config.prompts, max_new_tokens=evaluator_config.max_new_tokens,
                temperature=evaluator_config.temperature, top_k=evaluator_config.top_k,
                rng=jax.random.key(config.seed)))
        return more_evaluators[evaluator_config.kind](evaluator_config, model, tokenizer())

    matmul_params = count_params(config.model)["active"] - config.model.vocab_size * config.model.dim
    return lora_task(Task(
        init_state=make_init_state(trained_model, optimizer, train_cfg.seq_len),
        train_step=make_train_step(trained_model, optimizer, schedule,
                                   accumulation_steps(train_cfg, {} if mesh is None else mesh.shape), mesh,
                                   config.parallel.grad_reduce),
        batch_spec=lm_batch_spec(train_cfg.batch_size, train_cfg.seq_len),
        batches=lambda shardings: IteratorBatches(batches("train", None, config.seed), shardings),
        evaluators=lambda shardings: {name: evaluator(c, shardings) for name, c in config.evals.items()},
        tokens_per_step=train_cfg.batch_size * train_cfg.seq_len,
        flops_per_token=flops_per_token(config.model, train_cfg.seq_len, matmul_params),
    ), config)
