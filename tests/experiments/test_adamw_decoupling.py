"""experiments/adamw_decoupling.py: the measures behind the verdicts on made-up grids, and the
experiment end to end at its smallest (one cell per optimizer, 4 steps, in a temporary directory)."""

import numpy as np

from experiments import adamw_decoupling as experiment

ROWS, COLUMNS = np.arange(4)[:, None], np.arange(5)[None, :]
ALONG_THE_AXES = 3.0 + 0.1 * (COLUMNS - 2) ** 2 + 0.2 * (ROWS - 1) ** 2  # best column 2 in every row
DIAGONAL = 3.0 + 0.1 * (COLUMNS - (4 - ROWS)) ** 2  # best column moves from 4 to 1 as the row grows


def measures(grid):
    return dict(row_best=experiment.row_best_columns(grid), edges=experiment.basin_edges(grid))


def test_the_measures_tell_a_diagonal_basin_from_one_along_the_axes():
    assert experiment.row_best_columns(ALONG_THE_AXES) == [2, 2, 2, 2]
    assert experiment.row_best_columns(DIAGONAL) == [4, 3, 2, 1]
    assert experiment.basin_edges(DIAGONAL) == [4, 3, 2, 1]
    assert experiment.spread_in_columns(experiment.basin_edges(ALONG_THE_AXES)) == 0
    assert experiment.verdict_a(adam=measures(DIAGONAL), adamw=measures(ALONG_THE_AXES)) == "holds"
    assert experiment.verdict_a(adam=measures(ALONG_THE_AXES), adamw=measures(DIAGONAL)).startswith("does not hold")
    assert experiment.verdict_a(adam=measures(DIAGONAL), adamw=measures(DIAGONAL)).startswith("is not resolved")


def test_failed_cells_are_left_out_of_the_measures():
    grid = np.array([[2.0, 2.01, 3.0], [np.nan, 2.5, 2.52], [np.nan, np.nan, np.nan]])
    assert experiment.row_best_columns(grid) == [0, 1, None]
    assert experiment.basin_edges(grid, tolerance=0.01) == [1, 2, None]
    assert experiment.best_cell(grid) == (0, 0)
    assert experiment.in_basin(grid, tolerance=0.01).tolist() == [
        [True, True, False], [False, True, True], [False, False, False]]


def test_claim_b_is_judged_against_the_seed_spread():
    assert experiment.verdict_b([3.0, 3.1], [2.9, 3.0]) == "holds"
    assert experiment.verdict_b([3.0, 3.2], [3.1, 3.2]) == "holds within the seed-to-seed spread"
    assert experiment.verdict_b([3.0, 3.0], [3.1, 3.1]) == "does not hold"


def test_the_quick_experiment_at_its_smallest_writes_the_figure_and_the_verdicts(tmp_path, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "")  # trials on one CPU device, not conftest's 8 fake ones
    output = tmp_path / "out" / "adamw_decoupling"
    results = experiment.main(["--quick", "--points", "1", "--steps", "4", "--workdir", str(tmp_path / "runs"),
                               "--output", str(output)])
    for optimizer in ("adam", "adamw"):
        assert results[optimizer]["lrs"] == [1e-3] and results[optimizer]["decays"] == [0.0]
        assert results[optimizer]["grid"].shape == (1, 1) and np.isfinite(results[optimizer]["grid"]).all()
    # λ = 0 is the same computation for both optimizers.
    np.testing.assert_allclose(results["adam"]["grid"], results["adamw"]["grid"], atol=1e-4)
    assert (tmp_path / "runs" / "grid" / "results.csv").exists()
    assert output.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    report = output.with_suffix(".md").read_text()
    assert "(a) With AdamW the best weight decay depends much less on the learning rate:" in report
    assert "(b) AdamW's best result is at least as good as Adam's:" in report
    assert "| α \\ L2 factor λ | 0 |" in report and "| 0.001 | **" in report
