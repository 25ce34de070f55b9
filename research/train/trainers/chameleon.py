"""Early-fusion training (`config.trainer = "chameleon"`): Chameleon's decoder on interleaved image–text documents.

    loss = Σ_t w_t·nll_t / Σ_t w_t  +  λ_z · Σ_t w_t·log²Z_t / Σ_t w_t,    log Z_t = logsumexp(z_t)

over the batch's real tokens t, λ_z = `model.z_loss_weight` (research/models/chameleon.py), with
residual dropout at `model.dropout` (a key per step and micro-batch). A step of `grad_accum_steps`
micro-batches sums their gradients of those sums over the whole batch's Σ w, so it equals one step
on the whole batch. Logged: `loss` (the NLL alone), `z_loss` (mean log²Z, before λ_z), `logit_norm`
(mean ‖z_t‖/√V) and `output_norm` (mean ‖h_t‖ of the final normed hidden state the output head reads,
whose growth Chameleon's Fig. 5 tracks), `grad_norm`, `learning_rate`.

Data: research/data/interleaved.py's documents (caption, draw, boxes) of `data.name`'s scenes, their
images as token ids of the frozen VQ tokenizer trained by the vq_image_tokenizer run in
`data.image_tokenizer_workdir` (its newest checkpoint; that run's `model` must be this config's
`model.image_tokenizer`). The first `data.train_images` training records and every validation record
are encoded once, when the run first needs them (the ahead-of-time compiler never does).

Evaluators (`config.evals`): kind "loss" (NLL, perplexity and z-loss on validation documents), and the
generation kinds of research/train/chameleon_evaluators.py: "captions", "grounding", and "drawing"
(which also writes a PNG grid into the workdir).
"""

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.data.interleaved import interleaved_documents, make_interleaved_batches
from research.data.image_batches import to_pixels
from research.data.scenes import data_source
from research.models import count_params, make_model
from research.models.chameleon import IMAGE_TOKENIZER, image_tokens, z_loss
from research.models.vq_image_tokenizer import VQImageTokenizer, init_pixels
from research.optim import make_optimizer, make_schedule
from research.parallel.grad_sync import data_parallel
from research.train import chameleon_evaluators
from research.train.batches import IteratorBatches
from research.train.checkpoint import Checkpointer
from research.train.evaluators import summed_evaluator
from research.train.flops import flops_per_token
from research.train.losses import token_nll
from research.train.state import TrainState
from research.train.task import Task
from research.train.trainers.lm import (lm_batch_spec, make_init_state, model_tokenizer, optimizer_update,
                                        split_microbatches)

EVAL_KINDS = ("loss",) + chameleon_evaluators.KINDS
SUMS = ("nll", "z_loss", "logit_norm", "output_norm", "tokens")
ENCODE_BATCH = 256  # images a call of the VQ encoder


def token_sums(model, params, batch, rng=None) -> dict:
    """Σ w·nll, Σ w·log²Z, Σ w·‖z‖/√V, Σ w·‖h‖ and Σ w of one (micro-)batch; `rng` turns dropout on."""
    logits, hidden = model.apply(
        {"params": params}, batch["inputs"], positions=batch["positions"], segment_ids=batch["segment_ids"],
        rngs={} if rng is None else {"dropout": rng}, return_hidden=True)
    weights = batch["weights"].astype(jnp.float32)
    tokens = jnp.sum(weights)
    logits32 = logits.astype(jnp.float32)
    return {"nll": jnp.sum(token_nll(logits32, batch["targets"]) * weights),
            "z_loss": z_loss(logits32, weights) * tokens,
            "logit_norm": jnp.sum(jnp.linalg.norm(logits32, axis=-1) * weights) / np.sqrt(logits.shape[-1]),
            "output_norm": jnp.sum(jnp.linalg.norm(hidden.astype(jnp.float32), axis=-1) * weights),
            "tokens": tokens}


