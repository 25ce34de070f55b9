"""Runs one experiment: `python -m research.run --config configs/X.py:ARG --workdir DIR [--config.a.b=v ...]`.

Loads and validates the config, joins a multi-host job if one is configured, then hands
over to the shared training loop. Running the same command again resumes the run; a run that
is complete reports so and changes nothing.

Exit status: 0 done; 1 the run stopped on a non-finite loss or state (its last good checkpoint
is kept); 2 bad input (config, workdir, checkpoint), one line on stderr naming it; 75 preempted
by SIGTERM or SIGINT, with a checkpoint to resume from (rerun the same command); 3 stopped early
by a sweep's pruner (the run is a trial of `research.sweep`, which names it in the environment:
research/sweep_pruning.py), its checkpoint kept.
"""

import argparse
import contextlib
import json
import logging
import sys

import jax

from research import config as config_lib
from research import sweep_pruning
from research.parallel import distributed
from research.train.loop import StoppedEarly, train
from research.train.preemption import PREEMPTED_EXIT_CODE, Preempted
from research.train.workdir_lock import WorkdirLocked


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="config file and argument, e.g. configs/llama2.py:tiny")
    parser.add_argument("--workdir", required=True, help="where checkpoints, metrics and results go")
    args, rest = parser.parse_known_args(argv)
    overrides = []
    for item in rest:
        if not item.startswith("--config."):
            parser.error(f"unrecognised argument {item!r}; overrides look like --config.train.steps=100")
        overrides.append(item)
    return args, overrides


@contextlib.contextmanager
def progress_logs():
    """The project's INFO lines (resumed from step N, building a dataset, ...) on stderr while
    the run lasts; other libraries keep their own levels."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    project = logging.getLogger("research")
    level, propagate = project.level, project.propagate
    project.setLevel(logging.INFO)
    project.addHandler(handler)
    project.propagate = False
    try:
        yield
    finally:
        project.removeHandler(handler)
        project.setLevel(level)
        project.propagate = propagate


def main(argv=None) -> dict:
    """Runs the experiment the command line names; returns its results (raises on failure)."""
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    config = config_lib.load(args.config, overrides)
    distributed.initialize(config)  # before anything asks jax for devices
    results = train(config, args.workdir, on_evaluation=sweep_pruning.hook_from_environment())
    if jax.process_index() == 0:
        texts = {name: value for name, value in results.items() if isinstance(value, list)}
        for name, values in texts.items():
            for value in values:
                print(f"  {name}: {value!r}")
        print(json.dumps({k: v for k, v in results.items() if k not in texts}, indent=2))
    return results


def cli(argv=None) -> int:
    """`main` with its failures as one line on stderr and an exit status (module docstring)."""
    try:
        with progress_logs():
            main(argv)
    except Preempted as stop:
        print(f"research.run: {stop}", file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    except StoppedEarly as stop:
        print(f"research.run: {stop}", file=sys.stderr)
        return sweep_pruning.STOPPED_EARLY_EXIT_CODE
    except FloatingPointError as error:
        print(f"research.run: {error}", file=sys.stderr)
        return 1
    except (ValueError, WorkdirLocked) as error:
        print(f"research.run: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
