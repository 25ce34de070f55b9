"""Hyperparameter sweeps over config fields: resumable, one process per trial, a table and a plot.

    python -m research.sweep --config configs/llama2.py:tiny --workdir DIR \\
        --sweep 'optimizer.learning_rate=1e-4,3e-4,1e-3' --sweep 'optimizer.weight_decay=0,0.01,0.1' \\
        [--config.train.steps=100 ...] [--parallel 2] [--metric eval_loss --mode min]

The trials are
- the product of the `--sweep FIELD=V1,V2,...` value lists (a grid), or
- with `--samples N`, N draws seeded by `--seed`: a range `FIELD=loguniform(LO,HI)` or
  `FIELD=uniform(LO,HI)` is sampled (rounded to 3 significant digits, to a whole number for
  an int field), a value list is drawn from uniformly; repeated draws run once; or
- without `--sweep`, the override dicts of the config file's `get_sweep(arg) -> list[dict]`.

Every trial's config is loaded and validated (`research.config.load`) before any trial
starts, so a misspelt field, an empty or ill-typed value or a negative learning rate stops
the sweep at once. A trial is a normal run, `python -m research.run --config ... --workdir
DIR/<name>` plus the fixed and the trial's overrides, in its own process (output in
DIR/<name>/run.log); its name lists its overrides, `learning_rate=0.001,weight_decay=0.1`.
`--parallel N` runs N trials at once, each on one thread when N > 1. A rerun skips trials
that have results.json and resumes the others from their checkpoints; a trial that fails is
recorded with the tail of its log while the others go on. A trial whose workdir another process
holds (research/train/workdir_lock.py) is not started but recorded as failed. Trials end with the
sweep, however it ends: they get SIGTERM (and save a checkpoint) when the sweep is interrupted,
and, on Linux, when the sweep process dies even by SIGKILL. At the end DIR/results.csv,
results.md and results.png are written (`research.sweep_report`); the exit status is 1 if
any trial failed, 2 for bad input.
"""

import argparse
import ctypes
import dataclasses
import hashlib
import itertools
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import ml_collections

from research import config as config_lib
from research import sweep_report
from research.train.workdir_lock import is_locked

RANGE_PATTERN = re.compile(r"^(loguniform|uniform)\((.*)\)$")
UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._+=-]")
MAX_NAME_LENGTH = 120
SINGLE_THREAD_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
LOG_FILE = "run.log"
RESULTS_FILE = "results.json"
LOG_TAIL_LINES = 20
LOG_TAIL_BYTES = 65536
POLL_SECONDS = 0.2
STOP_GRACE_SECONDS = 60  # a trial told to stop (SIGTERM) saves a checkpoint first; then it is killed
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies


@dataclasses.dataclass(frozen=True)
class ValueList:
    """`FIELD=V1,V2,...`: the override texts one field takes."""

    field: str
    values: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ValueRange:
    """`FIELD=loguniform(LO,HI)` or `FIELD=uniform(LO,HI)`: where random search draws a field."""

    field: str
    low: float
    high: float
    log: bool


@dataclasses.dataclass(frozen=True)
class Trial:
    """One run of a sweep: its directory name, its overrides (field -> text) and its config."""

    name: str
    overrides: dict
    config: ml_collections.FrozenConfigDict

    def values(self, fields: Sequence[str]) -> dict:
        """The resolved value of each of `fields` that this trial overrides."""
        return {field: lookup(self.config, field) for field in fields if field in self.overrides}


def split_values(text: str) -> list[str]:
    """`text` split at the commas outside brackets and quotes, each part stripped."""
    parts, current, depth, quote = [], [], 0, None
    for char in text:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    parts.append("".join(current).strip())
    return parts


