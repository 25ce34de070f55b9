"""Hyperparameter sweeps over config fields as Optuna studies: one process per trial, many workers, a report.

One machine (the study is DIR/study.db, nothing to start):

    python -m research.sweep --config configs/llama2.py:tiny --workdir DIR \\
        --sweep 'optimizer.learning_rate=1e-4,3e-4,1e-3' --sweep 'optimizer.weight_decay=0,0.01,0.1' \\
        [--config.train.steps=100 ...] [--parallel 2] [--metric eval_loss --mode min]

Many machines: the same command on each, with `--storage postgresql+psycopg2://USER:PASS@HOST/DB`
(or a journal file on a shared disk); the workers split the trials. `optuna-dashboard STORAGE`
(e.g. `optuna-dashboard sqlite:///DIR/study.db`) shows the study while it runs.

The search (research/sweep_space.py): `--sampler grid` (default) runs the product of the
`--sweep FIELD=V1,V2,...` lists, or without `--sweep` the config file's `get_sweep(arg)`;
`--sampler random|tpe|cmaes --trials N` draws N trials from the lists and from ranges
`FIELD=loguniform(LO,HI)` / `uniform(LO,HI)`. `--pruner median|successive_halving|hyperband`
stops a trial whose evaluations (`config.train.eval_every`) fall behind, from the run's own
evaluations (research/sweep_pruning.py); the run keeps its checkpoint and the trial is recorded
PRUNED with its last value. Storage, claiming and the retry policy: research/sweep_study.py.

A grid's configs are loaded and validated before the study is created, so a misspelt field or a
bad value stops the sweep at once (exit status 2); a sampled trial with a bad config is recorded
as failed. A trial is a normal run, `python -m research.run --config ... --workdir DIR/<name>`
plus the fixed and the trial's overrides, in its own process (output in DIR/<name>/run.log); a
crashing or diverging trial is recorded FAIL with the tail of its log and the study goes on. A
trial whose workdir another process holds (research/train/workdir_lock.py) is not started but
recorded as failed. Trials end with their worker, however it ends: they get SIGTERM (and save a
checkpoint) when the worker is interrupted and, on Linux, when it dies even by SIGKILL. When no
trial is left, the worker writes DIR/results.csv, results.md, results.png, history.png and, once
enough trials finished, importance.png (research/sweep_report.py) from the study; the exit
status is 1 if a trial failed.
"""

import argparse
import ctypes
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import optuna
from optuna.trial import TrialState

from research import config as config_lib
from research import sweep_pruning, sweep_report, sweep_space, sweep_study
from research.train.preemption import PREEMPTED_EXIT_CODE
from research.train.workdir_lock import is_locked

SINGLE_THREAD_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
LOG_FILE = "run.log"
RESULTS_FILE = "results.json"
LOG_TAIL_LINES = 20
LOG_TAIL_BYTES = 65536
POLL_SECONDS = 0.2
PLAN_WAIT_SECONDS = 30  # how long a worker waits for the study's creator to enqueue a grid
STOP_GRACE_SECONDS = 60  # a trial told to stop (SIGTERM) saves a checkpoint first; then it is killed
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies


@dataclasses.dataclass(frozen=True)
class Sweep:
    """What to run: the config and fixed overrides, and either a grid `plan` (override dicts, every
    config validated) or `axes` for a sampler to draw `trials` trials from."""

    spec: str
    fixed: tuple[str, ...]
    sampler: str
    plan: list[dict] | None
    axes: list
    field_types: dict
    trials: int

    @property
    def fields(self) -> list[str]:
        """The swept fields, in order of first appearance."""
        if self.plan is not None:
            return list(dict.fromkeys(field for overrides in self.plan for field in overrides))
        return [axis.field for axis in self.axes]

    def describe(self) -> dict:
        """What every worker of one study must agree on."""
        return {"config": self.spec, "fixed": list(self.fixed), "sampler": self.sampler, "plan": self.plan,
                "axes": [dataclasses.asdict(axis) for axis in self.axes], "trials": self.trials}