def accumulated_gradients(model, params, batch, total_weight, rng, num_micro: int):
    """(sums, grads): `token_sums` of the batch and the gradient of (Σ w·nll + λ_z Σ w·log²Z) / W,
    summed over `num_micro` strided micro-batches, W = `total_weight` (the global batch's Σ w)."""
    weight = model.config.z_loss_weight

    def micro_objective(p, micro, micro_rng):
        sums = token_sums(model, p, micro, micro_rng)
        return (sums["nll"] + weight * sums["z_loss"]) / total_weight, sums

    grad_fn = jax.grad(micro_objective, has_aux=True)
    if num_micro == 1:
        grads, sums = grad_fn(params, batch, rng)
        return sums, grads

    def accumulate(carry, micro_and_rng):
        grads, sums = grad_fn(params, *micro_and_rng)
        return jax.tree.map(jnp.add, carry, (sums, grads)), None

    zeros = ({name: jnp.zeros((), jnp.float32) for name in SUMS}, jax.tree.map(jnp.zeros_like, params))
    rngs = jax.random.split(rng, num_micro)
    (sums, grads), _ = jax.lax.scan(accumulate, zeros, (split_microbatches(batch, num_micro), rngs))
    return sums, grads


def make_train_step(model, optimizer, schedule, num_micro: int, mesh=None, grad_reduce: str = "auto"):
    """`train_step(state, batch, rng) -> (state, metrics)`: one optimizer update on NLL + z-loss, dropout
    drawn from `rng`, gradients synchronised over the data axis as `grad_reduce` says."""
    gradients = data_parallel(functools.partial(accumulated_gradients, model, num_micro=num_micro), mesh,
                              grad_reduce)

    def train_step(state, batch, rng):
        total_weight = jnp.maximum(jnp.sum(batch["weights"].astype(jnp.float32)), 1.0)
        sums, grads = gradients(state.params, batch, total_weight, rng)
        params, opt_state = optimizer_update(optimizer, state.params, state.opt_state, grads)
        metrics = {"loss": sums["nll"] / total_weight,
                   **{name: sums[name] / total_weight for name in ("z_loss", "logit_norm", "output_norm")},
                   "grad_norm": optax.global_norm(grads), "learning_rate": schedule(state.step)}
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def summarize_loss(sums) -> dict:
    tokens = max(float(sums["tokens"]), 1.0)
    loss = float(sums["nll"]) / tokens
    return {"loss": loss, "perplexity": float(np.exp(loss)), "z_loss": float(sums["z_loss"]) / tokens}


def load_image_tokenizer(workdir: str, tokenizer_config):
    """The parameters of the VQ tokenizer trained in `workdir` (its newest checkpoint), on this host's
    first device; ValueError naming `data.image_tokenizer_workdir` when there is none or it has another shape."""
    field = "config field data.image_tokenizer_workdir"
    checkpoints = Path(workdir) / "checkpoints"
    if not checkpoints.is_dir() or not any(path.name.isdigit() for path in checkpoints.iterdir()):
        raise ValueError(f"{field}: {workdir!r} holds no trained VQ image tokenizer; train one first with "
                         f"python -m research.run --config configs/vq_image_tokenizer.py:tiny --workdir {workdir}")
    trained = json.loads((Path(workdir) / "config.json").read_text())["model"]
    expected = json.loads(tokenizer_config.to_json())
    differences = sorted(key for key in expected if trained.get(key) != expected[key])
    if differences:
        raise ValueError(f"{field}: the tokenizer in {workdir!r} differs from model.{IMAGE_TOKENIZER} in "
                         f"{', '.join(differences)}")
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.eval_shape(lambda x: VQImageTokenizer(tokenizer_config).init(jax.random.key(0), x)["params"],
                              *init_pixels(tokenizer_config))
    abstract = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device), abstract)
    with Checkpointer(str(checkpoints), read_only=True) as reader:
        return reader.restore_params(reader.newest_step(), abstract)


def encode_records(model_config, tokenizer_params, records) -> np.ndarray:
    """int32 `[len(records), image_seq_len]`: each record's image as token ids (`chameleon.image_tokens`)."""
    encode = jax.jit(lambda params, pixels: image_tokens(model_config, params, pixels))
    params = {IMAGE_TOKENIZER: tokenizer_params}
    batches = [np.stack([to_pixels(records[i]) for i in range(start, min(start + ENCODE_BATCH, len(records)))])
               for start in range(0, len(records), ENCODE_BATCH)]
    return np.concatenate([np.asarray(encode(params, pixels)) for pixels in batches]).astype(np.int32)