def parse_sweep_flag(text: str) -> ValueList | ValueRange:
    """Parses one `--sweep` flag: `FIELD=V1,V2,...` or `FIELD=loguniform(LO,HI)` / `uniform(LO,HI)`."""
    field, sep, spec = text.partition("=")
    field, spec = field.strip().removeprefix("--config."), spec.strip()
    if not sep or not field:
        raise ValueError(f"--sweep {text!r} is not of the form FIELD=V1,V2,... or FIELD=loguniform(LO,HI)")
    match = RANGE_PATTERN.match(spec)
    if match:
        return parse_range(field, match.group(1), match.group(2))
    values = split_values(spec)
    if not spec:
        raise ValueError(f"--sweep {text!r}: the value list of {field} is empty")
    if not all(values):
        raise ValueError(f"--sweep {text!r}: the value list of {field} has an empty value")
    if len(set(values)) < len(values):
        raise ValueError(f"--sweep {text!r}: the value list of {field} repeats a value")
    return ValueList(field, tuple(values))


def parse_range(field: str, kind: str, bounds_text: str) -> ValueRange:
    """The range `kind(bounds_text)` of `field`; LO < HI, and LO > 0 for loguniform."""
    bounds = split_values(bounds_text)
    try:
        low, high = (float(bound) for bound in bounds)
    except ValueError:
        raise ValueError(f"--sweep {field}={kind}({bounds_text}): expected two numbers, LO and HI") from None
    if not low < high:
        raise ValueError(f"--sweep {field}={kind}({bounds_text}): LO must be below HI")
    if kind == "loguniform" and low <= 0:
        raise ValueError(f"--sweep {field}={kind}({bounds_text}): loguniform needs LO > 0")
    return ValueRange(field, low, high, log=kind == "loguniform")


def grid(axes: Sequence[ValueList | ValueRange]) -> list[dict]:
    """Every combination of the value lists of `axes` (the last field varies fastest)."""
    ranges = [axis.field for axis in axes if isinstance(axis, ValueRange)]
    if ranges:
        raise ValueError(f"{', '.join(ranges)}: a range is drawn from by random search; add --samples N")
    fields = [axis.field for axis in axes]
    return [dict(zip(fields, combination)) for combination in itertools.product(*(a.values for a in axes))]


def random_search(axes: Sequence[ValueList | ValueRange], samples: int, seed: int,
                  base_config: ml_collections.FrozenConfigDict) -> list[dict]:
    """`samples` seeded draws over `axes` (ranges sampled, lists drawn from), repeats dropped."""
    field_types = {axis.field: numeric_field_type(base_config, axis.field)
                   for axis in axes if isinstance(axis, ValueRange)}
    rng = random.Random(seed)
    draws = []
    for _ in range(samples):
        draws.append({axis.field: draw(axis, rng, field_types.get(axis.field)) for axis in axes})
    return list({tuple(overrides.items()): overrides for overrides in draws}.values())


def draw(axis: ValueList | ValueRange, rng: random.Random, field_type: type | None) -> str:
    """The override text of one draw: a list's value, or a range's sample rounded for reading."""
    if isinstance(axis, ValueList):
        return rng.choice(axis.values)
    if axis.log:
        value = math.exp(rng.uniform(math.log(axis.low), math.log(axis.high)))
    else:
        value = rng.uniform(axis.low, axis.high)
    return str(round(value)) if field_type is int else f"{value:.3g}"


def numeric_field_type(config: ml_collections.FrozenConfigDict, field: str) -> type:
    """int or float, the type of `field`, which a range must have. An unknown field raises
    `research.config`'s ValueError, which names the closest real fields."""
    probe = config_lib.unfrozen(config)
    config_lib.apply_override(probe, f"{field}=0")
    value = lookup(probe, field)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"--sweep {field}: a range needs a numeric field; {field} holds {type(value).__name__}")
    return type(value)


def config_sweep(spec: str) -> list[dict]:
    """The override dicts of `get_sweep(arg)` in the config file of `spec`, values as override text."""
    path, _, arg = spec.partition(":")
    module = config_lib.load_module(path)
    if not hasattr(module, "get_sweep"):
        raise ValueError(f"no --sweep given and {path} defines no get_sweep(arg)")
    return [{field: override_text(value) for field, value in overrides.items()}
            for overrides in module.get_sweep(arg or None)]


