"""experiments/adamw_decoupling.py: the measures behind the verdicts on made-up grids, and the
quick experiment through the gallery (one cell per optimizer, 4 steps)."""

import os

import numpy as np

from experiments import adamw_decoupling as experiment
from experiments.metadata import DOES_NOT_HOLD, HOLDS, HOLDS_IN_PART, Estimate
from tests.experiments.quick import run_quick

ROWS, COLUMNS = np.arange(4)[:, None], np.arange(5)[None, :]
ALONG_THE_AXES = 3.0 + 0.1 * (COLUMNS - 2) ** 2 + 0.2 * (ROWS - 1) ** 2  # best column 2 in every row
DIAGONAL = 3.0 + 0.1 * (COLUMNS - (4 - ROWS)) ** 2  # best column moves from 4 to 1 as the row grows


def headline(adam_grid, adamw_grid, adam_losses=(3.0,), adamw_losses=(3.0,)):
    """The judge's estimates: the grids' spreads (one seed) and each optimizer's best loss over seeds."""
    def estimate(values):
        return Estimate(float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                        tuple(values))
    numbers = {}
    for optimizer, grid, losses in (("adam", adam_grid, adam_losses), ("adamw", adamw_grid, adamw_losses)):
        numbers[f"edge_spread_{optimizer}"] = estimate([experiment.spread_in_columns(experiment.basin_edges(grid))])
        numbers[f"best_decay_spread_{optimizer}"] = estimate(
            [experiment.spread_in_columns(experiment.row_best_columns(grid))])
        numbers[f"best_loss_{optimizer}"] = estimate(losses)
    return numbers


def test_the_measures_tell_a_diagonal_basin_from_one_along_the_axes():
    assert experiment.row_best_columns(ALONG_THE_AXES) == [2, 2, 2, 2]
    assert experiment.row_best_columns(DIAGONAL) == [4, 3, 2, 1]
    assert experiment.basin_edges(DIAGONAL) == [4, 3, 2, 1]
    assert experiment.spread_in_columns(experiment.basin_edges(ALONG_THE_AXES)) == 0
    assert experiment.judge(headline(DIAGONAL, ALONG_THE_AXES))["decoupled"].status == HOLDS
    assert experiment.judge(headline(ALONG_THE_AXES, DIAGONAL))["decoupled"].status == DOES_NOT_HOLD
    assert experiment.judge(headline(DIAGONAL, DIAGONAL))["decoupled"].status == DOES_NOT_HOLD


def test_failed_cells_are_left_out_of_the_measures():
    grid = np.array([[2.0, 2.01, 3.0], [np.nan, 2.5, 2.52], [np.nan, np.nan, np.nan]])
    assert experiment.row_best_columns(grid) == [0, 1, None]
    assert experiment.basin_edges(grid, tolerance=0.01) == [1, 2, None]
    assert experiment.best_cell(grid) == (0, 0)
    assert experiment.in_basin(grid, tolerance=0.01).tolist() == [
        [True, True, False], [False, True, True], [False, False, False]]


def test_claim_b_is_judged_against_the_seed_spread():
    def verdict(adam, adamw):
        return experiment.judge(headline(DIAGONAL, DIAGONAL, adam, adamw))["as_good"].status
    assert verdict([3.0, 3.1], [2.9, 3.0]) == HOLDS
    assert verdict([3.0, 3.2], [3.1, 3.2]) == HOLDS_IN_PART
    assert verdict([3.0, 3.0], [3.1, 3.1]) == DOES_NOT_HOLD


def test_the_quick_experiment_runs_one_cell_per_optimizer_on_one_device(tmp_path):
    report, outcome = run_quick("adamw_decoupling", tmp_path)
    assert [(row["optimizer"], row["learning_rate"], row["decay"]) for row in outcome.rows] == [
        ("adam", 1e-3, 0.0), ("adamw", 1e-3, 0.0)]
    # λ = 0 is the same computation for both optimizers.
    assert abs(outcome.headline["best_loss_adam"] - outcome.headline["best_loss_adamw"]) < 1e-4
    assert np.isfinite(outcome.headline["best_loss_adam"])
    assert (tmp_path / "work" / "adamw_decoupling" / "seed_0" / "grid" / "results.csv").exists()
    assert "--xla_force_host_platform_device_count=8" in os.environ["XLA_FLAGS"]  # restored after the trials
    assert "| α \\ L2 factor λ | 0 |" in outcome.markdown and "| 0.001 | **" in outcome.markdown
    assert report["plots"] == ["adamw_decoupling.png"]
