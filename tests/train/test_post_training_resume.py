"""Every post-training trainer resumed from its checkpoint continues exactly as an uninterrupted run:
losses and every parameter bit-identical (the batch sources' state included: problem stream position,
prompt cursor, running reward statistics, the adaptive KL coefficient, PPO-ptx's position in the text).
The SIGKILL path is the same resume (tests/train/test_resume.py kills the LM and SFT trainers)."""

import jax
import numpy as np
import pytest

from research.train.loop import train
from research.train.rollout_batches import VerifiableRollouts
from research.train.trainers import ppo
from tests.train import test_dpo, test_grpo, test_ppo, test_reward_model
from tests.train.test_loop import ONE_DEVICE, final_params, losses

STEPS = 4


def configs(steps: int) -> dict:
    common = dict(train__steps=steps, train__checkpoint_every=2, optimizer__warmup_steps=0,
                  optimizer__schedule="constant")  # a run of 2 steps is then the first half of one of 4
    return {
        "reward_model": test_reward_model.rm_config(**common, evals__preferences__batches=1),
        "dpo": test_dpo.dpo_config("tiny_dpo", **common, evals__preferences__batches=1),
        "grpo": test_grpo.grpo_config("tiny_dapo", **common),
        "ppo": test_ppo.ppo_config("tiny_ppo_max", **common, ppo__kl_target=0.01, ppo__ptx_coef=0.1,
                                   train__seq_len=32),  # PPO-ptx: the pretraining rows' position resumes too
    }


@pytest.mark.parametrize("trainer", ["reward_model", "dpo", "grpo", "ppo"])
def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path, monkeypatch, trainer):
    monkeypatch.setattr(VerifiableRollouts, "judge", test_grpo.share_of_target)
    monkeypatch.setattr(ppo, "score_responses", test_ppo.share_of_even_tokens)
    train(configs(STEPS)[trainer], str(tmp_path / "whole"), devices=ONE_DEVICE)
    train(configs(STEPS // 2)[trainer], str(tmp_path / "resumed"), devices=ONE_DEVICE)
    train(configs(STEPS)[trainer], str(tmp_path / "resumed"), devices=ONE_DEVICE)
    assert losses(str(tmp_path / "resumed")) == losses(str(tmp_path / "whole"))
    for a, b in zip(jax.tree.leaves(final_params(str(tmp_path / "resumed"))),
                    jax.tree.leaves(final_params(str(tmp_path / "whole")))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