def override_text(value) -> str:
    """The command-line text of a config value: strings as they are, anything else as a literal."""
    return value if isinstance(value, str) else repr(value)


def trial_names(override_sets: Sequence[dict]) -> list[str]:
    """A filesystem-safe name per trial, `leaf=value,...` in override order (the full dotted
    field where two swept fields share a leaf); raises ValueError if two names coincide."""
    fields = list(dict.fromkeys(field for overrides in override_sets for field in overrides))
    leaves = [field.rsplit(".", 1)[-1] for field in fields]
    short = {field: leaf if leaves.count(leaf) == 1 else field for field, leaf in zip(fields, leaves)}
    names = [trial_name(overrides, short) for overrides in override_sets]
    seen = {}
    for name, overrides in zip(names, override_sets):
        if name in seen:
            raise ValueError(f"two trials share the name {name!r}: {seen[name]} and {overrides}")
        seen[name] = overrides
    return names


def trial_name(overrides: dict, short: dict) -> str:
    """`leaf=value,...` with characters other than letters, digits and `._+=-` in a field or
    value replaced by `_`, shortened with a hash of the overrides if long; "base" if none."""
    text = ",".join(f"{short[field]}={value}" for field, value in overrides.items())
    name = ",".join(UNSAFE_NAME_CHARS.sub("_", f"{short[field]}={value}")
                    for field, value in overrides.items()) or "base"
    if len(name) > MAX_NAME_LENGTH:
        digest = hashlib.sha1(text.encode()).hexdigest()[:8]
        name = f"{name[:MAX_NAME_LENGTH - 9]}-{digest}"
    return name


def lookup(config, field: str):
    """The value of the dotted `field` of `config`."""
    node = config
    for key in field.split("."):
        node = node[key]
    return node


def plan_sweep(spec: str, sweep_flags: Sequence[str], fixed: Sequence[str] = (),
               samples: int = 0, seed: int = 0) -> list[Trial]:
    """The sweep's trials, each config loaded and validated; raises ValueError for bad input."""
    base_config = config_lib.load(spec, fixed)
    if sweep_flags:
        axes = [parse_sweep_flag(flag) for flag in sweep_flags]
        fields = [axis.field for axis in axes]
        repeated = sorted({field for field in fields if fields.count(field) > 1})
        if repeated:
            raise ValueError(f"--sweep names {', '.join(repeated)} more than once")
        override_sets = random_search(axes, samples, seed, base_config) if samples else grid(axes)
    elif samples:
        raise ValueError("--samples draws from the --sweep fields; none were given")
    else:
        override_sets = config_sweep(spec)
    return validated_trials(spec, override_sets, fixed)


def validated_trials(spec: str, override_sets: Sequence[dict], fixed: Sequence[str] = ()) -> list[Trial]:
    """A named trial per dict of overrides (field -> text), each config loaded with the fixed
    overrides and validated; raises ValueError naming the first bad trial."""
    if not override_sets:
        raise ValueError("the sweep has no trials")
    fixed_fields = {override.partition("=")[0] for override in fixed}
    trials = []
    for name, overrides in zip(trial_names(override_sets), override_sets):
        both = sorted(fixed_fields & set(overrides))
        if both:
            raise ValueError(f"{', '.join(both)} is both swept and fixed by --config")
        try:
            config = config_lib.load(spec, [*fixed, *(f"{k}={v}" for k, v in overrides.items())])
        except ValueError as error:
            raise ValueError(f"trial {name}: {error}") from None
        trials.append(Trial(name, overrides, config))
    return trials


