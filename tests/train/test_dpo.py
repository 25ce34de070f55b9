"""research/train/trainers/dpo.py: DPO and ORPO on judged preference pairs through the loop."""

import numpy as np
import pytest

from research import config as config_lib
from research.train.loop import train
from research.train.metrics import read_metrics
from tests.train.test_loop import ONE_DEVICE
from tests.train.test_reward_model import TINY


def dpo_config(variant, **overrides):
    fields = {**TINY, "init_from.into": "", **{key.replace("__", "."): value for key, value in overrides.items()}}
    return config_lib.load(f"configs/rlhf.py:{variant}", [f"{key}={value}" for key, value in fields.items()])


def test_dpo_starts_at_log_2_and_learns_to_prefer_the_chosen_responses(tmp_path):
    results = train(dpo_config("tiny_dpo", optimizer__learning_rate=1e-2, evals__preferences__batches=2), str(tmp_path),
                    devices=ONE_DEVICE)
    logged = [r for r in read_metrics(str(tmp_path)) if "loss" in r]
    assert logged[0]["loss"] == pytest.approx(np.log(2), rel=1e-5)  # policy = reference: every margin is 0
    assert np.mean([r["reward_accuracy"] for r in logged[-5:]]) > 0.6
    assert 0 <= results["preferences_accuracy"] <= 1


def test_orpo_keeps_no_reference_and_trains(tmp_path):
    train(dpo_config("tiny_orpo", train__steps=3, evals__preferences__batches=1), str(tmp_path), devices=ONE_DEVICE)
    logged = [r for r in read_metrics(str(tmp_path)) if "loss" in r]
    assert len(logged) == 3 and all(np.isfinite(r["loss"]) and r["loss"] > r["nll"] for r in logged)
