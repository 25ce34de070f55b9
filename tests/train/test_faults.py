"""Nothing lost, ever: real faults (signals to real processes, damaged files, two processes racing
for a workdir, poisoned updates, changed configs) and what each leaves behind."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from research import config as config_lib
from research import run
from research.train.loop import train
from research.train.metrics import read_metrics
from research.train.preemption import PREEMPTED_EXIT_CODE
from research.train.workdir_lock import WorkdirLock, WorkdirLocked
from tests.train.conftest import tiny_overrides
from tests.train.test_loop import ONE_DEVICE, final_params, losses
from tests.train.processes import wait_for_step
from tests.train.test_seams import BANDIT, bandit_command


def checksums(workdir) -> dict:
    """sha256 of every file under `workdir` (the lock file aside)."""
    return {str(p.relative_to(workdir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(workdir.rglob("*")) if p.is_file() and p.name != "run.lock"}


def lm_command(workdir, *overrides):
    return [sys.executable, "-m", "research.run", "--config", "configs/llama2.py:tiny", "--workdir", str(workdir),
            *[f"--config.{o}" for o in tiny_overrides(**dict(o.split("=", 1) for o in overrides))]]


SIGNALLED_RUN = ("train__steps=200", "train__checkpoint_every=1000", "train__eval_every=0")


def test_a_signal_saves_a_checkpoint_and_the_rerun_resumes_bit_identically(tmp_path):
    whole = tmp_path / "whole"  # one uninterrupted reference for both signals
    subprocess.run(lm_command(whole, *SIGNALLED_RUN), check=True, capture_output=True)
    for signum in (signal.SIGTERM, signal.SIGINT):
        stopped = tmp_path / f"stopped_by_{signum.name}"
        process = subprocess.Popen(lm_command(stopped, *SIGNALLED_RUN), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        wait_for_step(process, stopped, 20)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == PREEMPTED_EXIT_CODE, stderr
        assert "preempted at step" in stderr and "run the same command again" in stderr
        saved = [p.name for p in (stopped / "checkpoints").iterdir() if p.name.isdigit()]
        assert len(saved) == 1 and 20 <= int(saved[0]) < 200  # no checkpoint was due: the signal made it
        assert not [p for p in (stopped / "checkpoints").iterdir() if "tmp" in p.name]

        rerun = subprocess.run(lm_command(stopped, *SIGNALLED_RUN), capture_output=True, text=True)
        assert rerun.returncode == 0 and f"resumed from step {saved[0]}" in rerun.stderr
        assert losses(str(stopped)) == losses(str(whole))
        for a, b in zip(jax.tree.leaves(final_params(str(stopped))), jax.tree.leaves(final_params(str(whole)))):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_rerunning_a_finished_run_changes_nothing_and_more_steps_continue_it(tiny_config, tmp_path, capsys):
    first = train(tiny_config(), str(tmp_path), devices=ONE_DEVICE)
    before = checksums(tmp_path)
    assert run.cli(["--config", "configs/llama2.py:tiny", "--workdir", str(tmp_path),
                    *[f"--config.{o}" for o in tiny_overrides()]]) == 0
    assert checksums(tmp_path) == before
    assert json.loads(capsys.readouterr().out)["eval_loss"] == first["eval_loss"]
    train(tiny_config(train__steps=12), str(tmp_path), devices=ONE_DEVICE)
    assert [s for s, _ in losses(str(tmp_path))] == list(range(1, 13))


def test_a_workdir_with_output_but_no_usable_checkpoint_is_refused_then_moved_aside(tiny_config, tmp_path):
    train(tiny_config(), str(tmp_path), devices=ONE_DEVICE)
    for step in ("4", "8"):
        (tmp_path / "checkpoints" / step / "state" / "_METADATA").unlink()
    kept = {name: hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
            for name in ("config.json", "metrics.jsonl", "results.json")}
    with pytest.raises(ValueError, match=r"holds metrics.jsonl and results.json .* no usable checkpoint.*"
                                         r"4.corrupt.*fresh_start=true"):
        train(tiny_config(), str(tmp_path), devices=ONE_DEVICE)
    assert {name: hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() for name in kept} == kept
    train(tiny_config(train__fresh_start=True), str(tmp_path), devices=ONE_DEVICE)
    [previous] = (tmp_path / "previous").iterdir()
    assert {name: hashlib.sha256((previous / name).read_bytes()).hexdigest() for name in kept} == kept
    assert (previous / "checkpoints" / "8.corrupt").is_dir()
    assert [s for s, _ in losses(str(tmp_path))] == list(range(1, 9))


def damage(checkpoint, kind: str) -> None:
    state = checkpoint / "state"
    if kind == "metadata deleted":
        (state / "_METADATA").unlink()
    elif kind == "metadata emptied":
        (state / "_METADATA").write_bytes(b"")
    elif kind == "array manifest deleted":
        (state / "manifest.ocdbt").unlink()
    elif kind == "array data deleted":
        shutil.rmtree(state / "d")
        for data in state.glob("ocdbt.process_*"):
            shutil.rmtree(data)
    elif kind == "array data truncated":
        for path in (p for p in state.rglob("*") if p.is_file() and p.stat().st_size > 64 and "d" in p.parts):
            path.write_bytes(path.read_bytes()[:16])


@pytest.mark.parametrize("kind", ["metadata deleted", "metadata emptied", "array manifest deleted",
                                  "array data deleted", "array data truncated"])
def test_every_kind_of_unreadable_checkpoint_is_set_aside_with_one_warning(tiny_config, tmp_path, kind, capfd):
    train(tiny_config(), str(tmp_path), devices=ONE_DEVICE)  # checkpoints at 4 and 8
    reference = losses(str(tmp_path))
    damage(tmp_path / "checkpoints" / "8", kind)
    (tmp_path / "results.json").unlink()
    capfd.readouterr()
    results = train(tiny_config(), str(tmp_path), devices=ONE_DEVICE)
    err = capfd.readouterr().err
    assert (tmp_path / "checkpoints" / "8.corrupt").exists() and results["step"] == 8
    assert losses(str(tmp_path)) == reference  # resumed from step 4, bit for bit
    assert "Traceback" not in err and "Event loop is closed" not in err


def test_two_runs_racing_for_a_workdir(tmp_path):
    first = subprocess.Popen(bandit_command(tmp_path, 3000), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_step(first, tmp_path, 10)
    second = subprocess.run(bandit_command(tmp_path, 3000), capture_output=True, text=True, timeout=300)
    assert second.returncode == 2
    assert f"is in use by process {first.pid}" in second.stderr and len(second.stderr.strip().splitlines()) == 1
    assert first.wait(timeout=300) == 0
    steps = [r["step"] for r in read_metrics(str(tmp_path)) if "loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 3000  # no line twice, none out of order


def test_the_lock_of_a_killed_run_is_no_obstacle(tmp_path):
    process = subprocess.Popen(bandit_command(tmp_path, 3000), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_step(process, tmp_path, 10)
    process.kill()
    process.wait()
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == process.pid  # left behind
    with WorkdirLock(tmp_path):
        with pytest.raises(WorkdirLocked, match=f"in use by process {os.getpid()}"):
            WorkdirLock(tmp_path).__enter__()


def test_a_poisoned_update_is_never_saved_and_a_sane_rerun_continues(tmp_path):
    """A learning rate that overflows float32 (1e39) turns the state non-finite in an update whose
    loss was still finite: that state is refused at the save, the checkpoint before it stays newest."""
    every_step = ["train.checkpoint_every=1", "optimizer.grad_clip_norm=0.0", "train.allow_config_change=true"]
    train(config_lib.load(BANDIT, every_step + ["train.steps=5"]), str(tmp_path), devices=ONE_DEVICE)
    with pytest.raises(FloatingPointError, match=r"holds a NaN or an infinity after step 6; stopping. "
                                                 r"The last good checkpoint \(step 5\)"):
        train(config_lib.load(BANDIT, every_step + ["train.steps=10", "optimizer.learning_rate=1e39"]), str(tmp_path),
              devices=ONE_DEVICE)
    params = final_params(str(tmp_path))
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())[-1] == 5
    assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(params))
    assert train(config_lib.load(BANDIT, every_step + ["train.steps=10"]), str(tmp_path), devices=ONE_DEVICE)["step"] == 10


def test_resuming_with_another_config_is_refused_with_the_differences(tiny_config, tmp_path):
    train(tiny_config(), str(tmp_path), devices=ONE_DEVICE)
    before = checksums(tmp_path)
    with pytest.raises(ValueError, match=r"another config \(optimizer.learning_rate: 0.01 → 0.02; "
                                         r"train.batch_size: 8 → 16\).*allow_config_change=true"):
        train(tiny_config(train__batch_size=16, optimizer__learning_rate=0.02, train__steps=12), str(tmp_path),
              devices=ONE_DEVICE)
    assert checksums(tmp_path) == before
    train(tiny_config(optimizer__learning_rate=0.02, train__steps=12, train__allow_config_change=True),
          str(tmp_path), devices=ONE_DEVICE)
    assert json.loads((tmp_path / "config.8.json").read_text())["optimizer"]["learning_rate"] == 0.01
    assert json.loads((tmp_path / "config.json").read_text())["optimizer"]["learning_rate"] == 0.02


def test_checkpoints_by_time(tiny_config, tmp_path):
    train(tiny_config(train__checkpoint_every=0, train__checkpoint_every_minutes=1e-6, train__log_every=3),
          str(tmp_path), devices=ONE_DEVICE)
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [3, 6, 8]  # at every log step (all due), and the final one


@pytest.mark.parametrize("override, message", [
    ("optimizer.learning_rate=inf", "optimizer.learning_rate: must be a finite number, got inf"),
    ("optimizer.b2=nan", "optimizer.b2: must be a finite number, got nan"),
    ("train.max_checkpoints=0", "train.max_checkpoints: must be >= 1"),
])
def test_config_errors_are_one_line_with_exit_status_2(tmp_path, override, message, capsys):
    status = run.cli(["--config", "configs/llama2.py:tiny", "--workdir", str(tmp_path), f"--config.{override}"])
    err = capsys.readouterr().err
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "config.json").exists()
