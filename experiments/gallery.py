"""The gallery's index: every experiment module under experiments/, found by its `EXPERIMENT`.

A module of the experiments package is either an experiment (it defines `EXPERIMENT`, `run` and
`judge`: the contract of experiments/metadata.py) or one of the SUPPORT modules that experiments
share; anything else is an error, so an experiment cannot land without its metadata.
"""

import importlib
import pkgutil
from pathlib import Path

import experiments
from experiments.metadata import Experiment

# modules that hold no experiment: the gallery itself and what experiments share
SUPPORT = frozenset({"__main__", "gallery", "gallery_readme", "gallery_run", "metadata", "rl_runs", "runs"})
RESULTS = Path(experiments.__file__).parent / "results"


def module_names() -> list[str]:
    """Every module of the experiments package, sorted."""
    return sorted(info.name for info in pkgutil.iter_modules(experiments.__path__))


def check(module) -> None:
    """ValueError naming what an experiment module lacks of the gallery contract."""
    name = module.__name__.rsplit(".", 1)[-1]
    experiment = getattr(module, "EXPERIMENT", None)
    if not isinstance(experiment, Experiment):
        raise ValueError(f"experiments/{name}.py defines no EXPERIMENT = Experiment(...) (experiments/metadata.py)")
    if experiment.name != name:
        raise ValueError(f"experiments/{name}.py: EXPERIMENT.name is {experiment.name!r}, not the module's name")
    for function in ("run", "judge"):
        if not callable(getattr(module, function, None)):
            raise ValueError(f"experiments/{name}.py defines no {function}() (experiments/metadata.py)")
    if not experiment.claims:
        raise ValueError(f"experiments/{name}.py: EXPERIMENT.claims is empty; an experiment checks a claim")
    keys = [claim.key for claim in experiment.claims]
    if len(set(keys)) != len(keys):
        raise ValueError(f"experiments/{name}.py: claim keys repeat: {keys}")


def load(name: str):
    """The experiment module `name`, checked; ValueError for an unknown name."""
    experiment_names = [n for n in module_names() if n not in SUPPORT]
    if name not in experiment_names:
        raise ValueError(f"unknown experiment {name!r}; known: {', '.join(experiment_names)}")
    module = importlib.import_module(f"experiments.{name}")
    check(module)
    return module


def all_experiments() -> list:
    """Every experiment module, checked, in name order."""
    return [load(name) for name in module_names() if name not in SUPPORT]
