"""VQ image-tokenizer training (`config.trainer = "image_tokenizer"`), research/models/vq_image_tokenizer.py.

    loss = L_rec + L_vq,   L_rec = mean |x̂ − x| ("l1") or mean (x̂ − x)² ("l2") over pixels and channels
                           (`config.loss.reconstruction`), L_vq the codebook and commitment losses

After each optimizer update `update_codebook` moves the codebook's statistics (the model's
`CODEBOOK_STATS` collection, kept in the state beside the parameters): steps since each code was
last used, the EMA codebook when `model.codebook_update = "ema"`, and restarts of dead codes (drawn
with the step's key). Metrics of a step: loss, reconstruction_loss, vq_loss, codebook_usage (the
fraction of codes the batch used), perplexity, grad_norm, learning_rate.

Batches: `{"images": [batch, H, W, C]}` in [-1, 1], axes ("batch", None, None, None), from
`config.data.name` (research/data/scenes.py, research/data/image_batches.py). The loop counts images
as its tokens: `tokens_per_step` is the batch size and `flops_per_token` the training FLOPs of one
image, estimated as 3× the forward pass's FLOPs as XLA counts them (the backward pass costs about
twice the forward).

Evaluators (`config.evals`): kind "reconstruction" (over `batches` validation batches: l1, mse, psnr
= 10·log10(2² / mse) for pixels spanning 2, codebook_usage and perplexity of all their codes) and
kind "grid" (`images` validation images above their reconstructions, 4× enlarged, written to
`<workdir>/reconstructions.png`; logged: the file and its images' mean absolute error).
"""

from pathlib import Path
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import optax

from research.data.image_batches import image_batches, to_pixels
from research.data.scenes import data_source
from research.models import make_model
from research.models.vq_image_tokenizer import (CODEBOOK_STATS, code_counts, codebook_metrics, init_key,
                                                  update_codebook)
from research.optim import make_optimizer, make_schedule
from research.train.batches import IteratorBatches
from research.train.evaluators import Evaluator, summed_evaluator
from research.train.state import TrainState
from research.train.task import Task

RECONSTRUCTION_LOSSES = ("l1", "l2")
EVAL_KINDS = ("reconstruction", "grid")
WORKDIR_EVAL_KINDS = ("grid",)
IMAGE_AXES = ("batch", None, None, None)
GRID_FILE = "reconstructions.png"
GRID_SCALE = 4  # pixels of the PNG per image pixel


@flax.struct.dataclass
class TokenizerState(TrainState):
    """The train state with the codebook's statistics (the `CODEBOOK_STATS` collection)."""

    codebook_stats: Any


def reconstruction_loss(reconstruction, images, kind: str):
    """mean |x̂ − x| ("l1") or mean (x̂ − x)² ("l2"), in float32."""
    error = reconstruction.astype(jnp.float32) - images.astype(jnp.float32)
    return jnp.mean(jnp.abs(error)) if kind == "l1" else jnp.mean(error**2)


def make_init_state(model, optimizer, image_shape):
    """`(rng, params=None) -> TokenizerState`: fresh parameters and statistics, or the given parameters
    with the statistics a fresh run keeps for their codebook."""
    pixels = jnp.zeros((1, *image_shape), jnp.float32)

    def init_state(rng, params=None):
        if params is None:
            variables = model.init(init_key(rng), pixels)
        else:
            _, stats = model.apply({"params": params}, pixels, mutable=[CODEBOOK_STATS])
            variables = {"params": params, **stats}
        return TokenizerState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                              opt_state=optimizer.init(variables["params"]),
                              codebook_stats=variables[CODEBOOK_STATS])

    return init_state


def make_train_step(model, optimizer, schedule, loss_kind: str):
    """`train_step(state, batch, rng) -> (state, metrics)`: one optimizer update on L_rec + L_vq, then
    `update_codebook` with the step's encoder outputs."""

    def objective(params, images):
        outputs = model.apply({"params": params}, images)
        recon = reconstruction_loss(outputs["reconstruction"], images, loss_kind)
        return recon + outputs["vq_loss"], (recon, outputs)

    def train_step(state, batch, rng):
        (loss, (recon, outputs)), grads = jax.value_and_grad(objective, has_aux=True)(state.params, batch["images"])
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params, stats = update_codebook(model.config, optax.apply_updates(state.params, updates),
                                        state.codebook_stats, outputs["latents"], outputs["codes"], rng)
        metrics = {"loss": loss, "reconstruction_loss": recon, "vq_loss": outputs["vq_loss"],
                   **codebook_metrics(code_counts(outputs["codes"], model.config.num_embeddings)),
                   "grad_norm": optax.global_norm(grads), "learning_rate": schedule(state.step)}
        return TokenizerState(step=state.step + 1, params=params, opt_state=opt_state, codebook_stats=stats), metrics

    return train_step


