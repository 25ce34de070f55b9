"""What a workdir already holds, and whether this run may continue it.

- A run resumed with a config that changes the meaning of the run (anything but the fields of
  `CADENCE_FIELDS`, `evals.<name>.every`, and `config.train.allowed_changes`) is refused with the
  differences, unless `train.allow_config_change`; then the old config is kept as
  `config.<step>.json` beside the new `config.json`.
- A workdir with run output (metrics.jsonl, results.json) but no usable checkpoint is refused:
  starting over would overwrite that output. `train.fresh_start` moves every file of the old run
  into `previous/<time>/` first; nothing is deleted.
"""

import datetime
import fnmatch
import json
import os
from pathlib import Path

CONFIG_FILE, METRICS_FILE, RESULTS_FILE = "config.json", "metrics.jsonl", "results.json"
RUN_FILES = (CONFIG_FILE, METRICS_FILE, RESULTS_FILE, "tensorboard", "checkpoints", "profile")
CADENCE_FIELDS = ("train.steps", "train.log_every", "train.eval_every", "train.checkpoint_every",
                  "train.checkpoint_every_minutes", "train.max_checkpoints", "train.profile_steps",
                  "train.allow_config_change", "train.allowed_changes", "train.fresh_start", "evals.*.every")


def flat(tree, prefix: str = "") -> dict:
    """`{"a.b.c": leaf}` of a nested dict."""
    if not isinstance(tree, dict):
        return {prefix.removesuffix("."): tree}
    return {key: value for name, sub in tree.items() for key, value in flat(sub, f"{prefix}{name}.").items()}


def config_changes(old: dict, new: dict, allowed=()) -> list[str]:
    """`field: old → new` for each field that differs, except those matching `CADENCE_FIELDS` or `allowed`."""
    old, new = flat(old), flat(new)
    patterns = CADENCE_FIELDS + tuple(allowed)
    return [f"{name}: {old.get(name, '(absent)')!r} → {new.get(name, '(absent)')!r}"
            for name in sorted(set(old) | set(new))
            if old.get(name) != new.get(name) and not any(fnmatch.fnmatch(name, p) for p in patterns)]


def as_json(config) -> dict:
    return json.loads(json.dumps(config.to_dict(), default=str))


def check_config_change(workdir: Path, config, step: int) -> None:
    """Refuses (ValueError) to resume at `step` with a config of another meaning than config.json's;
    with `train.allow_config_change`, keeps the old config as config.<step>.json."""
    path = workdir / CONFIG_FILE
    if not path.exists():
        return
    train = config.train
    changes = config_changes(json.loads(path.read_text()), as_json(config), train.get("allowed_changes", ()))
    if not changes:
        return
    if not train.get("allow_config_change", False):
        raise ValueError(f"{workdir} was trained to step {step} with another config ({'; '.join(changes)}); "
                         "rerun with the config that wrote it, or set --config.train.allow_config_change=true "
                         f"to continue with this one (the old config is kept as config.{step}.json)")
    os.replace(path, workdir / f"config.{step}.json")


def run_output(workdir: Path) -> list[str]:
    """The files of an earlier run that a fresh start would overwrite (metrics, results)."""
    return [name for name in (METRICS_FILE, RESULTS_FILE)
            if (workdir / name).exists() and (workdir / name).stat().st_size]


def refuse_or_move_aside(workdir: Path, config, set_aside: list[str]) -> None:
    """For a workdir with run output but no usable checkpoint: ValueError saying what is there,
    or with `train.fresh_start`, every file of the old run moved into previous/<time>/."""
    output = run_output(workdir)
    if not output:
        return
    if not config.train.get("fresh_start", False):
        corrupt = f"; checkpoints set aside as unreadable: {', '.join(set_aside)}" if set_aside else ""
        raise ValueError(f"{workdir} holds {' and '.join(output)} of an earlier run but no usable checkpoint"
                         f"{corrupt}. Use another --workdir, or set --config.train.fresh_start=true to start over "
                         "(the old files are moved to previous/, nothing is deleted)")
    moved = workdir / "previous" / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    moved.mkdir(parents=True)
    for name in RUN_FILES:
        if (workdir / name).exists():
            os.replace(workdir / name, moved / name)
