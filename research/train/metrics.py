"""Metrics out of a run: `metrics.jsonl` (one JSON object per logged step) and TensorBoard.

Only process 0 writes. On resume from step s, lines after s are dropped first, so the file
of a resumed run reads as that of an uninterrupted one.
"""

import importlib
import json
import math
import sys
from pathlib import Path

import jax
import numpy as np


def summary_writer_class():
    """tensorboardX's SummaryWriter, imported without the `import torch` it attempts when PyTorch is
    installed (to accept torch tensors, which nothing here passes): that import alone costs seconds at
    every process start. Where torch is already imported, it is left as it is."""
    if "torch" in sys.modules:
        return importlib.import_module("tensorboardX").SummaryWriter
    sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX expects without torch
    try:
        return importlib.import_module("tensorboardX").SummaryWriter
    finally:
        del sys.modules["torch"]


def to_python(value):
    """A JSON-friendly scalar (NaN/Inf kept as floats; json writes them as NaN/Infinity)."""
    value = np.asarray(value)
    return value.item() if value.ndim == 0 else value.tolist()


class MetricsWriter:
    """Appends `{"step": s, **metrics}` to metrics.jsonl and scalars to TensorBoard."""

    def __init__(self, workdir: str, *, resume_step: int = 0):
        self.enabled = jax.process_index() == 0
        self.path = Path(workdir) / "metrics.jsonl"
        if not self.enabled:
            return
        truncate_after(self.path, resume_step)
        self.tensorboard = summary_writer_class()(str(Path(workdir) / "tensorboard"), purge_step=resume_step + 1)

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: to_python(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        for name, value in record.items():
            if name != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                self.tensorboard.add_scalar(name, value, step)

    def close(self) -> None:
        if self.enabled:
            self.tensorboard.close()


def truncate_after(path: Path, step: int) -> None:
    """Keeps only the lines of a metrics.jsonl with `"step" <= step` (atomically)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(path)


def read_metrics(workdir: str) -> list[dict]:
    """The records of a run's metrics.jsonl."""
    path = Path(workdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def last_logged(workdir, step: int) -> dict:
    """The newest training record (one with a loss) of a run's metrics.jsonl up to `step`, or {}."""
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return {}
    records = [r for r in read_metrics(str(workdir)) if "loss" in r and r["step"] <= step]
    return {k: v for k, v in records[-1].items() if k != "step"} if records else {}
