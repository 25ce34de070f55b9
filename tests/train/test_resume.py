"""A run killed with SIGKILL and started again with the same command ends bit-identical."""

import os
import signal
import subprocess
import sys

import numpy as np
import jax
import pytest

from research.train.metrics import read_metrics
from tests.train.conftest import tiny_overrides
from tests.train.processes import logged_step, wait_for_step
from tests.train.test_loop import final_params

COMMON = dict(train__checkpoint_every=7, train__eval_every=50, optimizer__warmup_steps=10)
SFT = {**COMMON, "train__seq_len": 320, "model__vocab_size": 265, "data__sft__count": 40,
       "data__sft__suites": "('arithmetic','countdown')", **{f"evals__{name}__{field}": value for name in (
           "in_domain", "held_out") for field, value in (("count", 1), ("max_new_tokens", 4))}}
TRAINERS = {  # trainer: (config, its overrides of the tiny LLaMA's, steps, the earliest step to kill it at)
    "lm": ("configs/llama2.py:tiny", COMMON, 120, 30),
    "sft": ("configs/rlhf.py:tiny_sft", SFT, 36, 12),
}


def run_command(workdir, trainer="lm"):
    spec, overrides, steps, _ = TRAINERS[trainer]
    fields = tiny_overrides(**overrides, train__steps=steps)
    if trainer != "lm":  # the LM trainer's samples evaluator is not in the other trainers' configs
        fields = [field for field in fields if not field.startswith("evals.samples.")]
    return [sys.executable, "-m", "research.run", "--config", spec, "--workdir", str(workdir),
            *[f"--config.{field}" for field in fields]]


def train_losses(workdir):
    return [(r["step"], r["loss"]) for r in read_metrics(str(workdir)) if "loss" in r]


@pytest.mark.parametrize("trainer", sorted(TRAINERS))
def test_sigkill_and_restart_is_bit_identical_to_an_uninterrupted_run(tmp_path, trainer):
    subprocess.run(run_command(tmp_path / "whole", trainer), check=True, capture_output=True)

    interrupted = tmp_path / "killed"
    process = subprocess.Popen(run_command(interrupted, trainer), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    _, _, steps, kill_at = TRAINERS[trainer]
    wait_for_step(process, interrupted, kill_at)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = logged_step(interrupted)
    assert kill_at <= killed_at < steps

    subprocess.run(run_command(interrupted, trainer), check=True, capture_output=True)
    assert train_losses(interrupted) == train_losses(tmp_path / "whole")
    for a, b in zip(jax.tree.leaves(final_params(str(interrupted))),
                    jax.tree.leaves(final_params(str(tmp_path / "whole")))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
