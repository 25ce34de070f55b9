"""The training loop every trainer shares.

    restore-or-start (own checkpoint, else config.init_from) → for each step: batch (read, or made
    from the current state) → jitted train_step (state donated) → metrics → evaluators at their
    cadence → periodic checkpoint → final evaluation → results.json

The host never waits for the device inside a step: metrics stay on the device until a log step
(or a checkpoint) fetches them, so the next batch is prepared while the step runs. A non-finite
loss is found there and stops the run before anything later is saved. The state, the batch source's
state and each batch leaf are sharded by their logical axes (research/train/step.py). Randomness:
`fold_in(key(seed), i)` for init (0), steps (1) and batches (2), then `fold_in(·, step)`, so a
resumed run draws what an uninterrupted one would. Only process 0 writes files and shows progress.
"""

import contextlib
import json
import logging
import os
import time
from pathlib import Path

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from research.parallel.mesh import make_mesh, sharded_abstract_state
from research.train import init_from
from research.train.checkpoint import Checkpointer, NonFiniteState
from research.train.flops import total_peak_flops
from research.train.metrics import MetricsWriter, last_logged
from research.train.preemption import Preempted, PreemptionWatch
from research.train.profile import ProfileWindow
from research.train.step import StepLayout, jit_train_step, step_layout
from research.train.step_metrics import PendingMetrics, Throughput, kept_checkpoint
from research.train.task import Task, build_task
from research.train.workdir import CONFIG_FILE, RESULTS_FILE, check_config_change, refuse_or_move_aside
from research.train.workdir_lock import WorkdirLock

log = logging.getLogger(__name__)

NO_INIT_FROM = ml_collections.ConfigDict(dict(kind="none", path="", parts="params"))


def write_json_atomically(path: Path, payload) -> None:
    """Writes JSON to `path` through a temporary file, so readers never see half a file."""
    if jax.process_index() != 0:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)


def compile_train_step(task: Task, layout: StepLayout):
    """The jitted train step compiled for the layout, its per-device memory logged once."""
    compiled = jit_train_step(task, layout).lower(*layout.step_args()).compile()
    memory = compiled.memory_analysis()
    if memory is not None:
        log.info("train step per device: arguments %.1f MiB, outputs %.1f MiB (%.1f MiB donated), "
                 "temporaries %.1f MiB, code %.1f MiB", *(value / 2**20 for value in (
                     memory.argument_size_in_bytes, memory.output_size_in_bytes, memory.alias_size_in_bytes,
                     memory.temp_size_in_bytes, memory.generated_code_size_in_bytes)))
    return compiled


def run_evaluators(evaluators, params, step: int, writer: MetricsWriter, final: bool = False) -> dict:
    """Runs the evaluators due after `step` (all of them when `final`); logs and returns `<name>_<metric>`."""
    results = {}
    for name, evaluator in evaluators.items():
        if final or evaluator.is_due(step):
            results.update({f"{name}_{metric}": value for metric, value in evaluator.run(params).items()})
    if results:
        writer.write(step, results)
    return results


def process_zero_says(flag: bool) -> bool:
    """Process 0's `flag` on every process, so that all of them take the same branch."""
    return bool(multihost_utils.broadcast_one_to_all(np.array(flag))) if jax.process_count() > 1 else flag


def due_by_time(minutes: float, last_save: float) -> bool:
    """Whether `minutes` have passed since the last save (0: never), the same answer on every process."""
    return process_zero_says(bool(minutes) and time.monotonic() - last_save >= 60 * minutes)


class StoppedEarly(Exception):
    """`on_evaluation` asked the run to stop (e.g. a sweep's pruner); its checkpoint at `step` is kept."""

    def __init__(self, step: int, workdir):
        super().__init__(f"stopped early at step {step} by the evaluation hook; checkpoint saved in {workdir}")
        self.step = step


