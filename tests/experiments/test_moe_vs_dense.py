"""experiments/moe_vs_dense.py: the load measure and the verdicts on made-up numbers, the quick
experiment end to end (and its resume), and a smoke run of scripts/bench_moe.py on small shapes."""

import numpy as np
import pytest

from experiments import moe_vs_dense as experiment
from scripts import bench_moe

SMALL_SHAPE = ["model.dim=64", "model.num_layers=2", "model.num_heads=4", "model.num_kv_heads=2",
               "model.vocab_size=260"]


def row(losses, effective=None):
    return {"eval_losses": losses, "eval_loss": float(np.mean(losses)), "effective_experts": effective}


def test_effective_experts_is_e_when_balanced_and_k_when_collapsed():
    balanced, collapsed = np.full(8, 1 / 8), np.array([0.5, 0.5, 0, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(experiment.effective_experts(np.stack([balanced, collapsed])), [8.0, 2.0])


def test_claim_1_is_judged_against_the_seed_spread():
    assert experiment.verdict_1({"dense": row([3.0, 3.1]), "moe": row([2.8, 2.9])}) == "holds"
    assert experiment.verdict_1({"dense": row([3.0, 3.2]), "moe": row([2.95, 3.15])}) == (
        "holds within the seed-to-seed spread")
    assert experiment.verdict_1({"dense": row([3.0]), "moe": row([3.0])}) == "does not hold"


def test_claim_2_needs_fewer_experts_in_use_without_the_loss_and_a_collapse_to_hold():
    rows = lambda balanced, free: {"moe": row([3.0], balanced), "moe_no_balance": row([3.0], free)}
    assert experiment.verdict_2(rows(7.5, 2.5), num_experts=8) == "holds"
    assert experiment.verdict_2(rows(7.5, 6.0), num_experts=8).startswith("holds only in part")
    assert experiment.verdict_2(rows(6.0, 7.0), num_experts=8) == "does not hold"


def test_the_quick_experiment_writes_the_table_and_resumes(tmp_path):
    output = tmp_path / "out" / "moe_vs_dense"
    argv = ["--quick", "--workdir", str(tmp_path / "runs"), "--output", str(output)]
    rows = experiment.main(argv)
    assert list(rows) == ["dense", "moe", "moe_no_balance"]
    dense = rows["dense"]
    for arm in ("moe", "moe_no_balance"):
        moe = rows[arm]
        assert abs(moe["active"] / dense["active"] - 1) < 0.01  # equal activated size (up to the router)
        assert moe["total"] > 2 * dense["total"]
        assert moe["dropped_fraction"] == 0.0  # dropless
        assert 2.0 <= moe["effective_experts"] <= 8.0
        assert np.isfinite(moe["eval_loss"]) and moe["tokens_per_s"] > 0
    assert dense["load_cv"] is None and dense["effective_experts"] is None
    assert output.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    report = output.with_suffix(".md").read_text()
    for label in ("| A: dense |", "| B: MoE, α=0.01 |", "| C: MoE, α=0 |", "| B | 1 |", "| C | 0 |"):
        assert label in report
    assert "(1) At equal activated parameters the MoE reaches a lower loss than the dense model:" in report
    assert "(2) Without the load-balancing loss the load collapses onto few experts:" in report

    # A rerun reads the finished arms back; a run of another length in the same workdir is refused.
    again = experiment.main(argv)
    assert [r["eval_loss"] for r in again.values()] == [r["eval_loss"] for r in rows.values()]
    with pytest.raises(ValueError, match="another config"):
        experiment.main([*argv, "--steps", "12"])


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