def check_earlier_runs(trials: Sequence[Trial], workdir: Path) -> None:
    """Raises ValueError if a trial directory holds a run of another config (e.g. after the
    fixed overrides changed), whose results this sweep would otherwise take as its own."""
    for trial in trials:
        path = workdir / trial.name / "config.json"
        if path.exists() and json.loads(path.read_text()) != json.loads(
                json.dumps(trial.config.to_dict(), default=str)):
            raise ValueError(f"{path} is the config of another run than trial {trial.name} of this "
                             "sweep; use a new --workdir or delete that directory")


def trial_command(spec: str, fixed: Sequence[str], trial: Trial, workdir: Path) -> list[str]:
    """The `research.run` command line of `trial`."""
    overrides = [*fixed, *(f"{field}={value}" for field, value in trial.overrides.items())]
    return [sys.executable, "-m", "research.run", "--config", spec, "--workdir", str(workdir / trial.name),
            *(f"--config.{override}" for override in overrides)]


def trial_environment(parallel: int) -> dict:
    """This process' environment, with XLA on one thread per trial when trials run in parallel."""
    env = dict(os.environ)
    if parallel > 1:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {SINGLE_THREAD_XLA_FLAGS}".strip()
    return env


def die_with_parent() -> None:
    """Runs in a trial's process before it starts: SIGTERM it when the sweep dies (Linux)."""
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


def is_finished(trial_dir: Path) -> bool:
    return (trial_dir / RESULTS_FILE).exists()


