"""experiments/dapo_ladder.py --quick: six cumulative rungs from naive GRPO to DAPO."""

from experiments import dapo_ladder
from experiments.metadata import DOES_NOT_HOLD, HOLDS, HOLDS_IN_PART, Estimate
from tests.experiments.quick import run_quick


def test_every_rung_runs_from_the_shared_start(tmp_path):
    report, outcome = run_quick("dapo_ladder", tmp_path)
    assert [row["rung"] for row in outcome.rows] == [label for _, label, _ in dapo_ladder.RUNGS]
    assert all(0 <= row["held_out_pass@1"] <= 1 for row in outcome.rows)


def test_rungs_add_their_switches_cumulatively():
    assert dapo_ladder.rung_overrides(0) == []
    assert dapo_ladder.rung_overrides(2) == ["rl.overlong_filter=True", "rl.clip_high=0.28"]
    assert len(dapo_ladder.rung_overrides(len(dapo_ladder.RUNGS) - 1)) == 5


def test_judge_counts_the_rungs_that_gain():
    def ladder(*values):
        return {f"{name}_held_out": Estimate(v, 0.0, (v,)) for (name, _, _), v in zip(dapo_ladder.RUNGS, values)}
    rising = dapo_ladder.judge(ladder(0.1, 0.2, 0.3, 0.4, 0.5, 0.6))
    mixed = dapo_ladder.judge(ladder(0.1, 0.2, 0.2, 0.2, 0.2, 0.2))
    flat = dapo_ladder.judge(ladder(*[0.1] * 6))
    assert rising["each_rung_helps"].status == HOLDS and rising["full_beats_naive"].status == HOLDS
    assert mixed["each_rung_helps"].status == HOLDS_IN_PART
    assert flat["each_rung_helps"].status == flat["full_beats_naive"].status == DOES_NOT_HOLD
