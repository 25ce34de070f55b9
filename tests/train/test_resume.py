"""A run killed with SIGKILL and started again with the same command ends bit-identical."""

import os
import signal
import subprocess
import sys

import numpy as np
import jax

from research.train.metrics import read_metrics
from tests.train.conftest import tiny_overrides
from tests.train.processes import logged_step, wait_for_step
from tests.train.test_loop import final_params

STEPS = 120


def run_command(workdir):
    overrides = tiny_overrides(train__steps=STEPS, train__checkpoint_every=7, train__eval_every=50,
                               optimizer__warmup_steps=10)
    return [sys.executable, "-m", "research.run", "--config", "configs/llama2.py:tiny", "--workdir", str(workdir),
            *[f"--config.{o}" for o in overrides]]


def train_losses(workdir):
    return [(r["step"], r["loss"]) for r in read_metrics(str(workdir)) if "loss" in r]


def test_sigkill_and_restart_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    subprocess.run(run_command(tmp_path / "whole"), check=True, capture_output=True)

    interrupted = tmp_path / "killed"
    process = subprocess.Popen(run_command(interrupted), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    wait_for_step(process, interrupted, 30)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = logged_step(interrupted)
    assert 30 <= killed_at < STEPS

    subprocess.run(run_command(interrupted), check=True, capture_output=True)
    assert train_losses(interrupted) == train_losses(tmp_path / "whole")
    for a, b in zip(jax.tree.leaves(final_params(str(interrupted))),
                    jax.tree.leaves(final_params(str(tmp_path / "whole")))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
