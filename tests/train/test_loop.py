"""research/train/loop.py with the LM trainer: outputs, resume, NaN halt, bad checkpoints, sharding."""

import json
import logging
import math
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from research.train.loop import train
from research.train.metrics import read_metrics

ONE_DEVICE = jax.devices()[:1]


def final_params(workdir):
    """Parameters of the newest checkpoint, as numpy arrays."""
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
    restored = manager.restore(manager.latest_step())
    manager.close()
    return restored["state"]["params"]


def losses(workdir):
    return [(r["step"], r["loss"]) for r in read_metrics(workdir) if "loss" in r]


def test_run_writes_config_metrics_results_and_tensorboard(tiny_config, tmp_path):
    results = train(tiny_config(evals__samples__prompts="('The ', 'A')"), str(tmp_path), devices=ONE_DEVICE)
    assert json.loads((tmp_path / "config.json").read_text())["model"]["dim"] == 32
    records = read_metrics(str(tmp_path))
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == list(range(1, 9))
    assert {"loss", "grad_norm", "learning_rate"} <= set(records[-1]) | set(records[-2])
    assert any("tokens_per_s" in r and r["mfu"] > 0 for r in records)
    evals = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in evals] == [4, 8]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["step"] == 8 and math.isclose(saved["eval_perplexity"], math.exp(saved["eval_loss"]))
    assert saved == json.loads(json.dumps(results, default=str))
    assert len(saved["samples_text"]) == 2 and saved["samples_text"][0].startswith("The ")
    assert any(name.startswith("events") for name in os.listdir(tmp_path / "tensorboard"))
    assert losses(str(tmp_path))[-1][1] < losses(str(tmp_path))[0][1]


def test_learning_rate_follows_warmup_then_cosine(tiny_config, tmp_path):
    train(tiny_config(), str(tmp_path), devices=ONE_DEVICE)
    rates = [r["learning_rate"] for r in read_metrics(str(tmp_path)) if "learning_rate" in r]
    assert rates[0] == 0.0 and rates[2] == pytest.approx(1e-2)
    assert all(a >= b for a, b in zip(rates[2:], rates[3:]))
    assert rates[-1] >= 1e-3  # cosine ends at 10% of the peak


def test_rerun_after_completion_resumes_and_keeps_results(tiny_config, tmp_path):
    first = train(tiny_config(), str(tmp_path), devices=ONE_DEVICE)
    second = train(tiny_config(), str(tmp_path), devices=ONE_DEVICE)
    assert second["eval_loss"] == first["eval_loss"]
    assert [s for s, _ in losses(str(tmp_path))] == list(range(1, 9))


def test_gradient_accumulation_equals_the_whole_batch(tiny_config, tmp_path):
    train(tiny_config(), str(tmp_path / "a"), devices=ONE_DEVICE)
    train(tiny_config(train__grad_accum_steps=4), str(tmp_path / "b"), devices=ONE_DEVICE)
    np.testing.assert_allclose([l for _, l in losses(str(tmp_path / "a"))],
                               [l for _, l in losses(str(tmp_path / "b"))], rtol=1e-4)


def test_sharded_run_matches_single_device(tiny_config, tmp_path):
    """data=2, fsdp=2, tensor=2 on 8 fake devices gives the 1-device loss curve."""
    train(tiny_config(), str(tmp_path / "one"), devices=ONE_DEVICE)
    train(tiny_config(mesh__data=2, mesh__fsdp=2, mesh__tensor=2), str(tmp_path / "eight"))
    np.testing.assert_allclose([l for _, l in losses(str(tmp_path / "one"))],
                               [l for _, l in losses(str(tmp_path / "eight"))], rtol=2e-4)


def test_nan_loss_halts_naming_the_step_and_keeps_the_last_checkpoint(tiny_config, tmp_path):
    config = tiny_config(optimizer__learning_rate=1e12, optimizer__grad_clip_norm=0.0, optimizer__warmup_steps=0,
                         train__checkpoint_every=1, train__steps=50)
    with pytest.raises(FloatingPointError, match=r"at step (\d+)") as error:
        train(config, str(tmp_path), devices=ONE_DEVICE)
    bad_step = int(error.value.args[0].split("at step ")[1].split(";")[0])
    manager = ocp.CheckpointManager(str(tmp_path / "checkpoints"))
    assert manager.latest_step() == bad_step - 1
    params = manager.restore(bad_step - 1)["state"]["params"]
    assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(params))
    assert not (tmp_path / "results.json").exists()


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(tiny_config, tmp_path, caplog):
    train(tiny_config(), str(tmp_path), devices=ONE_DEVICE)  # checkpoints at 4 and 8
    newest = tmp_path / "checkpoints" / "8"
    for root, _, files in os.walk(newest):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"\0garbage")
    with caplog.at_level(logging.WARNING):
        results = train(tiny_config(), str(tmp_path), devices=ONE_DEVICE)
    assert "unreadable" in caplog.text and "checkpoints/8" in caplog.text
    assert (tmp_path / "checkpoints" / "8.corrupt").exists()
    assert results["step"] == 8
    assert [s for s, _ in losses(str(tmp_path))] == list(range(1, 9))


def test_incompatible_checkpoint_names_the_parameter_and_overwrites_nothing(tiny_config, tmp_path):
    train(tiny_config(), str(tmp_path), devices=ONE_DEVICE)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file() and p.name != "run.lock"}
    with pytest.raises(ValueError, match=r"params/layers/ffn/(down|gate|up).*shape"):
        train(tiny_config(model__hidden_dim=96), str(tmp_path), devices=ONE_DEVICE)
    after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file() and p.name != "run.lock"}
    assert before == after
