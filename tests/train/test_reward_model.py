"""research/train/trainers/reward_model.py: the ranking loss with margins through the loop, accuracy by strength."""

import numpy as np
import pytest

from research import config as config_lib
from research.data.preference_batches import make_preference_batches
from research.data.tokenizer import ByteTokenizer
from research.rl.preference_losses import LLAMA2_MARGINS
from research.train.loop import train
from research.train.metrics import read_metrics
from tests.train.test_loop import ONE_DEVICE

TINY = {"model.dim": 32, "model.num_layers": 2, "model.num_heads": 4, "model.num_kv_heads": 2, "model.hidden_dim": 64,
        "model.vocab_size": 265, "data.tokenizer": "byte", "init_from.kind": "none", "init_from.path": "",
        "init_from.into": "", "train.seq_len": 160, "train.batch_size": 16, "train.steps": 30, "train.log_every": 1,
        "train.checkpoint_every": 0, "evals.preferences.every": 0, "data.preferences.count": 120,
        "optimizer.learning_rate": 3e-3, "optimizer.warmup_steps": 2}


def rm_config(**overrides):
    fields = {**TINY, **{key.replace("__", "."): value for key, value in overrides.items()}}
    return config_lib.load("configs/rlhf.py:tiny_rm", [f"{key}={value}" for key, value in fields.items()])


@pytest.mark.parametrize("margin", ["none", "large"])
def test_the_first_loss_is_the_margin_formula_at_zero_rewards(tmp_path, margin):
    config = rm_config(reward_model__margin=margin, train__steps=1, optimizer__warmup_steps=0,
                       evals__preferences__batches=1)
    train(config, str(tmp_path), devices=ONE_DEVICE)
    first = next(make_preference_batches(config.data.preferences, ByteTokenizer(265), split="train", batch_size=16,
                                         seq_len=160, seed=0))
    margins = np.zeros(16) if margin == "none" else np.asarray(LLAMA2_MARGINS[margin])[first["strength"]]
    expected = np.mean(np.log1p(np.exp(margins)))  # −log σ(0 − m): the head starts at 0
    assert read_metrics(str(tmp_path))[0]["loss"] == pytest.approx(expected, rel=1e-5)


def test_training_ranks_chosen_above_rejected_on_held_out_prompts(tmp_path):
    results = train(rm_config(), str(tmp_path), devices=ONE_DEVICE)
    losses = [r["loss"] for r in read_metrics(str(tmp_path)) if "loss" in r]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert results["preferences_accuracy"] > 0.6
    assert {"preferences_accuracy_significantly", "preferences_accuracy_negligibly"} <= set(results)


def test_an_unknown_margin_table_is_named(tmp_path):
    with pytest.raises(ValueError, match="reward_model.margin: 'huge' is not one of"):
        train(rm_config(reward_model__margin="huge"), str(tmp_path), devices=ONE_DEVICE)

