"""experiments/ppo_max.py: the quick arms train, log every curve and draw them; the verdicts follow the numbers."""

import numpy as np

from experiments import ppo_max
from experiments.metadata import DOES_NOT_HOLD, HOLDS, HOLDS_IN_PART, Estimate
from tests.experiments.quick import run_quick


def estimates(numbers: dict) -> dict:
    return {key: Estimate(value, 0.0, (value,)) for key, value in numbers.items()}


def test_quick_run_draws_every_curve_of_both_arms_and_is_judged(tmp_path):
    report, outcome = run_quick("ppo_max", tmp_path)
    assert report["plots"] == ["ppo_max.png"] and outcome.plots[0].stat().st_size > 10_000
    for arm in ppo_max.QUICK["arms"]:
        values = [outcome.headline[f"{arm}_{name}"] for name in (*ppo_max.CURVES, "score_gain", "collapsed")]
        assert np.all(np.isfinite(values))
        steps = [row["step"] for row in outcome.rows if row["arm"] == arm]
        assert steps == [1, 2, 3]
        assert 0 < outcome.headline[f"{arm}_distinct_2"] <= 1 and outcome.headline[f"{arm}_perplexity"] > 1
        assert outcome.headline[f"{arm}_kl"] != 0  # the policy left its reference
    assert outcome.headline["vanilla_kl"] != outcome.headline["ppo_max_kl"]  # the switches changed the run
    assert "| vanilla |" in outcome.markdown and "| ppo_max |" in outcome.markdown


def arm_numbers(arm: str, *, kl: float, collapsed: bool) -> dict:
    return {f"{arm}_kl": kl, f"{arm}_collapsed": float(collapsed), f"{arm}_distinct_2": 0.2 if collapsed else 0.9}


def test_the_verdicts_read_collapse_and_kl():
    stable = {**arm_numbers("vanilla", kl=40.0, collapsed=True), **arm_numbers("ppo_max", kl=2.0, collapsed=False),
              **arm_numbers("no_value_clip", kl=5.0, collapsed=False),
              **arm_numbers("no_kl_penalty", kl=30.0, collapsed=True)}
    verdicts = ppo_max.judge(estimates(stable))
    assert verdicts["stability"].status == HOLDS and verdicts["tricks"].status == HOLDS
    some = {**stable, **arm_numbers("no_value_clip", kl=2.1, collapsed=False)}
    assert ppo_max.judge(estimates(some))["tricks"].status == HOLDS_IN_PART
    both_collapse = {**stable, **arm_numbers("ppo_max", kl=50.0, collapsed=True)}
    assert ppo_max.judge(estimates(both_collapse))["stability"].status == DOES_NOT_HOLD
    neither = {**stable, **arm_numbers("vanilla", kl=6.0, collapsed=False)}
    assert ppo_max.judge(estimates(neither))["stability"].status == HOLDS_IN_PART
