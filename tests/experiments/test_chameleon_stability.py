"""experiments/chameleon_stability.py: the divergence rule and the verdicts on made-up numbers, and the quick
experiment end to end (VQ tokenizer, four arms, the tasks of the 7B-recipe arm, the plots, a verdict per claim)."""

import math

import numpy as np
import pytest

from experiments import chameleon_stability as experiment
from experiments.metadata import DOES_NOT_HOLD, HOLDS, Estimate
from tests.experiments.quick import run_quick


def test_divergence_is_the_first_spike_or_non_finite_loss_after_warmup():
    assert experiment.divergence_step([5.0, 4.0, 3.0, 2.9], warmup=1) is None
    assert experiment.divergence_step([5.0, 3.0, 2.0, 3.5, 2.0], warmup=1) == 4  # 3.5 > 1.5 × 2.0
    assert experiment.divergence_step([5.0, 7.0, 3.0], warmup=2) is None  # a rise inside the warm-up is allowed
    assert experiment.divergence_step([5.0, math.nan], warmup=5) == 2


def made_up(diverged: dict, **values) -> dict:
    numbers = {"captions_object_accuracy": 0.5, "drawing_object_accuracy": 0.3, "grounding_map50": 0.2}
    for arm in experiment.ARMS:
        numbers.update({f"{arm}_diverged": float(diverged.get(arm, False)), f"{arm}_divergence_step": 7.0,
                        f"{arm}_output_norm_growth": 3.0 if diverged.get(arm) else 1.1, f"{arm}_final_loss": 1.0,
                        f"{arm}_final_z_loss": 10.0})
    numbers.update(values)
    return {name: Estimate(value, 0.0, (value,)) for name, value in numbers.items()}


def test_verdicts_follow_the_numbers():
    verdicts = experiment.judge(made_up({"baseline": True}, **{"qk_norm+z_loss_final_z_loss": 5.0}))
    assert set(verdicts) == {claim.key for claim in experiment.EXPERIMENT.claims}
    assert verdicts["qk_norm"].status == HOLDS and verdicts["output_norm"].status == HOLDS
    assert verdicts["z_loss"].status == HOLDS and verdicts["tasks"].status == HOLDS
    calm = experiment.judge(made_up({}, captions_object_accuracy=0.0, drawing_object_accuracy=0.0, grounding_map50=0.0))
    assert calm["qk_norm"].status == DOES_NOT_HOLD and "no arm diverged" in calm["qk_norm"].reason
    assert calm["output_norm"].status == DOES_NOT_HOLD and calm["tasks"].status == DOES_NOT_HOLD
    assert calm["z_loss"].status == DOES_NOT_HOLD  # equal log²Z with and without the z-loss


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    report, outcome = run_quick("chameleon_stability", tmp_path_factory.mktemp("chameleon_stability"))
    return report, outcome


def test_quick_run_trains_every_arm_and_scores_the_tasks(quick):
    _, outcome = quick
    assert [row["arm"] for row in outcome.rows] == list(experiment.ARMS)
    for row in outcome.rows:
        assert row["min_loss"] < math.log(1024) + 1  # the arms learned something before any divergence
        assert row["output_norm_growth"] > 0 and row["final_z_loss"] >= 0
    headline = outcome.headline
    assert 0 < headline["vq_codebook_usage"] <= 1 and headline["vq_l1"] > 0
    for name in ("captions_object_accuracy", "drawing_object_accuracy", "drawing_reference_object_accuracy",
                 "grounding_map"):
        assert 0.0 <= headline[name] <= 1.0
    assert all(path.exists() and path.stat().st_size > 0 for path in outcome.plots)
    assert "| baseline |" in outcome.markdown and "grounding mAP" in outcome.markdown


def test_quick_headline_gets_a_verdict_per_claim(quick):
    report, outcome = quick
    assert set(report["verdicts"]) == {claim.key for claim in experiment.EXPERIMENT.claims}
    assert np.isfinite([outcome.headline[f"{arm}_final_z_loss"] for arm in experiment.ARMS]).all() or any(
        outcome.headline[f"{arm}_diverged"] for arm in experiment.ARMS)