class ImageData:
    """The split records, their image token ids and the frozen VQ tokenizer's parameters, made when first asked for."""

    def __init__(self, config):
        self.config = config

    @functools.cached_property
    def tokenizer_params(self):
        return load_image_tokenizer(self.config.data.image_tokenizer_workdir, self.config.model.image_tokenizer)

    @functools.cache
    def records(self, split: str):
        records = data_source(self.config.data.name, split, self.config.data.data_dir)
        count = min(len(records), self.config.data.train_images) if split == "train" else len(records)
        return [records[i] for i in range(count)]

    @functools.cache
    def image_ids(self, split: str) -> np.ndarray:
        return encode_records(self.config.model, self.tokenizer_params, self.records(split))


def check_config(config) -> None:
    for name, evaluator in config.evals.items():
        if evaluator.kind not in EVAL_KINDS:
            raise ValueError(f"config field evals.{name}.kind: {evaluator.kind!r} is not one of {EVAL_KINDS}")
    if IMAGE_TOKENIZER not in config.model:
        raise ValueError(f"config field model.{IMAGE_TOKENIZER}: early-fusion training needs the VQ tokenizer's config")
    if config.data.train_images < 1:
        raise ValueError(f"config field data.train_images: must be >= 1, got {config.data.train_images}")


def build(config, mesh) -> Task:
    """Model, optimizer, interleaved data and steps of early-fusion training for `config`."""
    check_config(config)
    model = make_model(config.model, mesh if config.parallel.grad_reduce == "auto" else None)
    train_cfg = config.train
    optimizer = make_optimizer(config.optimizer, train_cfg.steps)
    text_tokenizer = functools.cache(lambda: model_tokenizer(config))
    data = ImageData(config)

    def batches(split, num_epochs, seed):
        documents = interleaved_documents(data.records(split), data.image_ids(split), text_tokenizer(), config.model,
                                          config.data.kinds)
        return make_interleaved_batches(
            documents, batch_size=train_cfg.batch_size // jax.process_count(), seq_len=train_cfg.seq_len, seed=seed,
            process_index=jax.process_index(), process_count=jax.process_count(), num_epochs=num_epochs)

    def evaluators(shardings):
        made = {}
        for name, evaluator in config.evals.items():
            if evaluator.kind == "loss":
                made[name] = summed_evaluator(evaluator.every, lambda params, batch: token_sums(model, params, batch),
                                              lambda: batches("validation", 1, 0), evaluator.batches, shardings,
                                              summarize_loss)
            elif evaluator.kind not in chameleon_evaluators.WORKDIR_KINDS:
                made[name] = chameleon_evaluators.make(evaluator, model, text_tokenizer(), data, None)
        return made

    def workdir_evaluators(shardings, workdir):
        return {name: chameleon_evaluators.make(evaluator, model, text_tokenizer(), data, Path(workdir))
                for name, evaluator in config.evals.items() if evaluator.kind in chameleon_evaluators.WORKDIR_KINDS}

    matmul_params = count_params(config.model)["active"] - config.model.vocab_size * config.model.dim
    return Task(
        init_state=make_init_state(model, optimizer, train_cfg.seq_len),
        train_step=make_train_step(model, optimizer, make_schedule(config.optimizer, train_cfg.steps),
                                   train_cfg.grad_accum_steps, mesh, config.parallel.grad_reduce),
        batch_spec=lm_batch_spec(train_cfg.batch_size, train_cfg.seq_len),
        batches=lambda shardings: IteratorBatches(batches("train", None, config.seed), shardings),
        evaluators=evaluators,
        workdir_evaluators=workdir_evaluators,
        tokens_per_step=train_cfg.batch_size * train_cfg.seq_len,
        flops_per_token=flops_per_token(config.model, train_cfg.seq_len, matmul_params),
    )
