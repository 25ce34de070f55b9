"""The training loop every trainer shares.

    restore-or-init → for each step: batch → jitted train_step (state donated) → metrics
    → periodic eval → periodic checkpoint → final eval → results.json

Parameters and optimizer state are sharded by their logical axes over the config's
mesh; batches over `data` × `fsdp`. Randomness: `fold_in(key(seed), step)`, so a resumed
run draws what an uninterrupted one would. Only process 0 writes files and shows progress.
"""

import json
import logging
import math
import os
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
from tqdm import tqdm

from research.parallel.mesh import batch_sharding, make_mesh, sharded_abstract_state
from research.train.checkpoint import Checkpointer
from research.train.flops import total_peak_flops
from research.train.metrics import MetricsWriter
from research.train.task import Task, build_task

log = logging.getLogger(__name__)


def write_json_atomically(path: Path, payload) -> None:
    """Writes JSON to `path` through a temporary file, so readers never see half a file."""
    if jax.process_index() != 0:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)


def global_batch(local_batch: dict, sharding) -> dict:
    """Assembles each process's rows into global arrays sharded over the batch axes."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def evaluate(task: Task, eval_step, params, num_batches: int, sharding) -> dict:
    """Adds up `eval_step` sums over the first `num_batches` eval batches (all if 0)."""
    totals = None
    for index, batch in enumerate(task.eval_batches()):
        if num_batches and index >= num_batches:
            break
        sums = eval_step(params, global_batch(batch, sharding))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    if totals is None:
        raise ValueError("the eval split produced no batches")
    return task.summarize_eval(jax.device_get(totals))


class Throughput:
    """Tokens/s and MFU over the steps since the last reading (the first, compiling, step excluded)."""

    def __init__(self, tokens_per_step: int, flops_per_step: float, peak_flops: float):
        self.tokens_per_step, self.flops_per_step, self.peak = tokens_per_step, flops_per_step, peak_flops
        self.start, self.steps = None, 0

    def tick(self) -> None:
        if self.start is None:
            self.start = time.perf_counter()
        else:
            self.steps += 1

    def exclude(self, seconds: float) -> None:
        """Leaves `seconds` of other work (evaluation, checkpointing) out of the current window."""
        if self.start is not None:
            self.start += seconds

    def read(self) -> dict:
        if not self.steps:
            return {}
        seconds = time.perf_counter() - self.start
        steps_per_s = self.steps / seconds
        self.start, self.steps = time.perf_counter(), 0
        return {"tokens_per_s": steps_per_s * self.tokens_per_step,
                "mfu": steps_per_s * self.flops_per_step / self.peak,
                "step_time_s": 1 / steps_per_s}


def train(config, workdir: str, *, devices=None) -> dict:
    """Runs (or resumes) the experiment `config` in `workdir` on `devices` (default: all);
    returns the final results."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = make_mesh(config.mesh, devices)
    task = build_task(config, mesh)
    root_key = jax.random.key(config.seed)
    init_key, step_key = jax.random.fold_in(root_key, 0), jax.random.fold_in(root_key, 1)
    abstract_state, state_shardings = sharded_abstract_state(task.init_state, mesh, init_key)
    data_sharding = batch_sharding(mesh)

    checkpointer = Checkpointer(workdir / "checkpoints", max_to_keep=config.train.get("max_checkpoints", 3))
    restored = checkpointer.restore_latest(abstract_state)  # raises before anything is written
    write_json_atomically(workdir / "config.json", config.to_dict())
    if restored:
        step, state, data_state = restored
        task.train_batches.set_state(data_state)
        log.info("resumed from step %d", step)
    else:
        step = 0
        init = jax.jit(lambda key: nn.meta.unbox(task.init_state(key)), out_shardings=state_shardings)
        state = init(init_key)

    train_step = jax.jit(task.train_step, in_shardings=(state_shardings, data_sharding, None),
                         out_shardings=(state_shardings, None), donate_argnums=0)
    eval_step = jax.jit(task.eval_step)
    writer = MetricsWriter(str(workdir), resume_step=step)
    throughput = Throughput(task.tokens_per_step, task.flops_per_step, total_peak_flops(config.peak_flops))
    train_cfg = config.train
    bar = tqdm(total=train_cfg.steps, initial=step, disable=jax.process_index() != 0, dynamic_ncols=True)
    started = time.perf_counter()
    last_metrics, last_saved = {}, step
    try:
        while step < train_cfg.steps:
            batch = global_batch(next(task.train_batches), data_sharding)
            state, metrics = train_step(state, batch, jax.random.fold_in(step_key, step))
            step += 1
            loss = float(metrics["loss"])
            throughput.tick()
            if config.halt_on_nan and not math.isfinite(loss):
                raise FloatingPointError(
                    f"loss is {loss} at step {step}; stopping. The last good checkpoint "
                    f"(step {last_saved}) is kept in {checkpointer.directory}.")
            bar.update(1)
            if step % train_cfg.log_every == 0 or step == train_cfg.steps:
                last_metrics = {**jax.device_get(metrics), **throughput.read()}
                writer.write(step, last_metrics)
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{last_metrics.get('tokens_per_s', 0):.0f}",
                                mfu=f"{last_metrics.get('mfu', 0):.1%}")
            other_work_started = time.perf_counter()
            if train_cfg.eval_every and step % train_cfg.eval_every == 0 and step < train_cfg.steps:
                eval_metrics = evaluate(task, eval_step, state.params, train_cfg.eval_batches, data_sharding)
                writer.write(step, {f"eval_{k}": v for k, v in eval_metrics.items()})
            if train_cfg.checkpoint_every and step % train_cfg.checkpoint_every == 0:
                checkpointer.save(step, state, task.train_batches.get_state())
                last_saved = step
            throughput.exclude(time.perf_counter() - other_work_started)
        if last_saved != step:
            checkpointer.save(step, state, task.train_batches.get_state())
        eval_metrics = evaluate(task, eval_step, state.params, train_cfg.eval_batches, data_sharding)
        writer.write(step, {f"eval_{k}": v for k, v in eval_metrics.items()})
    finally:
        bar.close()
        checkpointer.close()
        writer.close()

    results = {
        "step": step,
        "train_loss": float(last_metrics.get("loss", float("nan"))),
        **{f"eval_{k}": float(v) for k, v in eval_metrics.items()},
        "tokens_per_s": last_metrics.get("tokens_per_s"),
        "mfu": last_metrics.get("mfu"),
        "wall_time_s": time.perf_counter() - started,
        **task.finish(state.params),
    }
    write_json_atomically(workdir / "results.json", results)
    return results
