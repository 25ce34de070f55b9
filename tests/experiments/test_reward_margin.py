"""experiments/reward_margin.py --quick: three reward models, one table, a verdict per claim."""

from experiments import reward_margin
from tests.experiments.quick import run_quick


def test_quick_run_tabulates_every_arm(tmp_path):
    report, outcome = run_quick("reward_margin", tmp_path)
    assert [row["margin"] for row in outcome.rows] == list(reward_margin.ARMS)
    assert all(0 <= value <= 100 for value in outcome.headline.values())
    for arm in reward_margin.ARMS:
        assert f"| {arm} | " in outcome.markdown
    assert set(report["headline"]) == {f"{kind}_{arm}" for kind in ("accuracy", "separable") for arm in reward_margin.ARMS}