def reconstruction_sums(model, params, batch) -> dict:
    """Σ |x̂ − x|, Σ (x̂ − x)², the number of values and the code counts of one batch."""
    outputs = model.apply({"params": params}, batch["images"])
    error = outputs["reconstruction"] - batch["images"]
    return {"abs_error": jnp.sum(jnp.abs(error)), "squared_error": jnp.sum(error**2),
            "values": jnp.asarray(error.size, jnp.float32),
            "code_counts": code_counts(outputs["codes"], model.config.num_embeddings)}


def summarize_reconstruction(sums) -> dict:
    mse = float(sums["squared_error"] / sums["values"])
    usage = {name: float(value) for name, value in codebook_metrics(jnp.asarray(sums["code_counts"])).items()}
    return {"l1": float(sums["abs_error"] / sums["values"]), "mse": mse,
            "psnr": float(10 * np.log10(4.0 / max(mse, 1e-12))), **usage}


def image_grid(originals: np.ndarray, reconstructions: np.ndarray) -> np.ndarray:
    """uint8 [2·H·s, n·W·s, C]: originals in the top row, reconstructions below, pixels s×s (`GRID_SCALE`)."""
    rows = [np.concatenate(list(images), axis=1) for images in (originals, reconstructions)]
    grid = np.round((np.clip(np.concatenate(rows, axis=0), -1, 1) + 1) * 127.5).astype(np.uint8)
    return np.kron(grid, np.ones((GRID_SCALE, GRID_SCALE, 1), np.uint8))


def grid_evaluator(model, every: int, images: np.ndarray, path: Path) -> Evaluator:
    """Writes `image_grid` of `images` and their reconstructions to `path` (process 0)."""
    reconstruct = jax.jit(lambda params, x: model.apply({"params": params}, x)["reconstruction"])

    def run(params):
        reconstructions = np.asarray(jax.device_get(reconstruct(params, images)))
        if jax.process_index() == 0:
            matplotlib.image.imsave(path, image_grid(images, reconstructions))
        return {"file": str(path), "l1": float(np.mean(np.abs(reconstructions - images)))}

    return Evaluator(every, run)


def check_config(config) -> None:
    if config.loss.reconstruction not in RECONSTRUCTION_LOSSES:
        raise ValueError(f"config field loss.reconstruction: {config.loss.reconstruction!r} is not one of "
                         f"{RECONSTRUCTION_LOSSES}")
    for name, evaluator in config.evals.items():
        if evaluator.kind not in EVAL_KINDS:
            raise ValueError(f"config field evals.{name}.kind: {evaluator.kind!r} is not one of {EVAL_KINDS}")


def build(config, mesh) -> Task:
    """Model, optimizer, data and steps of image-tokenizer training for `config`."""
    check_config(config)
    model = make_model(config.model, mesh)
    m, train_cfg = config.model, config.train
    image_shape = (m.resolution, m.resolution, m.in_channels)
    optimizer = make_optimizer(config.optimizer, train_cfg.steps)
    local_rows = train_cfg.batch_size // jax.process_count()

    def batches(split, num_epochs, seed):
        return image_batches(data_source(config.data.name, split, config.data.data_dir), batch_size=local_rows,
                             seed=seed, process_index=jax.process_index(), process_count=jax.process_count(),
                             num_epochs=num_epochs)

    def evaluators(shardings):
        return {name: summed_evaluator(e.every, lambda params, batch: reconstruction_sums(model, params, batch),
                                       lambda: batches("validation", 1, 0), e.batches, shardings,
                                       summarize_reconstruction)
                for name, e in config.evals.items() if e.kind not in WORKDIR_EVAL_KINDS}

    def workdir_evaluators(shardings, workdir):
        validation = data_source(config.data.name, "validation", config.data.data_dir)
        return {name: grid_evaluator(model, e.every, np.stack([to_pixels(validation[i]) for i in range(e.images)]),
                                     Path(workdir) / GRID_FILE)
                for name, e in config.evals.items() if e.kind in WORKDIR_EVAL_KINDS}

    pixels = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    abstract_params = jax.eval_shape(lambda x: model.init(jax.random.key(0), x)["params"], pixels)
    forward_flops = jax.jit(lambda p, x: model.apply({"params": p}, x)).lower(abstract_params, pixels).cost_analysis()
    return Task(
        init_state=make_init_state(model, optimizer, image_shape),
        train_step=make_train_step(model, optimizer, make_schedule(config.optimizer, train_cfg.steps),
                                   config.loss.reconstruction),
        batch_spec={"images": nn.LogicallyPartitioned(
            jax.ShapeDtypeStruct((train_cfg.batch_size, *image_shape), jnp.float32), IMAGE_AXES)},
        batches=lambda shardings: IteratorBatches(batches("train", None, config.seed), shardings),
        evaluators=evaluators,
        workdir_evaluators=workdir_evaluators,
        tokens_per_step=train_cfg.batch_size,
        flops_per_token=3.0 * float(forward_flops["flops"]),
    )
