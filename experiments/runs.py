"""Runs an experiment trains: each in its own workdir, reused when finished, resumed when interrupted."""

import json
from pathlib import Path

import jax

from research.train import loop


def train_or_reuse(config, workdir: Path) -> dict:
    """results.json of the run in `workdir`, training (or resuming) it first unless it finished, on one
    device; ValueError for a workdir written by another config."""
    written = workdir / "config.json"
    if written.exists() and json.loads(written.read_text()) != json.loads(json.dumps(config.to_dict(), default=str)):
        raise ValueError(f"{workdir} holds a run of another config; use another --workdir")
    results = workdir / "results.json"
    if results.exists():
        return json.loads(results.read_text())
    return loop.train(config, str(workdir), devices=jax.devices()[:1])
