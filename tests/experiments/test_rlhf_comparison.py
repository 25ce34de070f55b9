"""experiments/rlhf_comparison.py: the quick runs give every method a reward, a judged score and a KL to
the SFT policy; the verdicts follow the numbers."""

import numpy as np

from experiments import rlhf_comparison
from experiments.metadata import DOES_NOT_HOLD, HOLDS, HOLDS_IN_PART, Estimate
from tests.experiments.quick import run_quick


def estimates(numbers: dict) -> dict:
    return {key: Estimate(value, 0.0, (value,)) for key, value in numbers.items()}


def test_quick_run_scores_every_method_on_held_out_prompts(tmp_path):
    report, outcome = run_quick("rlhf_comparison", tmp_path)
    assert [row["arm"] for row in outcome.rows] == list(rlhf_comparison.ARMS)
    for arm in rlhf_comparison.ARMS:
        assert np.isfinite([outcome.headline[f"{arm}_{name}"] for name in ("reward", "kl")]).all()
        assert 0 <= outcome.headline[f"{arm}_judge"] <= 1
    assert outcome.headline["sft_kl"] == 0  # the SFT policy against itself
    assert outcome.headline["ppo_kl"] != 0 and outcome.headline["dpo_kl"] != 0  # both left the SFT policy
    assert "| rejection_sampling |" in outcome.markdown
    assert set(report["verdicts"]) == {"reward", "judged"}


def scores(**arms) -> dict:
    return {f"{arm}_{name}": value for arm, (reward, judge) in arms.items()
            for name, value in (("reward", reward), ("judge", judge), ("kl", 0.0))}


def test_the_verdicts_read_reward_and_judge_gains():
    every = rlhf_comparison.judge(estimates(scores(sft=(0, 0.2), rejection_sampling=(1, 0.3), ppo=(2, 0.4),
                                                   dpo=(0.5, 0.25))))
    assert every["reward"].status == HOLDS and every["judged"].status == HOLDS
    hacked = rlhf_comparison.judge(estimates(scores(sft=(0, 0.2), rejection_sampling=(1, 0.3), ppo=(2, 0.1),
                                                    dpo=(-1, 0.2))))
    assert hacked["reward"].status == HOLDS_IN_PART and hacked["judged"].status == HOLDS_IN_PART
    none = rlhf_comparison.judge(estimates(scores(sft=(0, 0.2), rejection_sampling=(-1, 0.3), ppo=(-2, 0.1),
                                                  dpo=(-1, 0.2))))
    assert none["reward"].status == DOES_NOT_HOLD and none["judged"].status == DOES_NOT_HOLD
    unjudged = rlhf_comparison.judge(estimates(scores(sft=(0, 0.0), rejection_sampling=(1, 0.0), ppo=(2, 0.0),
                                                      dpo=(1, 0.0))))
    assert unjudged["reward"].status == HOLDS and unjudged["judged"].status == DOES_NOT_HOLD
