"""The loop's seams with trainers other than LM pretraining: nested image/reward batches on a
sharded mesh, on-policy batches with array state, several evaluators, a second model family,
the profiler window, and non-finite losses found without waiting on the device every step."""

import logging
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from research import config as config_lib
from research import run
from research.parallel.mesh import make_mesh
from research.train.loop import train
from research.train.metrics import read_metrics
from research.train.step import step_layout
from research.train.task import build_task
from tests.train.processes import logged_step, wait_for_step
from tests.train.test_loop import ONE_DEVICE, losses

IMAGES = "tests/train/toy_image_regression.py"
BANDIT = "tests/train/toy_bandit.py"


def test_image_and_reward_batches_train_on_a_data_fsdp_tensor_mesh_as_on_one_device(tmp_path):
    train(config_lib.load(IMAGES), str(tmp_path / "one"), devices=ONE_DEVICE)
    train(config_lib.load(IMAGES, ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]), str(tmp_path / "eight"))
    one, eight = losses(str(tmp_path / "one")), losses(str(tmp_path / "eight"))
    assert [s for s, _ in one] == list(range(1, 21))
    np.testing.assert_allclose([l for _, l in one], [l for _, l in eight], rtol=1e-5)
    assert one[-1][1] < one[0][1] / 2


def test_each_batch_leaf_is_sharded_by_its_own_axes():
    """Image height is never split over `context`; rewards `[B]` split over the data axes only."""
    config = config_lib.load(IMAGES, ["mesh.data=2", "mesh.context=2", "mesh.tensor=2"])
    mesh = make_mesh(config.mesh)
    shardings = step_layout(build_task(config, mesh), mesh).batch_shardings
    assert shardings["images"].spec == P(("data", "fsdp", "expert"), None, None, None)
    assert shardings["labels"]["reward"].spec == P(("data", "fsdp", "expert"))


def test_a_batch_that_does_not_divide_over_the_mesh_is_named_before_compiling():
    config = config_lib.load(IMAGES, ["train.batch_size=6", "mesh.data=4", "mesh.tensor=2"])
    mesh = make_mesh(config.mesh)
    with pytest.raises(ValueError, match=r"batch leaf \['images'\].* 6 is not divisible.*train.batch_size"):
        step_layout(build_task(config, mesh), mesh)


def test_evaluators_run_at_their_own_cadences(tmp_path):
    train(config_lib.load(IMAGES), str(tmp_path), devices=ONE_DEVICE)
    records = read_metrics(str(tmp_path))
    assert [r["step"] for r in records if "eval_loss" in r] == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
    assert [r["step"] for r in records if "close_fraction" in r] == [3, 6, 9, 12, 15, 18, 20]


def test_a_generating_evaluator_beside_the_loss_in_lm_training(tiny_config, tmp_path):
    config = tiny_config(evals__samples__every=2, evals__samples__prompts="('The ',)", train__eval_every=3,
                         train__steps=6)
    results = train(config, str(tmp_path), devices=ONE_DEVICE)
    records = read_metrics(str(tmp_path))
    assert [r["step"] for r in records if "samples_text" in r] == [2, 4, 6]
    assert [r["step"] for r in records if "eval_loss" in r] == [3, 6]
    assert results["samples_text"][0].startswith("The ") and "eval_perplexity" in results


def test_a_second_model_family_trains_through_research_run(tmp_path, capsys):
    results = run.main(["--config", IMAGES, "--workdir", str(tmp_path), "--config.train.steps=6"])
    assert results["step"] == 6 and results["eval_loss"] > 0 and 0 <= results["close_fraction"] <= 1
    assert '"eval_loss"' in capsys.readouterr().out


def test_a_family_that_does_not_exist_is_named():
    with pytest.raises(ValueError, match="model.family: cannot import 'tests.train.no_such_family'"):
        config_lib.load(IMAGES, ["model.family=tests.train.no_such_family"])
    with pytest.raises(ValueError, match="model.family: 'gpt' is not one of"):
        config_lib.load(IMAGES, ["model.family=gpt"])


def test_on_policy_batches_keep_their_array_state_and_report_their_tokens(tmp_path):
    results = train(config_lib.load(BANDIT, ["train.steps=30"]), str(tmp_path), devices=ONE_DEVICE)
    records = [r for r in read_metrics(str(tmp_path)) if "loss" in r]
    assert all(8 <= r["tokens"] <= 8 * 4 for r in records) and len({r["tokens"] for r in records}) > 1
    assert (tmp_path / "checkpoints" / "30" / "batches").is_dir()
    assert results["reward_mean"] > 0.1  # a random policy earns 0 on average


def bandit_command(workdir, steps):
    return [sys.executable, "-m", "research.run", "--config", BANDIT, "--workdir", str(workdir),
            f"--config.train.steps={steps}", "--config.train.checkpoint_every=40", "--config.train.log_every=10"]


def test_an_on_policy_trainer_killed_with_sigkill_resumes_to_identical_losses(tmp_path):
    steps = 3000
    subprocess.run(bandit_command(tmp_path / "whole", steps), check=True, capture_output=True)
    killed = tmp_path / "killed"
    process = subprocess.Popen(bandit_command(killed, steps), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for_step(process, killed, 100)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert 100 <= logged_step(killed) < steps
    subprocess.run(bandit_command(killed, steps), check=True, capture_output=True)
    assert losses(str(killed)) == losses(str(tmp_path / "whole"))
    assert read_metrics(str(killed))[-1] == read_metrics(str(tmp_path / "whole"))[-1]


def test_profile_window_writes_a_trace_and_the_step_memory_is_logged(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        train(config_lib.load(IMAGES, ["train.profile_steps=(2, 4)", "train.steps=6"]), str(tmp_path),
              devices=ONE_DEVICE)
    assert list((tmp_path / "profile").rglob("*.xplane.pb"))
    assert "train step per device: arguments" in caplog.text and "profile of steps 2-4" in caplog.text


def test_a_non_finite_loss_between_log_steps_is_named_by_its_own_step(tmp_path):
    overrides = ["optimizer.learning_rate=1e30", "optimizer.grad_clip_norm=0.0", "train.checkpoint_every=0",
                 "train.steps=40"]
    with pytest.raises(FloatingPointError, match=r"at step (\d+)") as every_step:
        train(config_lib.load(IMAGES, overrides), str(tmp_path / "a"), devices=ONE_DEVICE)
    with pytest.raises(FloatingPointError, match=r"at step (\d+)") as every_ten:
        train(config_lib.load(IMAGES, overrides + ["train.log_every=10"]), str(tmp_path / "b"), devices=ONE_DEVICE)
    assert str(every_step.value) == str(every_ten.value)
    assert "No checkpoint was saved" in str(every_ten.value)