def log_tail(path: Path, returncode: int) -> str:
    """The exit status and the last lines of a trial's log (progress-bar redraws split apart)."""
    with path.open("rb") as log:
        log.seek(max(0, path.stat().st_size - LOG_TAIL_BYTES))
        text = log.read().decode(errors="replace")
    lines = [line for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return "\n".join([f"exit status {returncode}", *lines[-LOG_TAIL_LINES:]])


class Progress:
    """Prints `sweep: D/T done, R running, F failed, P pending` whenever a count changes."""

    def __init__(self, total: int):
        self.total, self.shown, self.started = total, None, time.perf_counter()

    def show(self, done: int, running: int, failed: int) -> None:
        counts = (done, running, failed)
        if counts != self.shown:
            self.shown = counts
            pending = self.total - done - running - failed
            print(f"sweep: {done}/{self.total} done, {running} running, {failed} failed, {pending} pending "
                  f"({time.perf_counter() - self.started:.0f}s)", flush=True)


def run_trials(trials: Sequence[Trial], spec: str, fixed: Sequence[str], workdir: Path,
               parallel: int) -> dict[str, str]:
    """Runs the trials without results.json, `parallel` processes at a time; returns the log
    tails of the trials that failed, by name. Trials still running if this is interrupted
    are stopped (and resume on the next run)."""
    pending = [trial for trial in trials if not is_finished(workdir / trial.name)]
    done = len(trials) - len(pending)
    env = trial_environment(parallel)
    progress = Progress(len(trials))
    running, failures = {}, {}
    progress.show(done, 0, 0)
    try:
        while pending or running:
            while pending and len(running) < parallel:
                trial = pending.pop(0)
                (workdir / trial.name).mkdir(parents=True, exist_ok=True)
                holder = is_locked(workdir / trial.name)
                if holder:
                    failures[trial.name] = f"not started: {holder}"
                    continue
                log = (workdir / trial.name / LOG_FILE).open("ab")
                process = subprocess.Popen(trial_command(spec, fixed, trial, workdir), stdout=log,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                           preexec_fn=die_with_parent)
                running[trial.name] = (process, log)
            for name, (process, log) in list(running.items()):
                if process.poll() is None:
                    continue
                log.close()
                del running[name]
                if process.returncode == 0 and is_finished(workdir / name):
                    done += 1
                else:
                    failures[name] = log_tail(workdir / name / LOG_FILE, process.returncode)
            progress.show(done, len(running), len(failures))
            if running:
                time.sleep(POLL_SECONDS)
    finally:
        for process, log in running.values():
            stop(process)
            log.close()
    return failures


def outcomes_of(trials: Sequence[Trial], failures: dict[str, str], workdir: Path,
                fields: Sequence[str]) -> list[sweep_report.TrialOutcome]:
    """What the sweep knows of each trial: its swept values, its results.json or its error."""
    outcomes = []
    for trial in trials:
        error = failures.get(trial.name)
        results = None if error else json.loads((workdir / trial.name / RESULTS_FILE).read_text())
        outcomes.append(sweep_report.TrialOutcome(trial.name, trial.values(fields), results, error))
    return outcomes


def swept_fields(trials: Sequence[Trial]) -> list[str]:
    """The fields some trial overrides, in order of first appearance."""
    return list(dict.fromkeys(field for trial in trials for field in trial.overrides))


def run_sweep(spec: str, trials: Sequence[Trial], workdir: str | Path, *, fixed: Sequence[str] = (),
              parallel: int = 1, metric: str = "eval_loss", mode: str = "min",
              title: str | None = None) -> list[sweep_report.TrialOutcome]:
    """Runs (or resumes) `trials` in `workdir`, writes results.csv/.md/.png there and returns
    each trial's outcome, in the order of `trials`."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    failures = run_trials(trials, spec, fixed, workdir, parallel)
    fields = swept_fields(trials)
    outcomes = outcomes_of(trials, failures, workdir, fields)
    sweep_report.write_reports(workdir, title or f"Sweep of {spec}", fields, outcomes, metric, mode,
                               notes=[f"Fixed overrides: {' '.join(fixed)}"] if fixed else [])
    return outcomes


def parse_args(argv: Sequence[str]) -> tuple[argparse.ArgumentParser, argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m research.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="config file and argument, e.g. configs/llama2.py:tiny")
    parser.add_argument("--workdir", required=True, help="the sweep's directory; each trial runs in a sub-directory")
    parser.add_argument("--sweep", action="append", default=[], metavar="FIELD=VALUES",
                        help="FIELD=V1,V2,... (a grid axis) or FIELD=loguniform(LO,HI) / uniform(LO,HI) "
                             "(with --samples); repeat for more fields")
    parser.add_argument("--samples", type=int, default=0, help="random search: this many draws (0: the grid)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random search")
    parser.add_argument("--parallel", type=int, default=1, help="trials run at once, each in its own process")
    parser.add_argument("--metric", default="eval_loss", help="the key of results.json that ranks trials")
    parser.add_argument("--mode", choices=("min", "max"), default="min", help="whether lower or higher is better")
    args, rest = parser.parse_known_args(argv)
    fixed = []
    for item in rest:
        if not item.startswith("--config.") or "=" not in item:
            parser.error(f"unrecognised argument {item!r}; fixed overrides look like --config.train.steps=100")
        fixed.append(item.removeprefix("--config."))
    if args.parallel < 1:
        parser.error(f"--parallel must be >= 1, got {args.parallel}")
    if args.samples < 0:
        parser.error(f"--samples must be >= 0, got {args.samples}")
    return parser, args, fixed


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the sweep of the command line; returns 1 if a trial failed (2, via argparse, for bad input)."""
    parser, args, fixed = parse_args(sys.argv[1:] if argv is None else argv)
    workdir = Path(args.workdir)
    try:
        trials = plan_sweep(args.config, args.sweep, fixed, args.samples, args.seed)
        check_earlier_runs(trials, workdir)
    except ValueError as error:
        parser.error(str(error))
    started = time.perf_counter()
    outcomes = run_sweep(args.config, trials, workdir, fixed=fixed, parallel=args.parallel,
                         metric=args.metric, mode=args.mode)
    failed = [outcome.name for outcome in outcomes if outcome.error is not None]
    print(f"sweep: {len(outcomes) - len(failed)} finished, {len(failed)} failed in "
          f"{time.perf_counter() - started:.0f}s; see {workdir / 'results.md'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
