"""research/train/trainers/image_tokenizer.py through the shared loop: the loss falls, the evaluators
report reconstruction error and codebook usage and write the grid, and a resumed run (EMA codebook,
dead-code restarts) is bit-identical to an uninterrupted one."""

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from research import config as config_lib
from research.train.loop import train
from research.train.metrics import read_metrics
from tests.train.test_loop import ONE_DEVICE, losses

SMALL = {"model.base_channels": 8, "model.norm_groups": 4, "model.latent_channels": 8, "model.embed_dim": 8,
         "model.num_embeddings": 32, "model.codebook_update": "ema", "model.dead_code_steps": 2,
         "data.name": "digits", "train.batch_size": 8, "train.steps": 8, "train.log_every": 1,
         "train.checkpoint_every": 4, "train.eval_every": 0, "evals.reconstruction.batches": 1,
         "evals.grid.images": 2, "optimizer.schedule": "constant", "optimizer.warmup_steps": 0,
         "optimizer.learning_rate": 3e-3}  # a constant rate: a run of 4 steps is the first half of one of 8


def small_config(**extra):
    pairs = {**SMALL, **{k.replace("__", "."): v for k, v in extra.items()}}
    return config_lib.load("configs/vq_image_tokenizer.py:tiny", [f"{k}={v}" for k, v in pairs.items()])


def final_state(workdir):
    manager = ocp.CheckpointManager(str(workdir / "checkpoints"))
    restored = manager.restore(manager.latest_step())
    manager.close()
    return restored["state"]


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """(workdir, results) of an uninterrupted run."""
    workdir = tmp_path_factory.mktemp("whole")
    return workdir, train(small_config(), str(workdir), devices=ONE_DEVICE)


def test_training_lowers_the_loss_and_evaluates_reconstructions_and_codebook_usage(whole):
    workdir, results = whole
    logged = [loss for _, loss in losses(str(workdir))]
    assert len(logged) == 8 and logged[-1] < logged[0]
    record = read_metrics(str(workdir))[1]
    assert 0 < record["codebook_usage"] <= 1 and 1 <= record["perplexity"] <= 32
    assert 0 < results["reconstruction_l1"] and 0 < results["reconstruction_codebook_usage"] <= 1
    assert (workdir / "reconstructions.png").stat().st_size > 0 and results["grid_file"].endswith(".png")


def test_a_resumed_run_is_bit_identical_to_an_uninterrupted_one(whole, tmp_path):
    train(small_config(train__steps=4), str(tmp_path), devices=ONE_DEVICE)
    train(small_config(), str(tmp_path), devices=ONE_DEVICE)
    assert losses(str(tmp_path)) == losses(str(whole[0]))
    expected, resumed = final_state(whole[0]), final_state(tmp_path)
    assert set(resumed["codebook_stats"]["quantize"]) == {"unused_steps", "ema_count", "ema_sum"}
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
