"""experiments/moe_vs_dense.py: the load measure and the verdicts on made-up numbers, the quick
experiment through the gallery, and a smoke run of scripts/bench_moe.py on small shapes."""

import numpy as np

from experiments import moe_vs_dense as experiment
from experiments.metadata import DOES_NOT_HOLD, HOLDS, HOLDS_IN_PART, Estimate
from scripts import bench_moe
from tests.experiments.quick import run_quick

SMALL_SHAPE = ["model.dim=64", "model.num_layers=2", "model.num_heads=4", "model.num_kv_heads=2",
               "model.vocab_size=260"]


def estimates(**means_and_stds):
    return {name: Estimate(mean, std, (mean,)) for name, (mean, std) in means_and_stds.items()}


def test_effective_experts_is_e_when_balanced_and_k_when_collapsed():
    balanced, collapsed = np.full(8, 1 / 8), np.array([0.5, 0.5, 0, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(experiment.effective_experts(np.stack([balanced, collapsed])), [8.0, 2.0])


def test_claim_1_is_judged_against_the_seed_spread():
    def verdict(dense, moe):
        headline = estimates(eval_loss_dense=dense, eval_loss_moe=moe, experts_in_use_moe=(1.0, 0),
                             experts_in_use_moe_no_balance=(1.0, 0))
        return experiment.judge(headline)["lower_loss"].status
    assert verdict((3.05, 0.07), (2.85, 0.07)) == HOLDS
    assert verdict((3.1, 0.14), (3.05, 0.14)) == HOLDS_IN_PART
    assert verdict((3.0, 0.0), (3.0, 0.0)) == DOES_NOT_HOLD


def test_claim_2_needs_fewer_experts_in_use_without_the_loss_and_a_collapse_to_hold():
    def verdict(balanced, free):
        headline = estimates(eval_loss_dense=(3.0, 0), eval_loss_moe=(3.0, 0), experts_in_use_moe=(balanced, 0),
                             experts_in_use_moe_no_balance=(free, 0))
        return experiment.judge(headline)["collapse"].status
    assert verdict(7.5 / 8, 2.5 / 8) == HOLDS
    assert verdict(7.5 / 8, 6.0 / 8) == HOLDS_IN_PART
    assert verdict(6.0 / 8, 7.0 / 8) == DOES_NOT_HOLD


def test_the_quick_experiment_tabulates_equal_activated_arms(tmp_path):
    report, outcome = run_quick("moe_vs_dense", tmp_path)
    rows = {row["arm"]: row for row in outcome.rows}
    assert list(rows) == ["dense", "moe", "moe_no_balance"]
    dense = rows["dense"]
    for arm in ("moe", "moe_no_balance"):
        moe = rows[arm]
        assert abs(moe["active"] / dense["active"] - 1) < 0.02  # equal activated size (up to the router)
        assert moe["total"] > 2 * dense["total"]
        assert moe["dropped_fraction"] == 0.0  # dropless
        assert 2.0 <= moe["effective_experts"] <= 8.0
        assert outcome.headline[f"experts_in_use_{arm}"] == moe["effective_experts"] / 8
        assert np.isfinite(moe["eval_loss"]) and moe["tokens_per_s"] > 0
    assert dense["load_cv"] is None and dense["effective_experts"] is None
    for label in ("| A: dense |", "| B: MoE, α=0.01 |", "| C: MoE, α=0 |", "| B | 1 |", "| C | 0 |"):
        assert label in outcome.markdown
    assert report["plots"] == ["moe_vs_dense.png"]


def test_bench_moe_writes_the_table_and_the_ratios(tmp_path):
    overrides = {"dense": SMALL_SHAPE + ["model.hidden_dim=256"],
                 **{name: SMALL_SHAPE + ["model.moe.expert_hidden_dim=128"] for name in ("moe dropless",
                                                                                         "moe capacity")}}
    out = tmp_path / "moe_bench.md"
    rows = bench_moe.main(["--steps", "1", "--batch", "2", "--seq", "16", "--out", str(out)],
                          configs=bench_moe.load_configs(overrides))
    assert list(rows) == ["dense", "moe dropless", "moe capacity"]
    for name, result in rows.items():
        assert abs(result["params"]["active"] / rows["dense"]["params"]["active"] - 1) < 0.01
        assert result["train"]["tokens_per_s"] > 0 and result["forward"]["tokens_per_s"] > 0
    report = out.read_text()
    assert "| moe dropless | " in report and "| moe capacity | " in report
    assert "## MoE / dense" in report and "Hardware: **" in report
