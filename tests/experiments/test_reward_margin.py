"""experiments/reward_margin.py --quick: three reward models, one table."""

from experiments import reward_margin


def test_quick_run_writes_the_table_of_every_arm(tmp_path):
    report = reward_margin.main(["--quick", "--steps", "3", "--workdir", str(tmp_path)])
    assert (tmp_path / "reward_margin.md").read_text() == report
    for arm in reward_margin.ARMS:
        assert f"| {arm} | " in report
    assert "Verdict:" in report and "| margin | significantly | better | slightly | negligibly |" in report