def plan_sweep(spec: str, sweep_flags: Sequence[str], fixed: Sequence[str] = (), sampler: str = "grid",
               trials: int = 0) -> Sweep:
    """The sweep of the command line; ValueError for bad input (a grid's every config is validated)."""
    base_config = config_lib.load(spec, fixed)
    axes = sweep_space.parse_axes(sweep_flags)
    if sampler == "grid":
        if trials:
            raise ValueError("--trials is for the samplers; a grid runs each of its points once")
        return grid_sweep(spec, sweep_space.grid(axes) if axes else sweep_space.config_sweep(spec), fixed)
    if not axes:
        raise ValueError(f"--sampler {sampler} draws from the --sweep fields; none were given")
    if trials < 1:
        raise ValueError(f"--sampler {sampler} needs --trials N, N >= 1")
    field_types = {axis.field: sweep_space.numeric_field_type(base_config, axis.field)
                   for axis in axes if isinstance(axis, sweep_space.ValueRange)}
    return Sweep(spec, tuple(fixed), sampler, None, axes, field_types, trials)


def grid_sweep(spec: str, plan: Sequence[dict], fixed: Sequence[str] = ()) -> Sweep:
    """A grid of the given override dicts (field -> text), every trial's config validated;
    ValueError naming the first bad trial."""
    if not plan:
        raise ValueError("the sweep has no trials")
    for name, overrides in zip(sweep_space.trial_names(plan), plan):
        sweep_space.trial_config(spec, fixed, overrides, name)
    return Sweep(spec, tuple(fixed), "grid", list(plan), [], {}, len(plan))


def trial_command(sweep: Sweep, overrides: dict, trial_dir: Path) -> list[str]:
    """The `research.run` command line of a trial."""
    all_overrides = [*sweep.fixed, *(f"{field}={value}" for field, value in overrides.items())]
    return [sys.executable, "-m", "research.run", "--config", sweep.spec, "--workdir", str(trial_dir),
            *(f"--config.{override}" for override in all_overrides)]


def trial_environment(parallel: int) -> dict:
    """This process' environment, with XLA on one thread per trial when trials run in parallel."""
    env = dict(os.environ)
    if parallel > 1:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {SINGLE_THREAD_XLA_FLAGS}".strip()
    return env