def train(config, workdir: str, *, devices=None, on_evaluation=None) -> dict:
    """Runs (or resumes) the experiment `config` in `workdir` on `devices` (default: all); returns
    the final results. `on_evaluation(step, results) -> bool`, if given, sees the results of every
    evaluation before the last (`<name>_<metric>`) and stops the run by returning True: a checkpoint
    is saved and StoppedEarly raised. Raises Preempted after SIGTERM or SIGINT (its checkpoint resumes
    the run), WorkdirLocked when another run holds `workdir`, ValueError for a workdir this config
    cannot continue."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    lock = WorkdirLock(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
    with lock, PreemptionWatch() as preemption:
        return run_in(workdir, config, devices, preemption, on_evaluation)


def run_in(workdir: Path, config, devices, preemption: PreemptionWatch, on_evaluation=None) -> dict:
    """`train` once the workdir is this process's."""
    train_cfg = config.train
    mesh = make_mesh(config.mesh, devices)
    task = build_task(config, mesh)
    root_key = jax.random.key(config.seed)
    init_key, step_key, batch_key = (jax.random.fold_in(root_key, i) for i in range(3))
    layout = step_layout(task, mesh)
    source = task.batches(layout.batch_shardings)
    abstract_source, source_shardings = sharded_abstract_state(source.init, mesh, batch_key, task.axis_rules)

    def checkpointer_of():
        return Checkpointer(workdir / "checkpoints", max_to_keep=train_cfg.get("max_checkpoints", 3))

    with checkpointer_of() as reader:
        restored = reader.restore_latest(layout.state, abstract_source)  # raises before anything is written
    if restored:
        step, state, source_state, host_state = restored
        check_config_change(workdir, config, step)
        if step >= train_cfg.steps and (workdir / RESULTS_FILE).exists():
            log.info("the run in %s is complete at step %d; nothing to do", workdir, step)
            return json.loads((workdir / RESULTS_FILE).read_text())
        log.info("resumed from step %d", step)
    else:
        refuse_or_move_aside(workdir, config, reader.set_aside_steps)
        begin = init_from.start(config.get("init_from", NO_INIT_FROM), task, layout, abstract_source, init_key)
        step, state, source_state, host_state = begin.step, begin.state, begin.source_state, begin.host_state
        if source_state is None:
            source_state = jax.jit(lambda key: nn.meta.unbox(source.init(key)), out_shardings=source_shardings)(
                batch_key)
    if host_state is not None:
        source.set_host_state(host_state)
    write_json_atomically(workdir / CONFIG_FILE, config.to_dict())

    train_step = compile_train_step(task, layout)
    evaluators = {**task.evaluators(layout.batch_shardings),
                  **task.workdir_evaluators(layout.batch_shardings, workdir)}
    writer = MetricsWriter(str(workdir), resume_step=step)
    throughput = Throughput(task.flops_per_token, total_peak_flops(config.peak_flops))
    pending = PendingMetrics(task.tokens_per_step)
    profiler = ProfileWindow(train_cfg.get("profile_steps", ()), workdir / "profile")
    bar = tqdm(total=train_cfg.steps, initial=step, disable=jax.process_index() != 0, dynamic_ncols=True)
    started, last_save_time = time.perf_counter(), time.monotonic()
    first_step, last_metrics, last_saved = step, last_logged(workdir, step), step

    def save():
        """Checkpoints the state after `step` (once: nothing if it is saved already)."""
        nonlocal last_saved, last_save_time
        if last_saved == step:
            return
        pending.fetch(last_saved, checkpointer.directory)
        try:
            checkpointer.save(step, state, source_state, source.host_state())
        except NonFiniteState as error:
            raise FloatingPointError(
                f"{error}; stopping. {kept_checkpoint(last_saved, checkpointer.directory)}.") from None
        last_saved, last_save_time = step, time.monotonic()

    checkpointer = checkpointer_of()
    try:
        while step < train_cfg.steps:
            profiler.before(step)
            batch, source_state = source.next(state, source_state, jax.random.fold_in(batch_key, step))
            state, metrics = train_step(state, batch, jax.random.fold_in(step_key, step))
            step += 1
            profiler.after(step, state)
            pending.add(step, metrics, timed=step > first_step + 1)
            if step == first_step + 1:  # the clock starts once the first step has run
                pending.fetch(last_saved, checkpointer.directory)
                throughput.begin()
            bar.update(1)
            log_step = step % train_cfg.log_every == 0 or step == train_cfg.steps
            if log_step:
                pending.fetch(last_saved, checkpointer.directory)
                newest, tokens, steps = pending.take()
                last_metrics = {**newest, **throughput.read(tokens, steps)}
                writer.write(step, last_metrics)
                bar.set_postfix(loss=f"{float(newest['loss']):.3f}", tok_s=f"{last_metrics.get('tokens_per_s', 0):.0f}",
                                mfu=f"{last_metrics.get('mfu', 0):.1%}")
            evaluate = step < train_cfg.steps and any(e.is_due(step) for e in evaluators.values())
            save_now = ((train_cfg.checkpoint_every and step % train_cfg.checkpoint_every == 0)
                        or (log_step and due_by_time(train_cfg.get("checkpoint_every_minutes", 0), last_save_time)))
            stop_early = False
            if evaluate or save_now:
                jax.block_until_ready(state)  # the steps before are training time, not this work's
                other_work_started = time.perf_counter()
                if evaluate:
                    evaluated = run_evaluators(evaluators, state.params, step, writer)
                    stop_early = process_zero_says(bool(on_evaluation and evaluated and on_evaluation(step, evaluated)))
                if save_now or stop_early:
                    save()
                throughput.exclude(time.perf_counter() - other_work_started)
            if stop_early:
                checkpointer.wait()
                raise StoppedEarly(step, workdir)
            if step < train_cfg.steps and preemption.stop_requested(step):
                save()
                checkpointer.wait()
                raise Preempted(step, workdir)
        save()
        final = run_evaluators(evaluators, state.params, step, writer, final=True)
    finally:
        profiler.close()
        bar.close()
        checkpointer.close()
        writer.close()

    results = {
        "step": step,
        "train_loss": float(last_metrics.get("loss", float("nan"))),
        **{name: float(value) if isinstance(value, (int, float)) or getattr(value, "ndim", None) == 0 else value
           for name, value in final.items()},
        "tokens_per_s": last_metrics.get("tokens_per_s"),
        "mfu": last_metrics.get("mfu"),
        "wall_time_s": time.perf_counter() - started,
    }
    write_json_atomically(workdir / RESULTS_FILE, results)
    return results