def die_with_parent() -> None:
    """Runs in a trial's process before it starts: SIGTERM it when the worker dies (Linux)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM (a run saves its checkpoint and exits), SIGKILL if it has not ended after the grace period."""
    process.terminate()
    try:
        process.wait(STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def log_tail(path: Path, returncode: int) -> str:
    """The exit status and the last lines of a trial's log (progress-bar redraws split apart)."""
    with path.open("rb") as log:
        log.seek(max(0, path.stat().st_size - LOG_TAIL_BYTES))
        text = log.read().decode(errors="replace")
    lines = [line for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return "\n".join([f"exit status {returncode}", *lines[-LOG_TAIL_LINES:]])


def numeric_results(results: dict) -> dict:
    """The finite numbers of a results.json (what the study keeps of a trial's results)."""
    return {key: value for key, value in results.items()
            if sweep_report.is_number(value) and math.isfinite(value)}


@dataclasses.dataclass
class RunningTrial:
    """A trial this worker started: the Optuna trial, its storage id, directory name, process and log."""

    trial: optuna.Trial
    trial_id: int
    name: str
    process: subprocess.Popen
    log: object


@dataclasses.dataclass
class Options:
    """How a worker runs trials: at a time, ranked by, pruned by, heartbeat (s)."""

    parallel: int = 1
    metric: str = "eval_loss"
    mode: str = "min"
    pruner: str = "none"
    pruner_startup_trials: int = 5
    heartbeat_s: int = 10


class Worker:
    """Claims trials of the study and runs them, `options.parallel` processes at a time, until
    none is left (see research/sweep_study.py for claiming and retries)."""

    def __init__(self, sweep: Sweep, study: optuna.Study, storage, url: str, workdir: Path, options: Options):
        self.sweep, self.study, self.storage, self.url = sweep, study, storage, url
        self.workdir, self.options = workdir, options
        self.study_id = storage.get_study_id_from_name(study.study_name)
        self.short = sweep_space.short_fields(sweep.fields)
        self.grid_choices = {field: tuple(dict.fromkeys(o[field] for o in sweep.plan if field in o))
                             for field in sweep.fields} if sweep.plan is not None else {}
        self.env = trial_environment(options.parallel)
        self.running: list[RunningTrial] = []
        self.last_heartbeat = 0.0

    def next_trial(self) -> optuna.Trial | None:
        """A trial for this worker: a waiting one, else (sampling) a new one while the budget lasts."""
        with sweep_study.claim_lock(self.url):
            trial = sweep_study.claim_waiting(self.study, self.storage)
            budget_left = self.sweep.plan is None and len(sweep_study.live_trials(self.study)) < self.sweep.trials
            if trial is None and budget_left:
                trial = self.study.ask()
        if trial is not None and hasattr(self.storage, "record_heartbeat"):
            self.storage.record_heartbeat(self.trial_id(trial))
        return trial

    def trial_id(self, trial: optuna.Trial) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)

    def start(self, trial: optuna.Trial) -> None:
        """Starts the trial's run, or records why it cannot start."""
        overrides = trial.user_attrs.get(sweep_study.OVERRIDES_ATTR)
        if overrides is None:
            overrides = sweep_space.suggest(trial, self.sweep.axes, self.sweep.field_types)
            trial.set_user_attr(sweep_study.OVERRIDES_ATTR, overrides)
        elif self.sweep.plan is not None:  # a grid point: its values become the trial's parameters
            for field in overrides:
                trial.suggest_categorical(field, self.grid_choices[field])
        name = sweep_space.trial_name(overrides, self.short)
        trial.set_user_attr("name", name)
        try:
            config = sweep_space.trial_config(self.sweep.spec, self.sweep.fixed, overrides, name)
        except ValueError as error:
            return self.fail(trial, name, str(error))
        trial.set_user_attr("values", json.loads(json.dumps(sweep_space.swept_values(config, overrides),
                                                            default=str)))
        trial_dir = self.workdir / name
        trial_dir.mkdir(parents=True, exist_ok=True)
        holder = is_locked(trial_dir)
        if holder:
            return self.fail(trial, name, f"not started: {holder}")
        env = self.env
        if self.options.pruner != "none":
            env = {**env, **sweep_pruning.environment(self.url, self.study.study_name, trial.number,
                                                      self.options.metric, self.options.pruner,
                                                      self.options.pruner_startup_trials)}
        log = (trial_dir / LOG_FILE).open("ab")
        process = subprocess.Popen(trial_command(self.sweep, overrides, trial_dir), stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                   preexec_fn=die_with_parent)
        self.running.append(RunningTrial(trial, self.trial_id(trial), name, process, log))

    def fail(self, trial: optuna.Trial, name: str, error: str) -> None:
        trial.set_user_attr("error", error)
        self.study.tell(trial, state=TrialState.FAIL)
        print(f"sweep: trial {trial.number} {name} failed: {error.splitlines()[-1]}", flush=True)

    def finish(self, running: RunningTrial) -> None:
        """Records an ended trial: COMPLETE with its metric, PRUNED, or FAIL (retried if preempted)."""
        running.log.close()
        trial, code = running.trial, running.process.returncode
        results_path = self.workdir / running.name / RESULTS_FILE
        if code == 0 and results_path.exists():
            results = numeric_results(json.loads(results_path.read_text()))
            trial.set_user_attr("results", results)
            if self.options.metric in results:
                self.study.tell(trial, results[self.options.metric])
                print(f"sweep: trial {trial.number} {running.name} finished: {self.options.metric} "
                      f"{results[self.options.metric]:.4g}", flush=True)
            else:
                self.fail(trial, running.name, f"results.json has no finite {self.options.metric}")
        elif code == sweep_pruning.STOPPED_EARLY_EXIT_CODE:
            self.study.tell(trial, state=TrialState.PRUNED)
            print(f"sweep: trial {trial.number} {running.name} pruned", flush=True)
        else:
            self.fail(trial, running.name, log_tail(self.workdir / running.name / LOG_FILE, code))
            if code == PREEMPTED_EXIT_CODE:
                sweep_study.retry(self.study, trial.number)

    def heartbeat(self) -> None:
        """Records that this worker's trials are alive, and fails (and retries) other workers' silent ones."""
        if time.monotonic() - self.last_heartbeat < self.options.heartbeat_s / 2:
            return
        self.last_heartbeat = time.monotonic()
        if hasattr(self.storage, "record_heartbeat"):
            for running in self.running:
                self.storage.record_heartbeat(running.trial_id)
            optuna.storages.fail_stale_trials(self.study)

    def others_unfinished(self) -> bool:
        """Whether trials that are not this worker's are running or waiting (a grid not yet
        enqueued counts), so that one may still come back for a retry."""
        return (not sweep_study.is_planned(self.study)
                or bool(self.study.get_trials(deepcopy=False, states=sweep_study.UNFINISHED)))

    def run(self) -> None:
        """Runs trials until the study has none left for this worker."""
        started = time.monotonic()
        try:
            while True:
                self.heartbeat()
                exhausted = False
                while len(self.running) < self.options.parallel and not exhausted:
                    trial = self.next_trial()
                    exhausted = trial is None
                    if trial is not None:
                        self.start(trial)
                for running in [r for r in self.running if r.process.poll() is not None]:
                    self.running.remove(running)
                    self.finish(running)
                if exhausted and not self.running and not self.others_unfinished():
                    return
                if not sweep_study.is_planned(self.study) and time.monotonic() - started > PLAN_WAIT_SECONDS:
                    raise RuntimeError(f"the study {self.study.study_name!r} was created but its grid was "
                                       "never enqueued (its creator died?); delete it or use --study-name")
                time.sleep(POLL_SECONDS)
        finally:
            for running in self.running:
                stop(running.process)
                running.log.close()
                self.fail(running.trial, running.name, "stopped with its worker; retried")
                sweep_study.retry(self.study, running.trial.number)


def outcomes_of(study: optuna.Study, metric: str) -> list[sweep_report.TrialOutcome]:
    """Each finished trial of the study (a retried one once) as the report sees it."""
    outcomes = []
    for trial in sweep_study.live_trials(study):
        if trial.state in sweep_study.UNFINISHED:
            continue
        name, values = trial.user_attrs.get("name", f"trial-{trial.number}"), trial.user_attrs.get("values", {})
        if trial.state == TrialState.FAIL:
            outcomes.append(sweep_report.TrialOutcome(name, values, None, trial.user_attrs.get("error", "failed")))
        elif trial.state == TrialState.PRUNED:
            results = {} if trial.value is None else {metric: trial.value, "step": trial.last_step}
            outcomes.append(sweep_report.TrialOutcome(name, values, results, None, pruned_at=trial.last_step))
        else:
            outcomes.append(sweep_report.TrialOutcome(name, values, trial.user_attrs.get("results", {}), None))
    return outcomes


def report(sweep: Sweep, study: optuna.Study, workdir: Path, metric: str, mode: str,
           title: str | None = None) -> list[sweep_report.TrialOutcome]:
    """Writes the report of the study into `workdir`; returns the outcomes it shows."""
    outcomes = outcomes_of(study, metric)
    sweep_report.write_reports(workdir, title or f"Sweep of {sweep.spec}", sweep.fields, outcomes, metric, mode,
                               notes=[f"Fixed overrides: {' '.join(sweep.fixed)}"] if sweep.fixed else [])
    sweep_report.write_study_plots(workdir, study, metric)
    return outcomes


def run_sweep(sweep: Sweep, workdir: str | Path, *, options: Options = Options(), storage: str | None = None,
              study_name: str = "sweep", seed: int = 0, title: str | None = None) -> list[sweep_report.TrialOutcome]:
    """Creates or joins the sweep's study, runs trials until none is left, writes the report into
    `workdir` and returns the outcomes (ValueError if the study holds another sweep)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    url = sweep_study.storage_url(storage, workdir)
    store = sweep_study.open_storage(url, options.heartbeat_s)
    study = sweep_study.open_study(url, store, study_name, "minimize" if options.mode == "min" else "maximize",
                                   sweep_study.make_sampler(sweep.sampler, seed),
                                   sweep_study.make_pruner(options.pruner, options.pruner_startup_trials),
                                   sweep.describe(), sweep.plan)
    Worker(sweep, study, store, url, workdir, options).run()
    return report(sweep, study, workdir, options.metric, options.mode, title)


def parse_args(argv: Sequence[str]) -> tuple[argparse.ArgumentParser, argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m research.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="config file and argument, e.g. configs/llama2.py:tiny")
    parser.add_argument("--workdir", required=True, help="the sweep's directory; each trial runs in a sub-directory")
    parser.add_argument("--sweep", action="append", default=[], metavar="FIELD=VALUES",
                        help="FIELD=V1,V2,... (a grid axis, or a choice) or FIELD=loguniform(LO,HI) / "
                             "uniform(LO,HI) (sampled); repeat for more fields")
    parser.add_argument("--sampler", choices=sweep_study.SAMPLERS, default="grid")
    parser.add_argument("--trials", type=int, default=0, help="trials a sampler draws, over all workers")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampler")
    parser.add_argument("--pruner", choices=sweep_study.PRUNERS, default="none",
                        help="stops trials whose evaluations fall behind (needs config.train.eval_every)")
    parser.add_argument("--pruner-startup-trials", type=int, default=5,
                        help="median pruner: finished trials before it prunes")
    parser.add_argument("--parallel", type=int, default=1, help="trials this worker runs at once")
    parser.add_argument("--metric", default="eval_loss", help="the key of results.json that ranks trials")
    parser.add_argument("--mode", choices=("min", "max"), default="min", help="whether lower or higher is better")
    parser.add_argument("--storage", help="SQLAlchemy URL or journal file (default: sqlite:///WORKDIR/study.db)")
    parser.add_argument("--study-name", default="sweep", help="the study's name in the storage")
    parser.add_argument("--heartbeat", type=int, default=10,
                        help="seconds between trial heartbeats; a trial silent for twice this is retried")
    args, rest = parser.parse_known_args(argv)
    fixed = []
    for item in rest:
        if not item.startswith("--config.") or "=" not in item:
            parser.error(f"unrecognised argument {item!r}; fixed overrides look like --config.train.steps=100")
        fixed.append(item.removeprefix("--config."))
    for flag, value, low in (("--parallel", args.parallel, 1), ("--trials", args.trials, 0),
                             ("--heartbeat", args.heartbeat, 1), ("--pruner-startup-trials",
                                                                  args.pruner_startup_trials, 0)):
        if value < low:
            parser.error(f"{flag} must be >= {low}, got {value}")
    return parser, args, fixed


def main(argv: Sequence[str] | None = None) -> int:
    """Runs a worker of the sweep of the command line; returns 1 if a trial failed (2 for bad input)."""
    parser, args, fixed = parse_args(sys.argv[1:] if argv is None else argv)
    options = Options(args.parallel, args.metric, args.mode, args.pruner, args.pruner_startup_trials, args.heartbeat)
    started = time.perf_counter()
    try:
        sweep = plan_sweep(args.config, args.sweep, fixed, args.sampler, args.trials)
        outcomes = run_sweep(sweep, args.workdir, options=options, storage=args.storage,
                             study_name=args.study_name, seed=args.seed)
    except ValueError as error:
        parser.error(str(error))
    failed = [outcome.name for outcome in outcomes if outcome.error is not None]
    pruned = [outcome.name for outcome in outcomes if outcome.pruned_at is not None]
    print(f"sweep: {len(outcomes) - len(failed) - len(pruned)} finished, {len(pruned)} pruned, {len(failed)} "
          f"failed in {time.perf_counter() - started:.0f}s; see {Path(args.workdir) / 'results.md'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
